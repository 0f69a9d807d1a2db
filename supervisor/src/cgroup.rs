//! A cgroup for the pool and one for each worker, where this process may make them:
//! cgroup v2 with `cgroup.kill` (Linux 5.14), and write access to its own cgroup
//! (root, or a subtree delegated to the user).
//!
//! Process groups and the subreaper (`orphans.rs`) find what a worker started by its
//! place in the process tree, and a process can move out of its place: a daemon that
//! made a process group of its own in the worker's session is missed when its worker
//! dies, and one that left group and session is out of the guardian's reach. No process
//! leaves a cgroup by forking, `setsid()` or `setpgid()`. So each worker joins a leaf of
//! its own, `<this process's cgroup>/procpool-<pid>-<n>/w<slot>-<k>`, before it executes
//! anything; when the worker dies, a write to the leaf's `cgroup.kill` kills whatever is
//! left in it, all at once, and the leaf is removed once empty. At shutdown the pool's
//! own `cgroup.kill` does the same for every worker, and so does the guardian when the
//! supervisor is killed (`sys::start_guardian`). The cgroups enable no controller: they
//! limit and account nothing, and the workers' memory and CPU time are charged where
//! they were before.
//!
//! Where they cannot be made (cgroup v1 alone, no write access, an older kernel), the
//! pool goes on with process groups and the subreaper, as before.
//!
//! The same reading of `/proc/self/mountinfo` and `/proc/self/cgroup` tells how much
//! memory this process's cgroups still allow ([`memory_left`]), for checks before a
//! run, and which file counts its workers' OOM kills (`oom.rs`).

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::unistd::AccessFlags;

/// Pools this process has made: each one's cgroup gets a name of its own.
static POOLS: AtomicU64 = AtomicU64::new(0);

/// The pool's cgroup and the leaves of its workers.
pub(crate) struct PoolCgroup {
    dir: PathBuf,
    /// Leaves made so far: the next one's number.
    leaves_made: u64,
    /// Leaves killed whose last process had not yet exited: removed at a later tidy.
    emptying: Vec<PathBuf>,
}

/// A new worker's leaf, and its `cgroup.procs` open for writing, for the worker to
/// join by itself between fork and exec, before it can start anything.
pub(crate) struct WorkerCgroup {
    pub dir: PathBuf,
    pub procs: OwnedFd,
}

/// What the guardian needs to kill everything in the pool's cgroup and remove it
/// without allocating: descriptors and a name made beforehand.
pub(crate) struct GuardianCgroup {
    /// The pool's `cgroup.kill`, open for writing.
    pub kill: OwnedFd,
    /// The pool's directory, whose leaves go first.
    pub dir: OwnedFd,
    /// The directory the pool's is in, and the pool's name there.
    pub parent: OwnedFd,
    pub name: CString,
}

impl PoolCgroup {
    /// Makes the pool's cgroup below this process's own; `None` where it cannot.
    pub(crate) fn create() -> Option<PoolCgroup> {
        let own = own_v2_dir()?;
        // Moving a process between two cgroups takes write access to the cgroup.procs
        // of their nearest common ancestor: here, this process's own cgroup.
        nix::unistd::access(&own.join("cgroup.procs"), AccessFlags::W_OK).ok()?;
        for _ in 0..16 {
            let number = POOLS.fetch_add(1, Ordering::Relaxed);
            let dir = own.join(format!("procpool-{}-{number}", std::process::id()));
            match fs::create_dir(&dir) {
                Ok(()) => {}
                // Left by a process of this pid that died as the guardian died too.
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(_) => return None,
            }
            if !dir.join("cgroup.kill").exists() {
                let _ = fs::remove_dir(&dir);
                return None;
            }
            return Some(PoolCgroup {
                dir,
                leaves_made: 0,
                emptying: Vec::new(),
            });
        }
        None
    }

    /// The pool's cgroup directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes the leaf for a new worker in `slot`.
    pub(crate) fn worker_cgroup(&mut self, slot: usize) -> io::Result<WorkerCgroup> {
        self.leaves_made += 1;
        let dir = self.dir.join(format!("w{slot}-{}", self.leaves_made));
        fs::create_dir(&dir)?;
        match OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
        {
            Ok(procs) => Ok(WorkerCgroup {
                dir,
                procs: procs.into(),
            }),
            Err(err) => {
                let _ = fs::remove_dir(&dir);
                Err(err)
            }
        }
    }

    /// A leaf whose worker was reaped (or never started): kills what is left in it
    /// and removes it, now or, once the last of those has exited, at a later
    /// [`tidy`](Self::tidy).
    pub(crate) fn release(&mut self, leaf: PathBuf) {
        kill(&leaf);
        if !remove(&leaf) {
            self.emptying.push(leaf);
        }
    }

    /// Removes the killed leaves that have emptied since.
    pub(crate) fn tidy(&mut self) {
        self.emptying.retain(|leaf| !remove(leaf));
    }

    /// The end of the pool: kills every process in its cgroup and removes the cgroup
    /// and its leaves, waiting at most `within` for the killed to exit (one stuck in
    /// the kernel cannot be hurried; the guardian tries again after).
    pub(crate) fn close(&mut self, within: Duration) {
        kill(&self.dir);
        let deadline = Instant::now() + within;
        while !remove(&self.dir) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.emptying.clear();
    }

    /// Descriptors for the guardian (see [`GuardianCgroup`]).
    pub(crate) fn for_guardian(&self) -> io::Result<GuardianCgroup> {
        let parent = self.dir.parent().unwrap_or(Path::new("/"));
        let name = self.dir.file_name().unwrap_or_default().as_bytes();
        let directory = |path: &Path| {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY)
                .open(path)
        };
        Ok(GuardianCgroup {
            kill: OpenOptions::new()
                .write(true)
                .open(self.dir.join("cgroup.kill"))?
                .into(),
            dir: directory(&self.dir)?.into(),
            parent: directory(parent)?.into(),
            name: CString::new(name).map_err(io::Error::other)?,
        })
    }
}

impl Drop for PoolCgroup {
    fn drop(&mut self) {
        self.close(Duration::from_secs(1));
    }
}

/// Kills every process in the cgroup `dir` and its descendants.
fn kill(dir: &Path) {
    let _ = fs::write(dir.join("cgroup.kill"), "1");
}

/// Removes the cgroup `dir` and those below it (a worker may make its own, where it
/// may write there); false while a process is still in one of them.
fn remove(dir: &Path) -> bool {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                remove(&entry.path());
            }
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => true,
        Err(err) => err.kind() == io::ErrorKind::NotFound,
    }
}

/// A mounted cgroup hierarchy: where it is mounted, and which cgroup is its root
/// (not `/` where a container was given a subtree).
#[derive(Debug, PartialEq)]
struct CgroupMount {
    root: String,
    point: PathBuf,
}

impl CgroupMount {
    /// The directory of the cgroup at `path` (as `/proc/<pid>/cgroup` names it).
    fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let inside = match self.root.as_str() {
            "/" => path,
            root => path
                .strip_prefix(root)
                .filter(|rest| rest.is_empty() || rest.starts_with('/'))?,
        };
        Some(self.point.join(inside.trim_start_matches('/')))
    }
}

/// The mounts in `mountinfo` whose file system type and super options `wanted`
/// accepts.
fn mounts<'a>(
    mountinfo: &'a str,
    wanted: impl Fn(&str, &str) -> bool + 'a,
) -> impl Iterator<Item = CgroupMount> + 'a {
    mountinfo.lines().filter_map(move |line| {
        // "id parent dev root point options [optional...] - fstype source superoptions"
        let (left, right) = line.split_once(" - ")?;
        let mut right = right.split(' ');
        let fstype = right.next()?;
        let super_options = right.nth(1).unwrap_or("");
        if !wanted(fstype, super_options) {
            return None;
        }
        let mut left = left.split(' ').skip(3);
        let root = unescape(left.next()?);
        let point = PathBuf::from(unescape(left.next()?));
        Some(CgroupMount { root, point })
    })
}

/// A mountinfo field with its `\ooo` octal escapes (space, tab, newline, backslash)
/// undone.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let octal = bytes.get(at + 1..at + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[at], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                at += 4;
            }
            (byte, _) => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What this process's cgroups are read from: its `mountinfo` and its `cgroup`.
fn own_mounts_and_cgroups() -> Option<(String, String)> {
    Some((
        fs::read_to_string("/proc/self/mountinfo").ok()?,
        fs::read_to_string("/proc/self/cgroup").ok()?,
    ))
}

/// This process's cgroup v2 directory.
pub fn own_v2_dir() -> Option<PathBuf> {
    let (mountinfo, cgroups) = own_mounts_and_cgroups()?;
    Some(v2_dir(&mountinfo, &cgroups)?.0)
}

/// This process's cgroup in the v1 hierarchy of `controller` (`memory`, `pids`), where
/// that controller is mounted as v1.
pub fn own_v1_dir(controller: &str) -> Option<PathBuf> {
    let (mountinfo, cgroups) = own_mounts_and_cgroups()?;
    Some(v1_dir(&mountinfo, &cgroups, controller)?.0)
}

/// This process's cgroup v2 directory, and the mount point it is reached through (the
/// first cgroup2 mount whose root holds it).
fn v2_dir(mountinfo: &str, cgroups: &str) -> Option<(PathBuf, PathBuf)> {
    let path = cgroups.lines().find_map(|line| line.strip_prefix("0::"))?;
    mounts(mountinfo, |fstype, _| fstype == "cgroup2")
        .find_map(|mount| Some((mount.dir_of(path)?, mount.point)))
}

/// The file that counts OOM kills in the memory cgroup this process's workers run
/// in: `memory.events` of the nearest cgroup v2 at or above its own that has one
/// (its counts include those below it, where the pool's cgroups are), or else cgroup
/// v1's `memory.oom_control`. Both have an `oom_kill N` line.
pub(crate) fn oom_kill_counter() -> Option<PathBuf> {
    let (mountinfo, cgroups) = own_mounts_and_cgroups()?;
    oom_kill_counter_in(&mountinfo, &cgroups, |file| file.exists())
}

fn oom_kill_counter_in(
    mountinfo: &str,
    cgroups: &str,
    exists: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    if let Some((own, mount)) = v2_dir(mountinfo, cgroups) {
        let found = own
            .ancestors()
            .take_while(|dir| dir.starts_with(&mount))
            .map(|dir| dir.join("memory.events"))
            .find(|file| exists(file));
        if found.is_some() {
            return found;
        }
    }
    let (own, _) = v1_dir(mountinfo, cgroups, "memory")?;
    Some(own.join("memory.oom_control")).filter(|file| exists(file))
}

/// Bytes this process may still take under its memory cgroups' limits: the least,
/// over its own cgroup and every one above it, of limit less usage (v2 `memory.max` −
/// `memory.current`, v1 `memory.limit_in_bytes` − `memory.usage_in_bytes`). `None`
/// where no limit is set or none can be read.
pub fn memory_left() -> Option<u64> {
    let (mountinfo, cgroups) = own_mounts_and_cgroups()?;
    memory_left_in(&mountinfo, &cgroups, |file| fs::read_to_string(file).ok())
}

fn memory_left_in(
    mountinfo: &str,
    cgroups: &str,
    read: impl Fn(&Path) -> Option<String>,
) -> Option<u64> {
    // A v1 "limit" this large (the page-rounded i64::MAX) means none.
    const UNLIMITED: u64 = 1 << 62;
    let number = |dir: &Path, file: &str| read(&dir.join(file))?.trim().parse::<u64>().ok();
    let mut hierarchies = Vec::new();
    if let Some((own, mount)) = v2_dir(mountinfo, cgroups) {
        hierarchies.push((own, mount, "memory.max", "memory.current"));
    }
    if let Some((own, mount)) = v1_dir(mountinfo, cgroups, "memory") {
        hierarchies.push((own, mount, "memory.limit_in_bytes", "memory.usage_in_bytes"));
    }
    hierarchies
        .iter()
        .flat_map(|(own, mount, limit, usage)| {
            own.ancestors()
                .take_while(move |dir| dir.starts_with(mount))
                .filter_map(move |dir| {
                    let limit = number(dir, limit).filter(|&limit| limit < UNLIMITED)?;
                    Some(limit.saturating_sub(number(dir, usage).unwrap_or(0)))
                })
        })
        .min()
}

/// This process's cgroup in the v1 hierarchy of `controller`, and that hierarchy's
/// mount point.
fn v1_dir(mountinfo: &str, cgroups: &str, controller: &str) -> Option<(PathBuf, PathBuf)> {
    let has = |list: &str| list.split(',').any(|name| name == controller);
    let path = cgroups.lines().find_map(|line| {
        let (_, rest) = line.split_once(':')?;
        let (controllers, path) = rest.split_once(':')?;
        has(controllers).then_some(path)
    })?;
    mounts(mountinfo, move |fstype, options| {
        fstype == "cgroup" && has(options)
    })
    .find_map(|mount| Some((mount.dir_of(path)?, mount.point)))
}

/// The `oom_kill` count in a `memory.events` or `memory.oom_control` text.
pub(crate) fn oom_kills(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|count| count.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_CGROUPS: &str = "8:pids:/\n4:memory:/jobs/42\n1:cpu:/\n0::/\n";

    const UNIFIED: &str = "\
25 1 0:22 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate
";
    const UNIFIED_CGROUPS: &str = "0::/user.slice/user-1000.slice/session-3.scope\n";

    #[test]
    fn finds_its_own_cgroup_v2_directory_on_either_layout() {
        let dir = |mountinfo, cgroups| v2_dir(mountinfo, cgroups).map(|(dir, _)| dir);
        assert_eq!(
            dir(HYBRID, HYBRID_CGROUPS),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            dir(UNIFIED, UNIFIED_CGROUPS),
            Some(PathBuf::from(
                "/sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope"
            ))
        );
        assert_eq!(dir(HYBRID, "4:memory:/\n"), None, "no v2 line");
    }

    #[test]
    fn a_mount_of_a_subtree_reaches_only_paths_below_its_root() {
        let container = "30 1 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let dir = |mountinfo: &str, cgroups| v2_dir(mountinfo, cgroups).map(|(dir, _)| dir);
        assert_eq!(
            dir(container, "0::/docker/abc/job\n"),
            Some(PathBuf::from("/sys/fs/cgroup/job"))
        );
        assert_eq!(dir(container, "0::/docker/abcdef\n"), None);
        assert_eq!(dir(container, "0::/other\n"), None);
        // A second mount of the whole hierarchy reaches what the first does not.
        let both = format!("{container}31 1 0:26 / /mnt/cgroup2 rw - cgroup2 cgroup2 rw\n");
        assert_eq!(
            dir(&both, "0::/other\n"),
            Some(PathBuf::from("/mnt/cgroup2/other"))
        );
    }

    #[test]
    fn mount_points_are_unescaped() {
        let spaced = "30 1 0:26 / /mnt/my\\040cgroups rw - cgroup2 none rw\n";
        assert_eq!(
            v2_dir(spaced, "0::/a\n").map(|(dir, _)| dir),
            Some(PathBuf::from("/mnt/my cgroups/a"))
        );
        assert_eq!(unescape(r"a\134b\tc"), r"a\b\tc");
    }

    #[test]
    fn the_oom_counter_is_the_nearest_memory_events_else_cgroup_v1() {
        let v2 = oom_kill_counter_in(UNIFIED, UNIFIED_CGROUPS, |file| {
            file == Path::new("/sys/fs/cgroup/user.slice/user-1000.slice/memory.events")
        });
        assert_eq!(
            v2,
            Some(PathBuf::from(
                "/sys/fs/cgroup/user.slice/user-1000.slice/memory.events"
            ))
        );
        let v1 = oom_kill_counter_in(HYBRID, HYBRID_CGROUPS, |file| {
            file.ends_with("memory.oom_control")
        });
        assert_eq!(
            v1,
            Some(PathBuf::from(
                "/sys/fs/cgroup/memory/jobs/42/memory.oom_control"
            ))
        );
        assert_eq!(oom_kill_counter_in(HYBRID, HYBRID_CGROUPS, |_| false), None);
    }

    #[test]
    fn memory_left_is_the_tightest_limit_less_usage_in_either_hierarchy() {
        let files = |entries: &'static [(&'static str, &'static str)]| {
            move |file: &Path| {
                entries
                    .iter()
                    .find(|(name, _)| Path::new(name) == file)
                    .map(|(_, text)| text.to_string())
            }
        };
        // v1: the job's own limit is none; its parent's is 1 GiB with 256 MiB used.
        let v1 = files(&[
            (
                "/sys/fs/cgroup/memory/jobs/42/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
            (
                "/sys/fs/cgroup/memory/jobs/42/memory.usage_in_bytes",
                "1000\n",
            ),
            (
                "/sys/fs/cgroup/memory/jobs/memory.limit_in_bytes",
                "1073741824\n",
            ),
            (
                "/sys/fs/cgroup/memory/jobs/memory.usage_in_bytes",
                "268435456\n",
            ),
        ]);
        assert_eq!(
            memory_left_in(HYBRID, HYBRID_CGROUPS, v1),
            Some((1 << 30) - (256 << 20))
        );
        // v2: "max" is no limit; the user slice's is, and it is nearly used up.
        let v2 = files(&[
            (
                "/sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope/memory.max",
                "max\n",
            ),
            (
                "/sys/fs/cgroup/user.slice/user-1000.slice/memory.max",
                "2000\n",
            ),
            (
                "/sys/fs/cgroup/user.slice/user-1000.slice/memory.current",
                "2500\n",
            ),
        ]);
        assert_eq!(memory_left_in(UNIFIED, UNIFIED_CGROUPS, v2), Some(0));
        assert_eq!(memory_left_in(UNIFIED, UNIFIED_CGROUPS, |_| None), None);
    }

    #[test]
    fn reads_the_oom_kill_count_of_either_file() {
        let events = "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(oom_kills(events), Some(2));
        let control = "oom_kill_disable 0\nunder_oom 0\noom_kill 7\n";
        assert_eq!(oom_kills(control), Some(7));
        assert_eq!(oom_kills("oom_group_kill 4\n"), None);
    }
}

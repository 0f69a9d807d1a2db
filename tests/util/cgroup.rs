//! Cgroups a test makes to put a run under a limit (memory, processes) or to look at
//! the pool's own cgroups. They need root (or a delegated hierarchy): where none can be
//! made, a test says why and checks what it can without, unless
//! `PROCPOOL_REQUIRE_CGROUP=1` (CI, where the machine has them) makes that a failure.

use std::path::PathBuf;
use std::time::Duration;

/// Whether the tests must fail rather than skip where no cgroup can be made.
pub fn required() -> bool {
    std::env::var_os("PROCPOOL_REQUIRE_CGROUP").is_some_and(|value| value == "1")
}

/// Skips (returns `None`, saying why) or, where cgroups are required, fails.
pub fn or_skip<T>(made: Result<T, String>, test: &str) -> Option<T> {
    match made {
        Ok(value) => Some(value),
        Err(why) if required() => panic!("{test}: PROCPOOL_REQUIRE_CGROUP=1, but {why}"),
        Err(why) => {
            eprintln!("{test}: skipped: {why}");
            None
        }
    }
}

/// This process's cgroup v2 directory, as procpool finds it.
pub use procpool_supervisor::cgroup::own_v2_dir;

/// A child cgroup that holds a controller, removed when dropped.
pub struct TestCgroup {
    pub dir: PathBuf,
    /// A cgroup v1 hierarchy's (its files are named differently).
    pub v1: bool,
}

impl TestCgroup {
    /// A cgroup with `controller` (`memory`, `pids`) below this process's own: in the
    /// controller's v1 hierarchy, or in v2 (enabling the controller for the children of
    /// this process's cgroup where it may). `settings` gives the files to write, for
    /// v1 (`true`) or v2, in order.
    pub fn create(
        controller: &str,
        settings: impl Fn(bool) -> Vec<(&'static str, String)>,
    ) -> Result<TestCgroup, String> {
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "procpool-test-{controller}-{}-{}",
            std::process::id(),
            MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let (parent, is_v1) = match procpool_supervisor::cgroup::own_v1_dir(controller) {
            Some(dir) => (dir, true),
            None => (
                own_v2_dir().ok_or("no cgroup v2 directory of this process")?,
                false,
            ),
        };
        if !is_v1 {
            // Allowed only where the parent holds no process itself (the root does).
            let _ = std::fs::write(
                parent.join("cgroup.subtree_control"),
                format!("+{controller}"),
            );
        }
        let dir = parent.join(&name);
        std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cgroup = TestCgroup { dir, v1: is_v1 };
        for (file, value) in settings(is_v1) {
            cgroup
                .write(file, &value)
                .map_err(|e| format!("{}/{file}: {e}", cgroup.dir.display()))?;
        }
        Ok(cgroup)
    }

    /// A memory cgroup of `limit` bytes and no swap.
    pub fn memory(limit: u64) -> Result<TestCgroup, String> {
        let cgroup = TestCgroup::create("memory", |v1| match v1 {
            true => vec![("memory.limit_in_bytes", limit.to_string())],
            false => vec![("memory.max", limit.to_string())],
        })?;
        // Where swap is accounted, it is limited too, so the limit means RAM + swap.
        let swap = match cgroup.v1 {
            true => ("memory.memsw.limit_in_bytes", limit.to_string()),
            false => ("memory.swap.max", "0".to_string()),
        };
        if cgroup.dir.join(swap.0).exists() {
            cgroup
                .write(swap.0, &swap.1)
                .map_err(|e| format!("{}: {e}", swap.0))?;
        }
        Ok(cgroup)
    }

    /// A pids cgroup in which at most `max` processes (and threads) may exist.
    pub fn pids(max: u64) -> Result<TestCgroup, String> {
        TestCgroup::create("pids", |_| vec![("pids.max", max.to_string())])
    }

    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    pub fn write(&self, file: &str, value: &str) -> std::io::Result<()> {
        std::fs::write(self.dir.join(file), value)
    }

    /// For [`Procpool::after_shell`](super::Procpool::after_shell): the shell joins
    /// the cgroup, then execs procpool (same pid), so the supervisor and all it starts
    /// are inside from the first byte.
    pub fn join_script(&self) -> String {
        format!("echo $$ > '{}/cgroup.procs' || exit 97", self.dir.display())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Empty once procpool and its workers have exited; retry briefly for stragglers.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

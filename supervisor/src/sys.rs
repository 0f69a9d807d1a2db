//! The supervisor's one door to the OS: every system call that needs `unsafe`, or that
//! must run in the narrow window between `fork` and `exec`, lives here so the rest of
//! the crate reads as plain Rust.

use std::io;
use std::ops::RangeInclusive;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{self, SigHandler, Signal};
use nix::unistd::Pid;

use crate::cgroup::GuardianCgroup;
use crate::report::{CpuTime, ExitSignal, ExitStatus};

/// A pipe whose two ends are closed on exec; the worker's end is dup'ed onto 0/1/2.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}

/// Makes reads and writes on `fd` return `WouldBlock` instead of waiting.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Asks for a pipe buffer of `bytes` (Linux rounds it to pages, and caps it at
/// `/proc/sys/fs/pipe-max-size` for unprivileged processes); a refusal keeps the
/// default 64 KiB, which only costs more wake-ups per long line.
pub(crate) fn grow_pipe(fd: BorrowedFd<'_>, bytes: usize) {
    let _ = fcntl(fd, FcntlArg::F_SETPIPE_SZ(bytes as libc::c_int));
}

/// `poll(2)` over `entries`, waiting at most `timeout` (forever if `None`). A signal
/// that interrupts the wait is not an error: the caller looks at what is ready.
pub(crate) fn poll(entries: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<()> {
    let timeout_ms = match timeout {
        None => -1,
        // Round up so a deadline is never woken for just before it is due.
        Some(t) => t.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int,
    };
    // SAFETY: `entries` is a live, exclusively borrowed slice of `pollfd` for the whole
    // call, and its length is passed with it; poll writes only the `revents` fields.
    let ready = unsafe {
        libc::poll(
            entries.as_mut_ptr(),
            entries.len() as libc::nfds_t,
            timeout_ms,
        )
    };
    if ready < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(())
}

/// The file descriptors a new worker gets: its stdio ends and the descriptors it inherits.
pub(crate) struct WorkerFds<'a> {
    pub stdin: BorrowedFd<'a>,
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
    /// Descriptors (shared arrays, unnamed files) that stay open in the worker at the
    /// same number.
    pub inherit: &'a [RawFd],
    /// The worker becomes a child subreaper, so its descendants stay below it.
    pub subreaper: bool,
    /// The worker's cgroup's `cgroup.procs`, open for writing: the worker joins it
    /// before anything else, so all it starts is in it too.
    pub cgroup_procs: Option<BorrowedFd<'a>>,
}

/// Starts `command` as a worker (see [`become_worker`]), with `fds.inherit` left open
/// across exec.
pub(crate) fn spawn_command(command: &mut Command, fds: &WorkerFds<'_>) -> io::Result<Pid> {
    command
        .stdin(fds.stdin.try_clone_to_owned()?)
        .stdout(fds.stdout.try_clone_to_owned()?)
        .stderr(fds.stderr.try_clone_to_owned()?);
    let supervisor = nix::unistd::getpid();
    let inherit = fds.inherit.to_vec();
    let subreaper = fds.subreaper;
    let cgroup_procs = fds.cgroup_procs.map(|procs| procs.as_raw_fd());
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed; `join_cgroup` and `become_worker` make only
    // raw system calls (write, setpgid, prctl, getppid, open, close, fcntl, _exit) and
    // allocate nothing (`inherit` was allocated before the fork and is only read).
    unsafe {
        command.pre_exec(move || {
            join_cgroup(cgroup_procs);
            become_worker(supervisor, &inherit, subreaper);
            Ok(())
        });
    }
    let child = command
        .spawn()
        .map_err(|err| crate::start_error::explain_start_error(command.get_program(), err))?;
    let pid = Pid::from_raw(child.id() as i32);
    own_group(pid);
    Ok(pid)
}

/// Forks the supervisor into a worker that runs `body` and exits with its return value.
///
/// Refuses when the process has more than one thread: a fork copies only the calling
/// thread, and a lock held by another thread (the allocator's, say) would stay locked
/// forever in the child.
pub(crate) fn fork_worker(fds: &WorkerFds<'_>, body: &dyn Fn() -> i32) -> io::Result<Pid> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "--start fork needs a single-threaded supervisor, but this process has {threads} threads; use --start spawn"
        )));
    }
    let supervisor = nix::unistd::getpid();
    // Anything buffered for our stdout would otherwise be written twice.
    let _ = io::Write::flush(&mut io::stdout());
    // SAFETY: the process is single-threaded (checked above), so the child's copy of
    // the heap and of every lock is consistent and it may run ordinary Rust code.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => {
            own_group(child);
            Ok(child)
        }
        nix::unistd::ForkResult::Child => {
            let code = run_forked_worker(supervisor, fds, body);
            // SAFETY: `_exit` never returns and skips the parent's atexit handlers and
            // destructors, which belong to the supervisor, not to this worker.
            unsafe { libc::_exit(code) }
        }
    }
}

fn run_forked_worker(supervisor: Pid, fds: &WorkerFds<'_>, body: &dyn Fn() -> i32) -> i32 {
    join_cgroup(fds.cgroup_procs.map(|procs| procs.as_raw_fd()));
    for (from, to) in [(fds.stdin, 0), (fds.stdout, 1), (fds.stderr, 2)] {
        // SAFETY: dup2 on two descriptor numbers; `to` is one of this process's
        // stdio numbers, which no Rust object in the worker owns.
        if unsafe { libc::dup2(from.as_raw_fd(), to) } < 0 {
            return 127;
        }
    }
    close_inherited_descriptors(fds.inherit);
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGCHLD,
        Signal::SIGPIPE,
    ] {
        // SAFETY: restoring the default disposition installs no handler of ours; the
        // supervisor's handlers would otherwise write into its self-pipe from here.
        let _ = unsafe { signal::signal(sig, SigHandler::SigDfl) };
    }
    become_worker(supervisor, fds.inherit, fds.subreaper);
    // A panic must end this process here, never unwind into the supervisor's frames.
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(101);
    let _ = io::Write::flush(&mut io::stdout());
    code
}

/// Closes every descriptor above stderr except `keep`, so a forked worker holds no
/// other worker's pipes (which would hide their EOF) and no supervisor state.
fn close_inherited_descriptors(keep: &[RawFd]) {
    close_all_but(&mut keep.to_vec());
}

/// Closes every descriptor above stderr except those in `keep` (which it sorts).
/// Async-signal-safe: allocates nothing.
fn close_all_but(keep: &mut [RawFd]) {
    keep.sort_unstable();
    let mut first = 3;
    for &fd in keep.iter() {
        if fd > first {
            close_range(first, fd - 1);
        }
        first = first.max(fd.saturating_add(1));
    }
    close_range(first, RawFd::MAX);
}

/// Closes descriptors `first..=last`. Async-signal-safe: allocates nothing.
fn close_range(first: RawFd, last: RawFd) {
    // SAFETY: close_range only closes descriptors; its callers are freshly forked
    // processes that own no Rust object over these numbers that they will use.
    let closed = unsafe { libc::syscall(libc::SYS_close_range, first as u32, last as u32, 0u32) };
    if closed != 0 {
        // Kernels before 5.9 lack close_range: close the numbers one by one, up to the
        // descriptor limit.
        let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft.min(1 << 20));
        let last = (last as u64).min(limit.saturating_sub(1)) as RawFd;
        for number in first..=last {
            let _ = nix::unistd::close(number);
        }
    }
}

/// Puts a new worker in its own process group from the parent's side too, so that a
/// group kill reaches it even before it ran its own `setpgid`. (After its exec this
/// fails with EACCES, by which time the worker did it itself.)
fn own_group(pid: Pid) {
    let _ = nix::unistd::setpgid(pid, pid);
}

/// What every worker does before it runs anything: leave the supervisor's process
/// group (so a terminal's Ctrl-C reaches the supervisor alone), ask for SIGKILL when
/// the supervisor dies, volunteer for the OOM killer (a worker's death the pool
/// survives; the supervisor's it does not), become a child subreaper if asked, and keep
/// the shared-array descriptors across exec. Async-signal-safe: runs between fork and
/// exec.
fn become_worker(supervisor: Pid, inherit: &[RawFd], subreaper: bool) {
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers and touches no memory.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // The supervisor may have died before prctl took effect; then nobody will kill us.
    if nix::unistd::getppid() != supervisor {
        // SAFETY: `_exit` is async-signal-safe and never returns.
        unsafe { libc::_exit(1) };
    }
    write_file(c"/proc/self/oom_score_adj", b"1000");
    if subreaper {
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes plain integers and touches no
        // memory; the setting survives exec.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    }
    for &fd in inherit {
        // SAFETY: F_SETFD on a plain descriptor number only changes its close-on-exec flag.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is open as `procs`
/// (writing 0 there names the writer). A refusal leaves it where it was: process
/// groups and the subreaper still hold its descendants. Async-signal-safe.
fn join_cgroup(procs: Option<RawFd>) {
    if let Some(procs) = procs {
        // SAFETY: write on a descriptor number from a live two-byte literal.
        unsafe { libc::write(procs, b"0\n".as_ptr().cast(), 2) };
    }
}

/// Writes `bytes` to the file at `path`, ignoring failure. Async-signal-safe.
fn write_file(path: &std::ffi::CStr, bytes: &[u8]) {
    // SAFETY: `path` is NUL-terminated and `bytes` is a live slice whose length is
    // passed with it; open, write and close allocate nothing.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            libc::write(fd, bytes.as_ptr().cast(), bytes.len());
            libc::close(fd);
        }
    }
}

/// Makes this process a child subreaper: an orphan anywhere below it is re-parented to
/// it instead of to init, so it can still be found and killed.
pub(crate) fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes plain integers and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// This process's session id.
pub(crate) fn own_session() -> i32 {
    nix::unistd::getsid(None).map_or(0, Pid::as_raw)
}

/// Whether this process has any child at all, exited or not.
pub(crate) fn has_children() -> bool {
    // SAFETY: an all-zero siginfo_t is a valid value of this plain C struct.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a live siginfo_t; WNOWAIT|WNOHANG neither reaps nor waits.
    let rc = unsafe {
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    rc == 0 || Errno::last() != Errno::ECHILD
}

/// Reaps `pid` if it has exited; never waits.
pub(crate) fn reap_if_exited(pid: Pid) {
    let _ = wait4(pid, libc::WNOHANG);
}

/// Starts the pool's guardian (see `orphans.rs`): a grandchild that, once its parent
/// has exited, is nobody's child of ours, in a session of its own (no terminal signal
/// reaches it), working in `/`. It reads process groups from the pipe whose write end
/// is returned and kills them all when the pipe reaches EOF, which is when the
/// supervisor exits or dies; given the pool's `cgroup`, it then kills everything in it
/// too and removes it. `capacity` bounds the groups it holds at once.
pub(crate) fn start_guardian(
    capacity: usize,
    cgroup: Option<GuardianCgroup>,
) -> io::Result<(Pid, OwnedFd)> {
    let (read, write) = pipe()?;
    let (pid_read, pid_write) = pipe()?;
    // Allocated before the fork: the guardian may not allocate (the process that
    // forks it may have other threads, one of them holding the allocator's lock).
    let mut groups: Vec<libc::pid_t> = vec![0; capacity.max(1)];
    let cgroup_fds = cgroup.as_ref().map(|cgroup| CgroupFds {
        kill: cgroup.kill.as_raw_fd(),
        dir: cgroup.dir.as_raw_fd(),
        parent: cgroup.parent.as_raw_fd(),
        name: &cgroup.name,
    });
    // SAFETY: the children run only async-signal-safe system calls on memory allocated
    // before the fork (`groups`, the descriptors, the cgroup's name), then `_exit`;
    // they never return.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => {
            drop((read, pid_write));
            // The middle process exits as soon as it has forked the guardian.
            let _ = wait4(child, 0);
            let mut bytes = [0u8; 4];
            let got = nix::unistd::read(&pid_read, &mut bytes)?;
            let guardian = i32::from_ne_bytes(bytes);
            if got != 4 || guardian <= 0 {
                return Err(io::Error::other("the pool's guardian did not start"));
            }
            set_nonblocking(write.as_fd())?;
            Ok((Pid::from_raw(guardian), write))
        }
        nix::unistd::ForkResult::Child => {
            // SAFETY: fork, write and _exit are async-signal-safe.
            unsafe {
                let guardian = libc::fork();
                if guardian == 0 {
                    guard(read.as_raw_fd(), &mut groups, cgroup_fds);
                }
                let bytes = guardian.to_ne_bytes();
                libc::write(pid_write.as_raw_fd(), bytes.as_ptr().cast(), 4);
                libc::_exit(0)
            }
        }
    }
}

/// The pool's cgroup as the guardian holds it: descriptor numbers and a name.
#[derive(Clone, Copy)]
struct CgroupFds<'a> {
    kill: RawFd,
    dir: RawFd,
    parent: RawFd,
    name: &'a std::ffi::CStr,
}

/// The guardian's life; see [`start_guardian`]. Async-signal-safe throughout.
fn guard(pipe: RawFd, groups: &mut [libc::pid_t], cgroup: Option<CgroupFds<'_>>) -> ! {
    // SAFETY: plain system calls on descriptor numbers and NUL-terminated literals;
    // this process owns no Rust object over any descriptor it closes or replaces.
    let (pipe, cgroup) = unsafe {
        libc::setsid();
        libc::chdir(c"/".as_ptr());
        libc::prctl(libc::PR_SET_NAME, c"procpool-guard".as_ptr());
        for sig in [
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGTERM,
            libc::SIGQUIT,
            libc::SIGPIPE,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        // Above stdio, so /dev/null can take 0-2 whatever numbers they had.
        let above_stdio = |fd: RawFd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3);
        let pipe = above_stdio(pipe);
        let cgroup = cgroup.map(|cgroup| CgroupFds {
            kill: above_stdio(cgroup.kill),
            dir: above_stdio(cgroup.dir),
            parent: above_stdio(cgroup.parent),
            name: cgroup.name,
        });
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        for stdio in 0..3 {
            libc::dup2(null, stdio);
        }
        (pipe, cgroup)
    };
    // Holding no other descriptor: no worker's pipe, no supervisor's socket.
    let mut keep = [pipe; 4];
    if let Some(cgroup) = cgroup {
        keep[1..].copy_from_slice(&[cgroup.kill, cgroup.dir, cgroup.parent]);
    }
    close_all_but(&mut keep);
    let mut held = 0;
    let mut buffer = [0u8; 4096];
    loop {
        // SAFETY: `buffer` is a live local array whose length is passed with it.
        let got = unsafe { libc::read(pipe, buffer.as_mut_ptr().cast(), buffer.len()) };
        if got < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        if got <= 0 {
            break;
        }
        // Records are written whole (4 bytes, atomic on a pipe), so reads are too.
        for record in buffer[..got as usize].chunks_exact(4) {
            let group = i32::from_ne_bytes([record[0], record[1], record[2], record[3]]);
            if group > 0 && held < groups.len() {
                groups[held] = group;
                held += 1;
            } else if let Some(at) = groups[..held].iter().position(|&g| g == -group) {
                held -= 1;
                groups.swap(at, held);
            }
        }
    }
    for &group in &groups[..held] {
        // SAFETY: kill takes plain integers.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    }
    if let Some(cgroup) = cgroup {
        remove_cgroup(cgroup);
    }
    // SAFETY: `_exit` is async-signal-safe and never returns.
    unsafe { libc::_exit(0) }
}

/// Kills every process in the pool's cgroup, then removes the cgroups below it and
/// itself, trying again for about two seconds while the killed are still exiting (a
/// cgroup with a process in it cannot be removed). Async-signal-safe.
fn remove_cgroup(cgroup: CgroupFds<'_>) {
    // SAFETY: write on a descriptor number from a live one-byte literal.
    unsafe { libc::write(cgroup.kill, b"1".as_ptr().cast(), 1) };
    let pause = libc::timespec {
        tv_sec: 0,
        tv_nsec: 5_000_000,
    };
    for _ in 0..400 {
        remove_below(cgroup.dir, CGROUP_DEPTH);
        // SAFETY: unlinkat on a directory descriptor and a NUL-terminated name.
        let removed =
            unsafe { libc::unlinkat(cgroup.parent, cgroup.name.as_ptr(), libc::AT_REMOVEDIR) };
        if removed == 0 || Errno::last() != Errno::EBUSY {
            return;
        }
        // SAFETY: `pause` is a live timespec; no remainder is asked for.
        unsafe { libc::nanosleep(&pause, std::ptr::null_mut()) };
    }
}

/// How deep below the pool's cgroup the guardian removes cgroups: the workers' leaves,
/// and a few levels a worker may have made in its own.
const CGROUP_DEPTH: u32 = 4;

/// Removes the cgroups below the directory open as `dir`, deepest first, down to
/// `depth` levels; those with a process in them stay. Async-signal-safe: each level
/// reads its entries into an array on the stack.
fn remove_below(dir: RawFd, depth: u32) {
    if depth == 0 {
        return;
    }
    let mut entries = [0u8; 2048];
    // SAFETY: lseek on a descriptor number.
    unsafe { libc::lseek(dir, 0, libc::SEEK_SET) };
    loop {
        // SAFETY: getdents64 writes at most `entries.len()` bytes into the live array.
        let got = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir,
                entries.as_mut_ptr(),
                entries.len(),
            )
        };
        if got <= 0 {
            return;
        }
        // A record: inode (8 bytes), offset (8), its length (2), type (1), then its
        // name, NUL-terminated within the length.
        let mut at = 0;
        while at + 19 < got as usize {
            let length = usize::from(u16::from_ne_bytes([entries[at + 16], entries[at + 17]]));
            if length <= 19 || at + length > got as usize {
                return;
            }
            let name = entries[at + 19..at + length]
                .as_ptr()
                .cast::<libc::c_char>();
            if entries[at + 18] == libc::DT_DIR && entries[at + 19] != b'.' {
                // SAFETY: openat, close and unlinkat on descriptor numbers and a name
                // whose NUL is within the record.
                unsafe {
                    let below = libc::openat(
                        dir,
                        name,
                        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                    );
                    if below >= 0 {
                        remove_below(below, depth - 1);
                        libc::close(below);
                    }
                    libc::unlinkat(dir, name, libc::AT_REMOVEDIR);
                }
            }
            at += length;
        }
    }
}

fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// Sends `signal` to the worker's whole process group, so its own children go too.
pub(crate) fn kill_group(pid: Pid, sig: Signal) {
    // ESRCH: the worker has not made its group yet (or it is gone): signal it alone.
    if signal::killpg(pid, sig).is_err() {
        let _ = signal::kill(pid, sig);
    }
}

/// Reaps `pid` if it has exited, with the CPU time it used. Its process group is
/// killed first: the worker's own children (which `PR_SET_PDEATHSIG` does not cover)
/// must not outlive it, and while the exited leader is unreaped its group id cannot
/// have been reused by anyone else.
pub(crate) fn try_reap(pid: Pid) -> io::Result<Option<(ExitStatus, CpuTime)>> {
    // SAFETY: an all-zero siginfo_t is a valid value of this plain C struct.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `info` is a live siginfo_t; WNOWAIT leaves the child waitable.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid.as_raw() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            break;
        }
        match Errno::last() {
            Errno::EINTR => continue,
            err => return Err(err.into()),
        }
    }
    // SAFETY: waitid filled `info` (or left it zeroed when nothing has exited), and
    // si_pid is valid for the SIGCHLD it describes.
    if unsafe { info.si_pid() } == 0 {
        return Ok(None);
    }
    let _ = signal::killpg(pid, Signal::SIGKILL);
    wait4(pid, 0)
}

/// Waits for `pid` to exit and reaps it.
pub(crate) fn reap_blocking(pid: Pid) -> io::Result<Option<(ExitStatus, CpuTime)>> {
    wait4(pid, 0)
}

fn wait4(pid: Pid, flags: libc::c_int) -> io::Result<Option<(ExitStatus, CpuTime)>> {
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both pointers are to live locals of the right types for wait4.
        let got = unsafe { libc::wait4(pid.as_raw(), &mut status, flags, &mut usage) };
        if got == 0 {
            return Ok(None);
        }
        if got < 0 {
            match Errno::last() {
                Errno::EINTR => continue,
                err => return Err(err.into()),
            }
        }
        let exit = if libc::WIFSIGNALED(status) {
            ExitStatus::Signaled {
                signal: ExitSignal::from_number(libc::WTERMSIG(status)),
                core_dumped: libc::WCOREDUMP(status),
            }
        } else {
            ExitStatus::Exited(libc::WEXITSTATUS(status))
        };
        return Ok(Some((exit, cpu_time(&usage))));
    }
}

/// The real-time signals, `SIGRTMIN..=SIGRTMAX`: the C library's range (glibc keeps
/// the kernel's first two for itself), so a name such as `SIGRTMIN+3` means what
/// `kill -s RTMIN+3` sends.
pub(crate) fn realtime_signals() -> RangeInclusive<i32> {
    libc::SIGRTMIN()..=libc::SIGRTMAX()
}

/// CPU time used by this process (`RUSAGE_SELF`).
pub(crate) fn own_cpu_time() -> CpuTime {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(usage) => CpuTime {
            user: timeval(usage.user_time().tv_sec(), usage.user_time().tv_usec()),
            sys: timeval(usage.system_time().tv_sec(), usage.system_time().tv_usec()),
        },
        Err(_) => CpuTime::default(),
    }
}

/// This process's peak resident memory so far, in KiB: `VmHWM` of its own memory
/// (not `ru_maxrss`, which keeps the peak of the process it was forked from across
/// `exec`). 0 if `/proc` cannot say.
pub(crate) fn own_peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn cpu_time(usage: &libc::rusage) -> CpuTime {
    CpuTime {
        user: timeval(usage.ru_utime.tv_sec, usage.ru_utime.tv_usec),
        sys: timeval(usage.ru_stime.tv_sec, usage.ru_stime.tv_usec),
    }
}

fn timeval(secs: libc::time_t, micros: libc::suseconds_t) -> Duration {
    Duration::from_secs(secs.max(0) as u64) + Duration::from_micros(micros.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn a_process_ended_by_a_realtime_signal_is_reaped_with_its_number() {
        let number = libc::SIGRTMIN() + 3;
        let null = std::fs::File::open("/dev/null").expect("/dev/null opens");
        let fds = WorkerFds {
            stdin: null.as_fd(),
            stdout: null.as_fd(),
            stderr: null.as_fd(),
            inherit: &[],
            subreaper: false,
            cgroup_procs: None,
        };
        let mut command = Command::new("sh");
        command.arg("-c").arg(format!("kill -{number} $$"));
        let pid = spawn_command(&mut command, &fds).expect("sh starts");
        let (status, _) = reap_blocking(pid).expect("wait4").expect("it exited");
        match status {
            ExitStatus::Signaled {
                signal,
                core_dumped,
            } => {
                assert_eq!(signal.number(), number);
                assert!(!core_dumped);
            }
            other => panic!("not ended by a signal: {other:?}"),
        }
    }
}

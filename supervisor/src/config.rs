//! How a pool is shaped: how workers start, how many, and the limits and timers that
//! govern them.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use procpool_child::ArraySpec;

use crate::restart::RestartPolicy;

/// How workers are started.
#[derive(Clone)]
#[non_exhaustive]
pub enum WorkerStart {
    /// Execute a program (the procpool binary re-executed, or a user's `--child`).
    Spawn {
        /// The program to execute.
        program: OsString,
        /// Its arguments.
        args: Vec<OsString>,
    },
    /// Fork the supervisor and run this function in the child; its return value is the
    /// exit code. The supervisor must be single-threaded (checked at each fork).
    Fork(Arc<dyn Fn() -> i32 + Send + Sync>),
}

impl fmt::Debug for WorkerStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerStart::Spawn { program, args } => {
                let words: Vec<_> = std::iter::once(program).chain(args).collect();
                write!(f, "`{}`", shell_quote(&words))
            }
            WorkerStart::Fork(_) => f.write_str("fork"),
        }
    }
}

/// Words joined into a command line a shell would read back the same way.
fn shell_quote(words: &[&OsString]) -> String {
    words
        .iter()
        .map(|word| {
            let word = word.to_string_lossy();
            let plain = !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain {
                word.into_owned()
            } else {
                format!("'{}'", word.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Receives each line a worker writes to stderr (and each non-protocol stdout line),
/// with the worker's slot.
pub type LogSink = Box<dyn FnMut(usize, &str)>;

/// What one task may have of its own, overriding the pool's
/// [`task_timeout`](PoolConfig::task_timeout) and [`max_attempts`](PoolConfig::max_attempts)
/// (a client that wants a timed-out task not retried gives it one attempt).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskOptions {
    /// How long it may run once its worker starts on it.
    pub timeout: Option<Duration>,
    /// Worker deaths charged to it before it is quarantined; at least 1.
    pub max_attempts: Option<u32>,
}

/// Everything that shapes a pool. Build with [`PoolConfig::new`] and adjust fields.
pub struct PoolConfig {
    /// Number of worker processes.
    pub procs: usize,
    /// How each worker is started.
    pub start: WorkerStart,
    /// The most tasks in flight per worker. The pool sends ahead only as many as cover
    /// about [`QUEUED_WORK_TARGET`] of measured task time, so long tasks still balance
    /// at the end of a run while tiny ones are batched through the pipes.
    pub prefetch: usize,
    /// A task that was running in this many dying workers is quarantined as failed.
    /// Tasks that only waited in a dying worker's pipe are retried without charge.
    pub max_attempts: u32,
    /// How many unplanned worker deaths the pool absorbs, and how fast it restarts.
    pub restart: RestartPolicy,
    /// Kill a worker whose current task has run this long.
    pub task_timeout: Option<Duration>,
    /// Kill a worker that has not sent `ready` this long after it started.
    pub ready_timeout: Duration,
    /// Replace a worker after it has answered this many tasks.
    pub max_tasks_per_child: Option<u64>,
    /// At shutdown, how long workers get after `stop`, then after SIGTERM; after an
    /// interrupt, how long in-flight tasks get to finish.
    pub grace: Duration,
    /// SIGKILL a random busy worker this many times per second (testing).
    pub chaos: Option<f64>,
    /// Shared arrays described to workers in `PROCPOOL_ARRAYS`.
    pub arrays: BTreeMap<String, ArraySpec>,
    /// Descriptors the workers inherit at the same numbers: those behind `arrays`, and
    /// any other file they open as `/proc/self/fd/N`. The pool holds a share of each,
    /// so none is closed while a worker may still be started with it.
    pub inherit_fds: Vec<Arc<OwnedFd>>,
    /// Return [`Event::Tick`](crate::Event::Tick) from [`Pool::next_event`](crate::Pool::next_event)
    /// at least this often (for status displays).
    pub tick: Option<Duration>,
    /// Where worker log lines go; by default stderr, prefixed `[wN]`.
    pub on_log: LogSink,
    /// The longest line a worker may write on stdout, in bytes: past it the worker is
    /// killed as broken (its tasks retried), so a line without a newline cannot grow
    /// the supervisor without bound. A worker's stderr lines are cut at
    /// [`LOG_LINE_MAX`](crate::LOG_LINE_MAX) instead.
    pub max_line: usize,
    /// Take over SIGINT and SIGTERM while the pool runs: the first stops dispatch and
    /// lets running tasks finish within `grace`, the second kills the workers. Off by
    /// default, so a library user's own handling stands; [`Pool::interrupt`](crate::Pool::interrupt)
    /// does the same from code.
    pub handle_interrupts: bool,
    /// Make this process a child subreaper (and each worker too), and kill what a
    /// worker leaves behind when it dies: a daemon that left its process group with
    /// `setsid()` included. A leftover is a child of this process that is not a worker
    /// and is in a dead worker's process group or in a session of its own; turn this on
    /// only when no such child of this process is its own (the procpool binary does).
    /// One pool at a time per process.
    pub adopt_orphans: bool,
    /// Where cgroup v2 lets this process make cgroups below its own (root, or a
    /// delegated subtree; Linux 5.14 for `cgroup.kill`), give the pool one and each
    /// worker a leaf in it, joined before the worker executes anything: when a worker
    /// dies, everything left in its leaf is killed, whatever process group or session
    /// it moved to, and so is everything in the pool's at shutdown, or when this
    /// process dies. The cgroups enable no controller (they limit nothing). Where they
    /// cannot be made, the pool runs without them; [`PoolReport::cgroup`](crate::PoolReport::cgroup)
    /// says which.
    pub cgroup: bool,
}

impl PoolConfig {
    /// A pool of `procs` workers started by `start`, with default settings.
    pub fn new(procs: usize, start: WorkerStart) -> PoolConfig {
        PoolConfig {
            procs,
            start,
            prefetch: DEFAULT_PREFETCH,
            max_attempts: 3,
            restart: RestartPolicy::for_pool(procs),
            task_timeout: None,
            ready_timeout: Duration::from_secs(30),
            max_tasks_per_child: None,
            grace: Duration::from_secs(5),
            chaos: None,
            arrays: BTreeMap::new(),
            inherit_fds: Vec::new(),
            tick: None,
            max_line: DEFAULT_MAX_LINE,
            on_log: Box::new(|slot, line| {
                crate::stderr_queue::write(&format!("[w{slot}] {line}\n"))
            }),
            handle_interrupts: false,
            adopt_orphans: false,
            cgroup: false,
        }
    }
}

/// Default bound of one line from a worker's stdout (and of `procpool run tasks`'
/// input lines): 256 MiB.
pub const DEFAULT_MAX_LINE: usize = 256 << 20;

/// Default upper bound of tasks in flight per worker; bench/BENCHMARKS.md has the
/// measurement behind it (tiny-task throughput stops growing past it).
pub const DEFAULT_PREFETCH: usize = 64;

/// How much work (by measured task time) the pool keeps queued in each worker's pipe.
/// Enough to hide a round trip many times over; small enough that the last tasks of
/// a run of long tasks are not stuck behind one worker.
pub const QUEUED_WORK_TARGET: Duration = Duration::from_millis(2);

//! What the pool tells its caller: events as they happen, how each task ended, and why
//! the pool could not start or gave up. Errors carry data; the caller words them (a
//! command-line tool can name its own flags, a library user its own settings).

use std::fmt;
use std::time::Duration;

use procpool_child::TaskId;
use serde::Serialize;
use serde_json::Value;

use crate::config::WorkerStart;
use crate::report::{quarantine_message, Crash};

/// Why a pool could not start or had to give up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// A bad setting, e.g. zero workers.
    #[error("{0}")]
    Config(String),
    /// A worker process could not be created at all.
    #[error("cannot start worker {slot} ({start:?}): {error}")]
    Start {
        /// The slot being started.
        slot: usize,
        /// How it was started.
        start: WorkerStart,
        /// What the OS said.
        error: std::io::Error,
    },
    /// The event loop's own plumbing failed (poll, signal registration).
    #[error("supervisor I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The pool gave up; [`Pool::shutdown`](crate::Pool::shutdown) reports what finished.
    #[error("{0}")]
    Aborted(AbortReason),
}

/// Why the pool gave up on a run.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AbortReason {
    /// More than `intensity` workers were restarted within `period` with no task
    /// answered in between: the workers make no progress.
    RestartIntensity {
        /// The policy's intensity.
        intensity: u32,
        /// The policy's period.
        period: Duration,
        /// The death that went past it.
        last: Crash,
    },
    /// Workers die before sending `ready`, again and again, and none ever was ready:
    /// the worker command cannot work.
    DeadOnArrival {
        /// The last such death.
        last: Crash,
        /// How many in a row, in one slot.
        deaths: u32,
    },
    /// A replacement worker could not be created.
    CannotRestart {
        /// The slot.
        slot: usize,
        /// What the OS said.
        error: String,
    },
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbortReason::RestartIntensity {
                intensity,
                period,
                last,
            } => write!(
                f,
                "more than {intensity} worker restarts within {period:?} with no task answered (last: {last}); giving up"
            ),
            AbortReason::DeadOnArrival { last, deaths } => write!(
                f,
                "workers die before sending `ready` ({last}, {deaths} times in a row); \
                 {READY_HINT}"
            ),
            AbortReason::CannotRestart { slot, error } => {
                write!(f, "cannot restart worker {slot}: {error}")
            }
        }
    }
}

/// What most often keeps a worker from `ready`: its stdout is block-buffered (Python
/// without `flush=True` when stdout is a pipe), so the line never leaves the process.
pub const READY_HINT: &str = "is the worker flushing stdout after each message? \
    (Python: print(..., flush=True) or PYTHONUNBUFFERED=1)";

/// As its sentence, so that a JSON report reads like the error line.
impl Serialize for AbortReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// How a task ended: exactly one per task put, whatever happened to workers.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TaskOutcome {
    /// The worker's `result` output.
    Output(Value),
    /// The worker's `error` message; the worker was fine.
    Error(String),
    /// Quarantined after `max_attempts` worker deaths were charged to it.
    Failed(Vec<Crash>),
}

impl TaskOutcome {
    /// Why the task did not succeed, as the report says it: the worker's error message
    /// or the quarantine sentence; `None` for a result.
    pub fn failure_message(&self, attempts: u32) -> Option<String> {
        match self {
            TaskOutcome::Output(_) => None,
            TaskOutcome::Error(message) => Some(message.clone()),
            TaskOutcome::Failed(crashes) => Some(quarantine_message(crashes, attempts)),
        }
    }
}

/// What a worker's death means for one task it held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Charge {
    /// The worker was running this task and no other: the death counts against it,
    /// as its `count`-th of `max_attempts`.
    Counted {
        /// Deaths charged to the task so far, this one included.
        count: u32,
    },
    /// The worker was running it, but procpool's chaos killed the worker: not counted.
    Chaos,
    /// The worker had started several tasks, so the death names none of them: each is
    /// retried alone, and not counted.
    Suspect,
    /// The task only waited in the worker's pipe: back to the queue, not counted.
    Waiting,
}

/// A task a dying worker held, and what its death means for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LostTask {
    /// The task.
    pub id: TaskId,
    /// The attempt that died with the worker (sends so far).
    pub attempt: u32,
    /// Whether the death counts against it.
    pub charge: Charge,
}

/// Something that happened in the pool.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A task is finished for good.
    Task {
        /// The id `put` returned.
        id: TaskId,
        /// How many times it was sent to a worker.
        attempts: u32,
        /// The slot that answered, or held it last.
        slot: usize,
        /// Its fate.
        outcome: TaskOutcome,
    },
    /// A worker process started (at pool start or as a restart).
    WorkerStarted {
        /// The slot.
        slot: usize,
        /// Its new pid.
        pid: i32,
    },
    /// A worker died without being asked to stop.
    WorkerDied {
        /// Who, how, and whether procpool killed it.
        crash: Crash,
        /// Tasks it held, oldest first (they are retried or failed).
        tasks: Vec<LostTask>,
        /// When the slot restarts, if it does.
        restart_in: Option<Duration>,
        /// Whether it had sent `ready` (a worker that dies before is likely misconfigured).
        was_ready: bool,
    },
    /// SIGINT or SIGTERM arrived (or [`Pool::interrupt`](crate::Pool::interrupt) was
    /// called): dispatch has stopped and in-flight tasks get the grace period. `again`
    /// is true for the second one, which kills the workers now.
    Interrupted {
        /// Whether this is the second interrupt.
        again: bool,
    },
    /// Nothing happened for [`PoolConfig::tick`](crate::PoolConfig::tick).
    Tick,
    /// The input descriptor passed to [`Pool::next_event_or_input`](crate::Pool::next_event_or_input)
    /// is readable (or at its end): one read of it will not block.
    InputReady,
}

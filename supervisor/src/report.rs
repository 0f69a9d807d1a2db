//! What a run leaves behind: how each worker ended, which tasks did not succeed, and
//! where the time went.

use std::fmt;
use std::time::Duration;

use procpool_child::TaskId;
use serde::Serialize;

/// How a worker process ended, as `waitpid` tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitStatus {
    /// It called `exit` with this code.
    Exited(i32),
    /// A signal ended it.
    Signaled {
        /// The signal's name, e.g. `"SIGSEGV"`.
        signal: String,
        /// Whether the kernel wrote a core dump.
        core_dumped: bool,
    },
    /// It was reaped by someone else (SIGCHLD ignored, a stray `waitpid(-1)`), so its
    /// status is lost.
    Unknown,
}

impl ExitStatus {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        *self == ExitStatus::Exited(0)
    }
}

impl From<std::process::ExitStatus> for ExitStatus {
    /// The same words for a child that `std::process` waited for.
    fn from(status: std::process::ExitStatus) -> ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitStatus::Exited(code),
            (None, Some(signal)) => ExitStatus::Signaled {
                signal: crate::sys::signal_name(signal),
                core_dumped: status.core_dumped(),
            },
            (None, None) => ExitStatus::Unknown,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Exited(code) => write!(f, "exited with code {code}"),
            ExitStatus::Signaled {
                signal,
                core_dumped,
            } => {
                write!(f, "killed by {signal}")?;
                if *core_dumped {
                    write!(f, " (core dumped)")?;
                }
                Ok(())
            }
            ExitStatus::Unknown => write!(f, "exited, status unknown (reaped elsewhere)"),
        }
    }
}

/// Why procpool itself ended a worker, when it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KillReason {
    /// A task ran past `--task-timeout`.
    TaskTimeout,
    /// The worker never sent `ready` in time.
    ReadyTimeout,
    /// The worker closed its stdout but kept running.
    StdoutClosed,
    /// The worker wrote a stdout line longer than the 1 GiB limit.
    LineTooLong,
    /// `--chaos` picked it.
    Chaos,
    /// Shutdown: it did not stop within the grace period, or a second Ctrl-C.
    Shutdown,
}

impl fmt::Display for KillReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KillReason::TaskTimeout => "its task ran past the deadline",
            KillReason::ReadyTimeout => "it never sent ready",
            KillReason::StdoutClosed => "it closed its stdout but kept running",
            KillReason::LineTooLong => "it wrote a stdout line over 1 GiB",
            KillReason::Chaos => "chaos",
            KillReason::Shutdown => "shutdown",
        })
    }
}

/// One worker process's death, as reported for the tasks it was holding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Crash {
    /// The worker slot, `0..procs`.
    pub slot: usize,
    /// The process id.
    pub pid: i32,
    /// How it ended.
    pub status: ExitStatus,
    /// Set when procpool killed it, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub killed_by_procpool: Option<KillReason>,
}

impl Crash {
    /// A SIGKILL that procpool did not send: on Linux usually the OOM killer.
    pub fn likely_oom(&self) -> bool {
        self.killed_by_procpool.is_none()
            && matches!(&self.status, ExitStatus::Signaled { signal, .. } if signal == "SIGKILL")
    }
}

impl fmt::Display for Crash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker {} (pid {}) {}", self.slot, self.pid, self.status)?;
        if let Some(reason) = self.killed_by_procpool {
            write!(f, " (sent by procpool: {reason})")?;
        } else if self.likely_oom() {
            write!(f, " (not sent by procpool: likely the OOM killer)")?;
        }
        Ok(())
    }
}

/// A task that did not produce a result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskFailure {
    /// The task's id.
    pub id: TaskId,
    /// How many times it was sent to a worker.
    pub attempts: u32,
    /// The worker's error message, or a description of the crashes.
    pub message: String,
    /// Each worker death that took the task with it, oldest first.
    pub crashes: Vec<Crash>,
}

/// Why a task was quarantined, e.g. `quarantined after 3 crashes in 4 attempts; last:
/// worker 1 (pid 4242) killed by SIGSEGV`.
pub fn quarantine_message(crashes: &[Crash], attempts: u32) -> String {
    let count = crashes.len();
    let plural = if count == 1 { "" } else { "es" };
    let mut message = format!("quarantined after {count} crash{plural} in {attempts} attempts");
    if let Some(last) = crashes.last() {
        message.push_str(&format!("; last: {last}"));
    }
    message
}

/// CPU time split into user and system time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTime {
    /// Time spent running the program's own code.
    pub user: Duration,
    /// Time the kernel spent on the program's behalf.
    pub sys: Duration,
}

impl std::ops::AddAssign for CpuTime {
    fn add_assign(&mut self, other: CpuTime) {
        self.user += other.user;
        self.sys += other.sys;
    }
}

impl Serialize for CpuTime {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("CpuTime", 2)?;
        s.serialize_field("user_s", &self.user.as_secs_f64())?;
        s.serialize_field("sys_s", &self.sys.as_secs_f64())?;
        s.end()
    }
}

/// One worker slot over the whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerReport {
    /// The slot, `0..procs`.
    pub slot: usize,
    /// The pid of its last process.
    pub pid: i32,
    /// Tasks answered by this slot's processes (results and errors).
    pub tasks_done: u64,
    /// How many times the slot's process was replaced after an unplanned exit.
    pub restarts: u32,
    /// How many times the slot's process was replaced, as planned, after answering
    /// `max_tasks_per_child` tasks (not crashes; not counted in `restarts`).
    pub recycled: u32,
    /// How its last process ended.
    pub exit: Option<ExitStatus>,
    /// CPU time of all of this slot's processes.
    pub cpu: CpuTime,
}

/// How the run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunEnd {
    /// Every task was answered or quarantined.
    Completed,
    /// Ctrl-C or SIGTERM stopped dispatch.
    Interrupted,
    /// The pool gave up (restarts without progress, workers that cannot start).
    Aborted(crate::event::AbortReason),
}

/// The run report: every task's fate, every worker's end, and the time spent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolReport {
    /// How the run ended.
    pub end: RunEnd,
    /// Tasks put on the queue.
    pub tasks_total: u64,
    /// Tasks that produced a result.
    pub tasks_ok: u64,
    /// Tasks answered with an error by the worker.
    pub tasks_error: u64,
    /// Tasks quarantined after `max_attempts` workers died running them.
    pub tasks_failed: u64,
    /// Tasks never finished because the run was interrupted or aborted.
    pub tasks_not_run: u64,
    /// Task sends beyond the first (retries after crashes).
    pub retries: u64,
    /// Workers killed by `--chaos`.
    pub chaos_kills: u64,
    /// Every task that errored or failed, with why.
    pub failures: Vec<TaskFailure>,
    /// Per worker slot.
    pub workers: Vec<WorkerReport>,
    /// Wall time from pool start to the last worker reaped.
    #[serde(rename = "wall_s", serialize_with = "seconds")]
    pub wall: Duration,
    /// CPU time of the supervisor process.
    pub supervisor_cpu: CpuTime,
    /// CPU time of all worker processes together.
    pub workers_cpu: CpuTime,
}

impl PoolReport {
    /// Restarts over all slots.
    pub fn restarts(&self) -> u64 {
        self.workers.iter().map(|w| u64::from(w.restarts)).sum()
    }
}

fn seconds<S: serde::Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(d.as_secs_f64())
}

//! What a run leaves behind: how each worker ended, which tasks did not succeed, and
//! where the time went.

use std::fmt;
use std::time::Duration;

use nix::sys::signal::Signal;
use procpool_child::TaskId;
use serde::Serialize;

/// The signal that ended a process, by number: any signal the kernel delivers, the
/// real-time ones (`SIGRTMIN` to `SIGRTMAX`) included, which nix's [`Signal`] has no
/// variant for.
///
/// It is shown, and serialised, as its name: `SIGSEGV`, `SIGRTMIN+3`, or `signal 99`
/// for a number that is neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExitSignal(i32);

impl ExitSignal {
    /// The signal with this number, as `WTERMSIG` gives it.
    pub fn from_number(number: i32) -> ExitSignal {
        ExitSignal(number)
    }

    /// The signal's number.
    pub fn number(self) -> i32 {
        self.0
    }

    /// The signal as nix names it; `None` for a real-time or unknown signal.
    pub fn as_nix(self) -> Option<Signal> {
        Signal::try_from(self.0).ok()
    }
}

impl From<Signal> for ExitSignal {
    fn from(signal: Signal) -> ExitSignal {
        ExitSignal(signal as i32)
    }
}

impl PartialEq<Signal> for ExitSignal {
    fn eq(&self, signal: &Signal) -> bool {
        self.0 == *signal as i32
    }
}

impl fmt::Display for ExitSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(signal) = self.as_nix() {
            return f.write_str(signal.as_str());
        }
        let realtime = crate::sys::realtime_signals();
        // Counted from SIGRTMIN all the way up, where `kill -l` switches to SIGRTMAX-n
        // halfway: one spelling for every real-time signal, the offset given to it.
        if realtime.contains(&self.0) {
            match self.0 - realtime.start() {
                0 => f.write_str("SIGRTMIN"),
                offset => write!(f, "SIGRTMIN+{offset}"),
            }
        } else {
            write!(f, "signal {}", self.0)
        }
    }
}

/// As its name, the same words as the text messages: `"signal":"SIGSEGV"` in the JSON
/// report.
impl Serialize for ExitSignal {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// How a worker process ended, as `waitpid` tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ExitStatus {
    /// It called `exit` with this code.
    Exited(i32),
    /// A signal ended it.
    Signaled {
        /// The signal, serialised as its name, e.g. `"SIGSEGV"`.
        signal: ExitSignal,
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

    /// Whether `signal` ended the process.
    pub fn killed_by(&self, signal: Signal) -> bool {
        matches!(self, ExitStatus::Signaled { signal: ended_by, .. } if *ended_by == signal)
    }
}

impl From<std::process::ExitStatus> for ExitStatus {
    /// The same words for a child that `std::process` waited for.
    fn from(status: std::process::ExitStatus) -> ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitStatus::Exited(code),
            (None, Some(signal)) => ExitStatus::Signaled {
                signal: ExitSignal::from_number(signal),
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
#[non_exhaustive]
pub enum KillReason {
    /// A task ran past `--task-timeout`.
    TaskTimeout,
    /// The worker never sent `ready` in time.
    ReadyTimeout,
    /// The worker closed its stdout but kept running.
    StdoutClosed,
    /// The worker closed its stdin but kept running: it can be sent nothing.
    StdinClosed,
    /// The worker wrote a stdout line longer than [`PoolConfig::max_line`](crate::PoolConfig::max_line).
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
            KillReason::StdinClosed => "it closed its stdin but kept running",
            KillReason::LineTooLong => "it wrote a stdout line longer than the line bound",
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
    /// For a SIGKILL procpool did not send: whether the kernel says the OOM killer
    /// sent it. `None` where nothing could be read, or for any other end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom: Option<OomCheck>,
}

impl Crash {
    /// A SIGKILL that procpool did not send: another process's, or the OOM killer's.
    pub fn sigkilled_from_outside(&self) -> bool {
        self.killed_by_procpool.is_none() && self.status.killed_by(Signal::SIGKILL)
    }

    /// Whether the kernel log or the memory cgroup's count says the OOM killer did it.
    pub fn oom_killed(&self) -> bool {
        matches!(
            self.oom,
            Some(OomCheck::KernelLog(_) | OomCheck::CgroupCount(_))
        )
    }
}

impl fmt::Display for Crash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker {} (pid {}) {}", self.slot, self.pid, self.status)?;
        if let Some(reason) = self.killed_by_procpool {
            return write!(f, " (sent by procpool: {reason})");
        }
        if !self.sigkilled_from_outside() {
            return Ok(());
        }
        match &self.oom {
            Some(OomCheck::KernelLog(line)) => {
                write!(f, " from the OOM killer (kernel log: {line})")
            }
            Some(OomCheck::CgroupCount(_)) => write!(
                f,
                " from the OOM killer, as far as the memory cgroup tells (its oom_kill count rose)"
            ),
            Some(OomCheck::NotOom(looked_at)) => write!(
                f,
                " (not sent by procpool: another process; no OOM kill in {looked_at})"
            ),
            None => write!(
                f,
                " (not sent by procpool: another process or the OOM killer)"
            ),
        }
    }
}

/// What the kernel says of a SIGKILL that procpool did not send (see
/// [`Crash::oom`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OomCheck {
    /// The kernel log names the worker as the OOM killer's victim: its line, e.g.
    /// `Memory cgroup out of memory: Killed process 4242 (python3)`.
    KernelLog(String),
    /// The `oom_kill` count of the workers' memory cgroup rose (this file): an OOM
    /// kill in that cgroup, most likely this worker's.
    CgroupCount(String),
    /// What was read (the kernel log, the memory cgroup's count) shows no OOM kill
    /// of it: another process sent the SIGKILL.
    NotOom(String),
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
#[non_exhaustive]
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
    /// The supervisor process's peak resident memory so far, in KiB (`VmHWM`).
    pub supervisor_peak_rss_kib: u64,
    /// CPU time of all worker processes together.
    pub workers_cpu: CpuTime,
    /// The pool's cgroup directory, where its workers had cgroups (see
    /// [`PoolConfig::cgroup`](crate::PoolConfig::cgroup)); removed by now.
    pub cgroup: Option<String>,
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

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn signaled(signal: impl Into<ExitSignal>, core_dumped: bool) -> ExitStatus {
        ExitStatus::Signaled {
            signal: signal.into(),
            core_dumped,
        }
    }

    fn crash(status: ExitStatus, killed_by_procpool: Option<KillReason>) -> Crash {
        Crash {
            slot: 1,
            pid: 4242,
            status,
            killed_by_procpool,
            oom: None,
        }
    }

    /// Ends `sh` with the signal of this number, as a worker that crashed.
    fn shell_killed_by(number: i32) -> ExitStatus {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -{number} $$"))
            .status()
            .expect("sh runs");
        ExitStatus::from(status)
    }

    #[test]
    fn signals_are_named_as_kill_names_them() {
        let rtmin = libc::SIGRTMIN();
        let rtmax = libc::SIGRTMAX();
        let names = [
            (libc::SIGSEGV, "SIGSEGV".to_string()),
            (libc::SIGKILL, "SIGKILL".to_string()),
            (libc::SIGSYS, "SIGSYS".to_string()),
            (rtmin, "SIGRTMIN".to_string()),
            (rtmin + 3, "SIGRTMIN+3".to_string()),
            (rtmax, format!("SIGRTMIN+{}", rtmax - rtmin)),
            // Below SIGRTMIN: the C library's own, which nix does not name either.
            (rtmin - 1, format!("signal {}", rtmin - 1)),
            (rtmax + 1, format!("signal {}", rtmax + 1)),
            (99, "signal 99".to_string()),
            (0, "signal 0".to_string()),
        ];
        for (number, name) in names {
            let signal = ExitSignal::from_number(number);
            assert_eq!(signal.to_string(), name, "signal {number}");
            assert_eq!(signal.number(), number);
        }
    }

    #[test]
    fn only_the_signals_nix_names_convert_to_it() {
        assert_eq!(
            ExitSignal::from_number(libc::SIGBUS).as_nix(),
            Some(Signal::SIGBUS)
        );
        assert_eq!(ExitSignal::from(Signal::SIGBUS).number(), libc::SIGBUS);
        assert_eq!(ExitSignal::from_number(libc::SIGRTMIN() + 3).as_nix(), None);
        assert_eq!(ExitSignal::from_number(99).as_nix(), None);
        assert!(ExitSignal::from_number(libc::SIGBUS) == Signal::SIGBUS);
        assert!(ExitSignal::from_number(libc::SIGBUS) != Signal::SIGSEGV);
    }

    #[test]
    fn the_json_report_writes_statuses_as_before() {
        let json = |value: &Crash| serde_json::to_string(value).expect("serialises");
        assert_eq!(
            json(&crash(signaled(Signal::SIGSEGV, false), None)),
            r#"{"slot":1,"pid":4242,"status":{"signaled":{"signal":"SIGSEGV","core_dumped":false}}}"#
        );
        assert_eq!(
            json(&crash(
                signaled(ExitSignal::from_number(libc::SIGRTMIN() + 3), true),
                Some(KillReason::TaskTimeout)
            )),
            r#"{"slot":1,"pid":4242,"status":{"signaled":{"signal":"SIGRTMIN+3","core_dumped":true}},"killed_by_procpool":"task_timeout"}"#
        );
        assert_eq!(
            json(&crash(ExitStatus::Exited(3), None)),
            r#"{"slot":1,"pid":4242,"status":{"exited":3}}"#
        );
        assert_eq!(
            json(&crash(ExitStatus::Unknown, None)),
            r#"{"slot":1,"pid":4242,"status":"unknown"}"#
        );
    }

    #[test]
    fn crash_messages_name_the_signal_and_who_sent_it() {
        let text = |status, reason| crash(status, reason).to_string();
        assert_eq!(
            text(signaled(Signal::SIGSEGV, true), None),
            "worker 1 (pid 4242) killed by SIGSEGV (core dumped)"
        );
        assert_eq!(
            text(signaled(Signal::SIGKILL, false), None),
            "worker 1 (pid 4242) killed by SIGKILL (not sent by procpool: another process or the OOM killer)"
        );
        let outside = |oom| {
            let mut crash = crash(signaled(Signal::SIGKILL, false), None);
            crash.oom = Some(oom);
            assert_eq!(
                crash.oom_killed(),
                !matches!(crash.oom, Some(OomCheck::NotOom(_)))
            );
            crash.to_string()
        };
        assert_eq!(
            outside(OomCheck::KernelLog("Out of memory: Killed process 4242 (w)".into())),
            "worker 1 (pid 4242) killed by SIGKILL from the OOM killer (kernel log: Out of memory: Killed process 4242 (w))"
        );
        assert_eq!(
            outside(OomCheck::CgroupCount("/sys/fs/cgroup/memory.events".into())),
            "worker 1 (pid 4242) killed by SIGKILL from the OOM killer, as far as the memory cgroup tells (its oom_kill count rose)"
        );
        assert_eq!(
            outside(OomCheck::NotOom("the kernel log".into())),
            "worker 1 (pid 4242) killed by SIGKILL (not sent by procpool: another process; no OOM kill in the kernel log)"
        );
        assert_eq!(
            text(signaled(Signal::SIGKILL, false), Some(KillReason::Chaos)),
            "worker 1 (pid 4242) killed by SIGKILL (sent by procpool: chaos)"
        );
        assert_eq!(
            text(signaled(ExitSignal::from_number(99), false), None),
            "worker 1 (pid 4242) killed by signal 99"
        );
    }

    #[test]
    fn only_an_unsent_sigkill_looks_like_the_oom_killer() {
        assert!(crash(signaled(Signal::SIGKILL, false), None).sigkilled_from_outside());
        assert!(
            !crash(signaled(Signal::SIGKILL, false), Some(KillReason::Shutdown))
                .sigkilled_from_outside()
        );
        assert!(!crash(signaled(Signal::SIGTERM, false), None).sigkilled_from_outside());
        assert!(!crash(ExitStatus::Exited(137), None).sigkilled_from_outside());
    }

    #[test]
    fn a_real_process_killed_by_a_signal_reads_typed() {
        let terminated = shell_killed_by(libc::SIGTERM);
        assert!(terminated.killed_by(Signal::SIGTERM), "{terminated:?}");
        assert!(!terminated.killed_by(Signal::SIGKILL), "{terminated:?}");
        assert_eq!(terminated.to_string(), "killed by SIGTERM");

        let realtime = shell_killed_by(libc::SIGRTMIN() + 3);
        assert_eq!(realtime.to_string(), "killed by SIGRTMIN+3");
        assert!(!ExitStatus::Exited(0).killed_by(Signal::SIGTERM));
    }
}

//! A worker slot: the process in it (if any), where it is in its life, the tasks it
//! holds, and what it has done over the run.

use std::collections::VecDeque;
use std::time::Instant;

use procpool_child::TaskId;

use crate::report::{CpuTime, ExitStatus, KillReason};
use crate::worker::WorkerProcess;

/// A worker slot's state, as a status display shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStatus {
    /// The slot, `0..procs`.
    pub slot: usize,
    /// The current (or last) process id.
    pub pid: i32,
    /// `starting`, `idle`, `busy`, `stopping`, `restarting` or `down`.
    pub state: &'static str,
    /// The task it works on now (the oldest it holds).
    pub current_task: Option<TaskId>,
    /// Tasks answered by this slot.
    pub tasks_done: u64,
    /// Restarts of this slot.
    pub restarts: u32,
    /// How the previous process of this slot ended.
    pub last_exit: Option<ExitStatus>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Phase {
    /// Started; waiting for `ready` until the deadline.
    Starting { ready_by: Instant },
    /// Takes tasks.
    Ready,
    /// Has answered `max_tasks_per_child` tasks: gets no more, is stopped when drained.
    Retiring,
    /// `stop` was sent at `since`; an exit now is planned. Past the grace period
    /// the worker is killed.
    Stopping { since: Instant },
    /// No process; restarts at the instant, if any.
    Down { restart_at: Option<Instant> },
}

pub(crate) struct Slot {
    pub(crate) index: usize,
    pub(crate) process: Option<WorkerProcess>,
    pub(crate) phase: Phase,
    /// Tasks sent and not answered, oldest first.
    pub(crate) in_flight: VecDeque<TaskId>,
    /// When the oldest in-flight task became the one the worker is working on.
    pub(crate) busy_since: Instant,
    /// Set when the worker's stdout closed while it was still running.
    pub(crate) stdout_closed_at: Option<Instant>,
    pub(crate) kill_reason: Option<KillReason>,
    pub(crate) started_at: Instant,
    pub(crate) pid: i32,
    pub(crate) tasks_done: u64,
    pub(crate) tasks_this_process: u64,
    pub(crate) restarts: u32,
    /// Replacements of processes retired after `max_tasks_per_child` answers.
    pub(crate) recycled: u32,
    /// The slot is down because its process was retired, not because it died.
    pub(crate) retired: bool,
    pub(crate) young_deaths: u32,
    pub(crate) last_exit: Option<ExitStatus>,
    pub(crate) cpu: CpuTime,
}

impl Slot {
    pub(crate) fn new(index: usize, now: Instant) -> Slot {
        Slot {
            index,
            process: None,
            phase: Phase::Down { restart_at: None },
            in_flight: VecDeque::new(),
            busy_since: now,
            stdout_closed_at: None,
            kill_reason: None,
            started_at: now,
            pid: 0,
            tasks_done: 0,
            tasks_this_process: 0,
            restarts: 0,
            recycled: 0,
            retired: false,
            young_deaths: 0,
            last_exit: None,
            cpu: CpuTime::default(),
        }
    }

    pub(crate) fn record_exit(&mut self, status: ExitStatus, cpu: CpuTime) {
        self.last_exit = Some(status);
        self.cpu += cpu;
    }

    pub(crate) fn status(&self) -> WorkerStatus {
        let state = match self.phase {
            Phase::Starting { .. } => "starting",
            Phase::Ready | Phase::Retiring if self.in_flight.is_empty() => "idle",
            Phase::Ready | Phase::Retiring => "busy",
            Phase::Stopping { .. } => "stopping",
            Phase::Down {
                restart_at: Some(_),
            } => "restarting",
            Phase::Down { restart_at: None } => "down",
        };
        WorkerStatus {
            slot: self.index,
            pid: self.pid,
            state,
            current_task: self.in_flight.front().copied(),
            tasks_done: self.tasks_done,
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
        }
    }
}

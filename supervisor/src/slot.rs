//! A worker slot as a state machine: where its process is in its life (with what that
//! stage needs to know, such as why procpool killed it or when it restarts), the tasks
//! it holds, and what it has done over the run. The slot changes its own state; the
//! core only tells it what happened. No I/O: the process itself lives in the shell.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use procpool_child::TaskId;

use crate::book::Blame;
use crate::report::{CpuTime, Crash, ExitStatus, KillReason};

/// A worker that closed its stdout or stdin but still runs is killed after this long.
pub(crate) const PIPE_CLOSED_LINGER: Duration = Duration::from_secs(1);

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

/// Where a slot's process is in its life.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Life {
    /// Started; killed unless it sends `ready` by the deadline.
    Starting { ready_by: Instant },
    /// Takes tasks.
    Ready,
    /// Has answered `max_tasks_per_child` tasks: gets no more, is stopped when drained.
    Retiring,
    /// `stop` was sent at `since`: its exit is planned.
    Stopping { since: Instant },
    /// procpool killed it; its exit is awaited.
    Killed {
        reason: KillReason,
        was_ready: bool,
        /// It had been sent `stop` first (shutdown past its grace period).
        after_stop: bool,
    },
    /// No process. It restarts at `restart_at`, if set; `retired` when the last
    /// process was replaced as planned rather than lost.
    Down {
        restart_at: Option<Instant>,
        retired: bool,
    },
}

/// A task a worker holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held {
    pub id: TaskId,
    /// The worker said `started` for it.
    pub started: bool,
    /// No other task may be sent beside it.
    pub alone: bool,
    /// How long it may run once it is the oldest in flight; `None`: no deadline.
    pub timeout: Option<Duration>,
}

/// What `answered` found.
pub(crate) struct Answered {
    /// How long the task held the worker's attention, for the dispatch depth.
    pub service: Duration,
    /// The worker retires now: send it `stop`.
    pub stop: bool,
}

/// A process's end, as the slot saw its life.
pub(crate) struct Exit {
    pub pid: i32,
    /// It was told to stop and held no task: nothing went wrong.
    pub planned: bool,
    pub was_ready: bool,
    pub lived: Duration,
    pub kill_reason: Option<KillReason>,
    /// The worker sent `started` for its tasks, so `held` says which were running.
    pub reports_started: bool,
    /// Tasks it held, oldest first.
    pub held: Vec<Held>,
}

impl Exit {
    /// Which of a dead worker's tasks its death is charged to. A worker that says
    /// `started` was running exactly the tasks it started and did not answer; one
    /// that does not runs its tasks in order, so the oldest was running. One running
    /// task is the culprit; several are suspects; a task timeout names the oldest
    /// running task alone; a chaos kill names none.
    pub(crate) fn blames<'a>(&self, crash: &'a Crash) -> Vec<Blame<'a>> {
        // A worker that says `started` but had started nothing died reading its
        // oldest task (a parse crash, say): that one is charged, as without `started`.
        let by_started = self.reports_started && self.held.iter().any(|held| held.started);
        let mut running: Vec<bool> = self
            .held
            .iter()
            .enumerate()
            .map(|(position, held)| match by_started {
                true => held.started,
                false => position == 0,
            })
            .collect();
        if crash.killed_by_procpool == Some(KillReason::StdinClosed) {
            // Its tasks' lines were dropped unwritten or it stopped reading: no task is
            // to blame for a worker that closed its own stdin.
            return vec![Blame::Bystander; self.held.len()];
        }
        if crash.killed_by_procpool == Some(KillReason::TaskTimeout) {
            if let Some(oldest) = running.iter().position(|&is| is) {
                running = (0..running.len()).map(|i| i == oldest).collect();
            }
        }
        let running_count = running.iter().filter(|&&is| is).count();
        running
            .into_iter()
            .map(|is_running| match (is_running, crash.killed_by_procpool) {
                (false, _) => Blame::Bystander,
                (true, Some(KillReason::Chaos)) => Blame::Chaos(crash),
                (true, _) if running_count > 1 => Blame::Suspect(crash),
                (true, _) => Blame::Culprit(crash),
            })
            .collect()
    }
}

pub(crate) struct Slot {
    index: usize,
    life: Life,
    pid: i32,
    started_at: Instant,
    /// Tasks sent and not answered, oldest first.
    in_flight: VecDeque<Held>,
    /// This process has sent `started` at least once.
    reports_started: bool,
    /// When the oldest in-flight task became the one the worker works on.
    busy_since: Instant,
    /// When the worker closed its stdout or stdin (the first), and which.
    pipe_closed: Option<(Instant, KillReason)>,
    tasks_this_process: u64,
    tasks_done: u64,
    restarts: u32,
    recycled: u32,
    /// Consecutive deaths soon after starting, for the backoff.
    young_deaths: u32,
    last_exit: Option<ExitStatus>,
    cpu: CpuTime,
}

impl Slot {
    pub(crate) fn new(index: usize, now: Instant) -> Slot {
        Slot {
            index,
            life: Life::Down {
                restart_at: None,
                retired: false,
            },
            pid: 0,
            started_at: now,
            in_flight: VecDeque::new(),
            reports_started: false,
            busy_since: now,
            pipe_closed: None,
            tasks_this_process: 0,
            tasks_done: 0,
            restarts: 0,
            recycled: 0,
            young_deaths: 0,
            last_exit: None,
            cpu: CpuTime::default(),
        }
    }

    /// A new process runs in the slot.
    pub(crate) fn begin(&mut self, pid: i32, now: Instant, ready_by: Instant) {
        debug_assert!(!self.has_process() && self.in_flight.is_empty());
        self.life = Life::Starting { ready_by };
        self.pid = pid;
        self.started_at = now;
        self.reports_started = false;
        self.pipe_closed = None;
        self.tasks_this_process = 0;
    }

    /// The worker sent `ready`; false when it had already (a protocol slip).
    pub(crate) fn ready(&mut self) -> bool {
        match self.life {
            Life::Starting { .. } => {
                self.life = Life::Ready;
                true
            }
            Life::Ready | Life::Retiring => false,
            // After `stop` or a kill, `ready` changes nothing.
            Life::Stopping { .. } | Life::Killed { .. } | Life::Down { .. } => true,
        }
    }

    /// How many tasks a ready worker holds; `None` when the slot takes no task.
    pub(crate) fn ready_depth(&self) -> Option<usize> {
        (self.life == Life::Ready).then_some(self.in_flight.len())
    }

    /// Whether the slot takes a task now, as the `depth`-th it holds.
    pub(crate) fn takes_task(&self, depth: usize, max_tasks: Option<u64>) -> bool {
        if self.life != Life::Ready || self.in_flight.len() != depth {
            return false;
        }
        if self.in_flight.iter().any(|held| held.alone) {
            return false;
        }
        // A process retiring after `max_tasks_per_child` answers gets no task it would
        // have to answer past that number.
        let promised = self.tasks_this_process + self.in_flight.len() as u64;
        max_tasks.is_none_or(|max| promised < max)
    }

    pub(crate) fn hand(
        &mut self,
        id: TaskId,
        alone: bool,
        timeout: Option<Duration>,
        now: Instant,
    ) {
        if self.in_flight.is_empty() {
            self.busy_since = now;
        }
        self.in_flight.push_back(Held {
            id,
            started: false,
            alone,
            timeout,
        });
    }

    /// The worker began task `id`; false when it holds no such task.
    pub(crate) fn started(&mut self, id: TaskId) -> bool {
        match self.in_flight.iter_mut().find(|held| held.id == id) {
            Some(held) => {
                held.started = true;
                self.reports_started = true;
                true
            }
            None => false,
        }
    }

    /// The worker answered task `id`; `None` when it holds no such task (a late,
    /// duplicate or invented answer).
    pub(crate) fn answered(
        &mut self,
        id: TaskId,
        now: Instant,
        max_tasks: Option<u64>,
    ) -> Option<Answered> {
        let position = self.in_flight.iter().position(|held| held.id == id)?;
        self.in_flight.remove(position);
        let service = now.saturating_duration_since(self.busy_since);
        self.busy_since = now;
        self.tasks_done += 1;
        self.tasks_this_process += 1;
        self.young_deaths = 0;
        if self.life == Life::Ready && max_tasks.is_some_and(|max| self.tasks_this_process >= max) {
            self.life = Life::Retiring;
        }
        let stop = self.life == Life::Retiring && self.in_flight.is_empty();
        if stop {
            self.life = Life::Stopping { since: now };
        }
        Some(Answered { service, stop })
    }

    /// procpool kills the process for `reason`; false when it is already killed or
    /// gone (the first reason stands).
    pub(crate) fn kill(&mut self, reason: KillReason) -> bool {
        let (was_ready, after_stop) = match self.life {
            Life::Starting { .. } => (false, false),
            Life::Ready | Life::Retiring => (true, false),
            Life::Stopping { .. } => (true, true),
            Life::Killed { .. } | Life::Down { .. } => return false,
        };
        self.life = Life::Killed {
            reason,
            was_ready,
            after_stop,
        };
        true
    }

    /// Whether procpool killed the process.
    pub(crate) fn killed_by_procpool(&self) -> bool {
        matches!(self.life, Life::Killed { .. })
    }

    /// Shutdown sends `stop`; returns the tasks it held (they will not be answered
    /// now) and whether there is a process to tell.
    pub(crate) fn stop(&mut self, now: Instant) -> (Vec<TaskId>, bool) {
        let held = self.in_flight.drain(..).map(|held| held.id).collect();
        let alive = match self.life {
            Life::Starting { .. } | Life::Ready | Life::Retiring | Life::Stopping { .. } => {
                self.life = Life::Stopping { since: now };
                true
            }
            Life::Killed { .. } => true,
            Life::Down { .. } => {
                self.life = Life::Down {
                    restart_at: None,
                    retired: false,
                };
                false
            }
        };
        (held, alive)
    }

    /// The process closed a pipe while it may still run: `StdoutClosed` or
    /// `StdinClosed`, the reason it is killed for if it is still there after
    /// [`PIPE_CLOSED_LINGER`].
    pub(crate) fn pipe_closed(&mut self, reason: KillReason, now: Instant) {
        if self.has_process() {
            self.pipe_closed.get_or_insert((now, reason));
        }
    }

    /// Why the process must be killed at `now`, if a deadline passed. `own_grace` is
    /// the grace a stopping worker gets before a kill, when shutdown does not handle it.
    pub(crate) fn overdue(&self, now: Instant, own_grace: Option<Duration>) -> Option<KillReason> {
        match self.life {
            Life::Starting { ready_by } if now >= ready_by => Some(KillReason::ReadyTimeout),
            Life::Stopping { since } if own_grace.is_some_and(|grace| now >= since + grace) => {
                Some(KillReason::Shutdown)
            }
            Life::Killed { .. } | Life::Down { .. } => None,
            _ if self
                .pipe_closed
                .is_some_and(|(at, _)| now >= at + PIPE_CLOSED_LINGER) =>
            {
                self.pipe_closed.map(|(_, reason)| reason)
            }
            _ if self.task_deadline().is_some_and(|deadline| now >= deadline) => {
                Some(KillReason::TaskTimeout)
            }
            _ => None,
        }
    }

    /// The nearest instant at which `overdue` or a restart may come due. A killed
    /// process has nothing due: its death arrives by itself.
    pub(crate) fn next_deadline(&self, own_grace: Option<Duration>) -> Option<Instant> {
        let mut due = match self.life {
            Life::Down { restart_at, .. } => return restart_at,
            Life::Killed { .. } => return None,
            Life::Starting { ready_by } => Some(ready_by),
            Life::Stopping { since } => own_grace.map(|grace| since + grace),
            Life::Ready | Life::Retiring => None,
        };
        let mut consider = |at: Instant| due = Some(due.map_or(at, |due| due.min(at)));
        if let Some((closed, _)) = self.pipe_closed {
            consider(closed + PIPE_CLOSED_LINGER);
        }
        if let Some(deadline) = self.task_deadline() {
            consider(deadline);
        }
        due
    }

    /// When the oldest task in flight runs past its timeout: each answer restarts the
    /// clock for the next one.
    fn task_deadline(&self) -> Option<Instant> {
        let timeout = self.in_flight.front()?.timeout?;
        Some(self.busy_since + timeout)
    }

    /// The process was reaped; the slot is down, not yet scheduled to restart.
    pub(crate) fn exited(&mut self, status: ExitStatus, cpu: CpuTime, now: Instant) -> Exit {
        let (was_ready, kill_reason, stopped) = match self.life {
            Life::Starting { .. } => (false, None, false),
            Life::Ready | Life::Retiring => (true, None, false),
            Life::Stopping { .. } => (true, None, true),
            Life::Killed {
                reason,
                was_ready,
                after_stop,
            } => (was_ready, Some(reason), after_stop),
            Life::Down { .. } => unreachable!("a down slot has no process to exit"),
        };
        self.last_exit = Some(status);
        self.cpu += cpu;
        self.pipe_closed = None;
        self.life = Life::Down {
            restart_at: None,
            retired: false,
        };
        Exit {
            pid: self.pid,
            planned: stopped && self.in_flight.is_empty(),
            was_ready,
            lived: now.saturating_duration_since(self.started_at),
            kill_reason,
            reports_started: self.reports_started,
            held: self.in_flight.drain(..).collect(),
        }
    }

    /// A down slot restarts at `at` (if set); `retired` when its process was replaced
    /// as planned.
    pub(crate) fn schedule(&mut self, at: Option<Instant>, retired: bool) {
        debug_assert!(!self.has_process());
        self.life = Life::Down {
            restart_at: at,
            retired,
        };
    }

    /// Whether a down slot's restart time has come.
    pub(crate) fn restart_due(&self, now: Instant) -> bool {
        matches!(self.life, Life::Down { restart_at: Some(at), .. } if now >= at)
    }

    /// The due restart is being made: it counts as a restart, or as recycling when the
    /// last process retired.
    pub(crate) fn count_restart(&mut self) {
        if let Life::Down { retired, .. } = self.life {
            if retired {
                self.recycled += 1;
            } else {
                self.restarts += 1;
            }
        }
        self.schedule(None, false);
    }

    /// One more death, `young` when soon after starting (or before `ready`); returns
    /// the deaths in a row that were young, for the backoff.
    pub(crate) fn note_death(&mut self, young: bool) -> u32 {
        if young {
            self.young_deaths += 1;
        }
        self.young_deaths
    }

    pub(crate) fn has_process(&self) -> bool {
        !matches!(self.life, Life::Down { .. })
    }

    /// Holds a task and can still be killed for chaos.
    pub(crate) fn busy_and_alive(&self) -> bool {
        !self.in_flight.is_empty()
            && matches!(
                self.life,
                Life::Starting { .. } | Life::Ready | Life::Retiring
            )
    }

    pub(crate) fn held(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.in_flight.iter().map(|held| held.id)
    }

    pub(crate) fn index(&self) -> usize {
        self.index
    }

    pub(crate) fn life(&self) -> Life {
        self.life
    }

    pub(crate) fn report(&self) -> crate::report::WorkerReport {
        crate::report::WorkerReport {
            slot: self.index,
            pid: self.pid,
            tasks_done: self.tasks_done,
            restarts: self.restarts,
            recycled: self.recycled,
            exit: self.last_exit.clone(),
            cpu: self.cpu,
        }
    }

    pub(crate) fn status(&self) -> WorkerStatus {
        let state = match self.life {
            Life::Starting { .. } => "starting",
            Life::Ready | Life::Retiring if self.in_flight.is_empty() => "idle",
            Life::Ready | Life::Retiring | Life::Killed { .. } => "busy",
            Life::Stopping { .. } => "stopping",
            Life::Down {
                restart_at: Some(_),
                ..
            } => "restarting",
            Life::Down {
                restart_at: None, ..
            } => "down",
        };
        WorkerStatus {
            slot: self.index,
            pid: self.pid,
            state,
            current_task: self.in_flight.front().map(|held| held.id),
            tasks_done: self.tasks_done,
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready_slot(now: Instant) -> Slot {
        let mut slot = Slot::new(0, now);
        slot.begin(7, now, now + Duration::from_secs(1));
        assert!(slot.ready());
        slot
    }

    #[test]
    fn a_closed_stdin_is_killed_after_the_linger_and_charges_no_task() {
        let now = Instant::now();
        let mut slot = ready_slot(now);
        slot.hand(1, false, None, now);
        assert!(slot.started(1));
        slot.pipe_closed(KillReason::StdinClosed, now);
        slot.pipe_closed(KillReason::StdoutClosed, now);
        let due = now + PIPE_CLOSED_LINGER;
        assert_eq!(slot.next_deadline(None), Some(due));
        assert_eq!(slot.overdue(now, None), None);
        assert_eq!(
            slot.overdue(due, None),
            Some(KillReason::StdinClosed),
            "the first pipe closed names the kill"
        );
        assert!(slot.kill(KillReason::StdinClosed));
        let exit = slot.exited(ExitStatus::Exited(0), CpuTime::default(), due);
        let crash = Crash {
            slot: 0,
            pid: 7,
            status: ExitStatus::Exited(0),
            killed_by_procpool: Some(KillReason::StdinClosed),
            oom: None,
        };
        assert!(matches!(exit.blames(&crash)[..], [Blame::Bystander]));
    }

    #[test]
    fn a_start_that_never_says_ready_is_overdue() {
        let now = Instant::now();
        let mut slot = Slot::new(0, now);
        slot.begin(7, now, now + Duration::from_secs(1));
        assert_eq!(slot.overdue(now, None), None);
        let later = now + Duration::from_secs(1);
        assert_eq!(slot.overdue(later, None), Some(KillReason::ReadyTimeout));
        assert_eq!(slot.next_deadline(None), Some(later));
        assert!(slot.kill(KillReason::ReadyTimeout));
        assert!(!slot.kill(KillReason::Chaos), "the first reason stands");
        assert_eq!(slot.next_deadline(None), None);
        let exit = slot.exited(ExitStatus::Exited(0), CpuTime::default(), later);
        assert!(!exit.planned && !exit.was_ready);
        assert_eq!(exit.kill_reason, Some(KillReason::ReadyTimeout));
    }

    #[test]
    fn retires_after_max_tasks_and_stops_when_drained() {
        let now = Instant::now();
        let mut slot = ready_slot(now);
        assert!(slot.takes_task(0, Some(2)));
        slot.hand(1, false, None, now);
        assert!(slot.takes_task(1, Some(2)));
        slot.hand(2, false, None, now);
        assert!(!slot.takes_task(2, Some(2)), "no task past the promise");
        assert!(!slot.answered(1, now, Some(2)).unwrap().stop);
        assert!(slot.answered(9, now, Some(2)).is_none());
        assert!(slot.answered(2, now, Some(2)).unwrap().stop);
        assert!(matches!(slot.life(), Life::Stopping { .. }));
        let exit = slot.exited(ExitStatus::Exited(0), CpuTime::default(), now);
        assert!(exit.planned);
        slot.schedule(Some(now), true);
        assert!(slot.restart_due(now));
        slot.count_restart();
        slot.begin(8, now, now);
        assert_eq!((slot.report().recycled, slot.report().restarts), (1, 0));
    }

    #[test]
    fn a_task_run_alone_keeps_others_off_its_worker() {
        let now = Instant::now();
        let mut slot = ready_slot(now);
        slot.hand(1, true, None, now);
        assert!(!slot.takes_task(1, None));
        assert!(slot.started(1));
        assert!(!slot.started(2));
        let exit = slot.exited(ExitStatus::Exited(1), CpuTime::default(), now);
        assert!(exit.reports_started && exit.held[0].started);
        slot.schedule(Some(now), false);
        slot.count_restart();
        slot.begin(9, now, now);
        assert_eq!(slot.report().restarts, 1);
    }

    #[test]
    fn a_killed_stopping_worker_still_ends_as_planned() {
        let now = Instant::now();
        let mut slot = ready_slot(now);
        slot.hand(1, false, None, now);
        let (held, alive) = slot.stop(now);
        assert_eq!((held, alive), (vec![1], true));
        let grace = Some(Duration::from_secs(5));
        assert_eq!(
            slot.overdue(now + Duration::from_secs(5), grace),
            Some(KillReason::Shutdown)
        );
        assert!(slot.kill(KillReason::Shutdown));
        let exit = slot.exited(ExitStatus::Exited(0), CpuTime::default(), now);
        assert!(exit.planned);
    }

    #[test]
    fn the_oldest_task_in_flight_sets_the_deadline_and_an_answer_restarts_the_clock() {
        let now = Instant::now();
        let mut slot = ready_slot(now);
        slot.hand(1, false, Some(Duration::from_secs(10)), now);
        slot.hand(2, false, Some(Duration::from_secs(1)), now);
        slot.hand(3, false, None, now);
        assert_eq!(
            slot.next_deadline(None),
            Some(now + Duration::from_secs(10))
        );
        let answer_at = now + Duration::from_secs(4);
        assert!(slot.answered(1, answer_at, None).is_some());
        assert_eq!(
            slot.next_deadline(None),
            Some(answer_at + Duration::from_secs(1))
        );
        assert_eq!(
            slot.overdue(answer_at + Duration::from_secs(1), None),
            Some(KillReason::TaskTimeout)
        );
        assert!(slot.answered(2, answer_at, None).is_some());
        assert_eq!(slot.next_deadline(None), None, "task 3 has no deadline");
    }
}

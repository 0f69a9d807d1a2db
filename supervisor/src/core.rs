//! The pool's rules without its I/O: what to do when a worker is ready, answers,
//! starts a task, dies or runs late, when Ctrl-C comes, and when the run ends.
//!
//! Like a sans-I/O protocol state machine, the core is fed what happened (with the
//! time it happened) and says what to do next: [`Command`]s for the shell to carry out
//! on processes, [`Event`]s for the caller, and the next instant it wants to be woken
//! at. It makes no system call and reads no clock, so every rule runs in unit and
//! property tests (`core/tests.rs`) without a process.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use procpool_child::TaskId;
use serde_json::Value;

use crate::book::TaskBook;
use crate::config::{PoolConfig, TaskOptions, QUEUED_WORK_TARGET};
use crate::event::{AbortReason, Event, TaskOutcome};
use crate::report::{CpuTime, Crash, ExitStatus, KillReason, OomCheck, PoolReport, RunEnd};
use crate::restart::{backoff, RestartBudget, RestartPolicy};
use crate::slot::{Exit, Life, Slot, WorkerStatus};

#[cfg(test)]
mod tests;

/// A worker that dies sooner than this after starting counts as dying young (backoff).
const YOUNG: Duration = Duration::from_secs(1);
/// A slot whose workers die before `ready` this many times in a row, when no worker
/// has ever been ready, means the command cannot work: give up at once.
const DEAD_ON_ARRIVAL_LIMIT: u32 = 3;

/// The numbers of a [`PoolConfig`] that the rules need.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub procs: usize,
    pub prefetch: usize,
    pub max_attempts: u32,
    pub restart: RestartPolicy,
    pub task_timeout: Option<Duration>,
    pub ready_timeout: Duration,
    pub max_tasks_per_child: Option<u64>,
    pub grace: Duration,
    pub chaos: Option<f64>,
    pub tick: Option<Duration>,
}

impl Settings {
    pub(crate) fn of(config: &PoolConfig) -> Settings {
        Settings {
            procs: config.procs,
            prefetch: config.prefetch,
            max_attempts: config.max_attempts,
            restart: config.restart.clone(),
            task_timeout: config.task_timeout,
            ready_timeout: config.ready_timeout,
            max_tasks_per_child: config.max_tasks_per_child,
            grace: config.grace,
            chaos: config.chaos,
            tick: config.tick,
        }
    }
}

/// What the shell must do to a slot's process.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Command {
    /// Start a process in the slot, then report [`Core::spawned`] or [`Core::spawn_failed`].
    Spawn { slot: usize },
    /// Write this line to the worker's stdin.
    Send { slot: usize, line: Vec<u8> },
    /// Send `stop` and close its stdin.
    Stop { slot: usize },
    /// Signal its process group.
    Signal { slot: usize, signal: Signal },
    /// Log this line as the slot's.
    Log { slot: usize, line: String },
}

/// What the pool is doing about the end of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ending {
    Running,
    /// Interrupted: no dispatch; in-flight tasks finish by the deadline.
    Draining {
        deadline: Instant,
    },
    /// Shutdown: `stop` sent; SIGTERM at `term_at` (once), SIGKILL at `kill_at`.
    Stopping {
        term_at: Instant,
        kill_at: Instant,
        termed: bool,
    },
}

/// The pool's state and rules; see the module documentation.
pub(crate) struct Core {
    settings: Settings,
    slots: Vec<Slot>,
    book: TaskBook,
    budget: RestartBudget,
    ending: Ending,
    interrupts: usize,
    aborted: Option<AbortReason>,
    /// Moving average of task service time in seconds, once one was measured.
    task_seconds: Option<f64>,
    any_ready: bool,
    next_tick: Option<Instant>,
    next_chaos: Option<Instant>,
    /// A chaos kill came due while no worker held a task: the next dispatch makes it,
    /// so that chaos kills at its rate even when tasks are short.
    chaos_pending: bool,
    chaos_kills: u64,
    /// xorshift64 state: jitter and chaos victims.
    entropy: u64,
    events: VecDeque<Event>,
    commands: VecDeque<Command>,
}

impl Core {
    /// A pool of `settings.procs` slots, each to be started (the first commands).
    pub(crate) fn new(settings: Settings, now: Instant, seed: u64) -> Core {
        let mut core = Core {
            slots: (0..settings.procs)
                .map(|index| Slot::new(index, now))
                .collect(),
            book: TaskBook::new(settings.max_attempts),
            budget: RestartBudget::new(),
            ending: Ending::Running,
            interrupts: 0,
            aborted: None,
            task_seconds: None,
            any_ready: false,
            next_tick: settings.tick.map(|tick| now + tick),
            next_chaos: None,
            chaos_pending: false,
            chaos_kills: 0,
            entropy: seed | 1,
            events: VecDeque::new(),
            commands: (0..settings.procs)
                .map(|slot| Command::Spawn { slot })
                .collect(),
            settings,
        };
        core.next_chaos = core
            .settings
            .chaos
            .map(|rate| now + core.chaos_interval(rate));
        core
    }

    /// Adds a task; a task put after an interrupt or an abort is not run.
    pub(crate) fn put(&mut self, input: impl Into<Arc<Value>>, options: TaskOptions) -> TaskId {
        let id = self.book.put(input, options);
        if !self.running() {
            self.book.abandon_waiting();
        }
        id
    }

    /// Ends task `id` as not run if no worker has it yet; see [`TaskBook::cancel`].
    pub(crate) fn cancel(&mut self, id: TaskId) -> bool {
        self.book.cancel(id)
    }

    pub(crate) fn spawned(&mut self, slot: usize, pid: i32, now: Instant) {
        self.slots[slot].begin(pid, now, now + self.settings.ready_timeout);
        self.events.push_back(Event::WorkerStarted { slot, pid });
    }

    /// A restart could not create its process (EAGAIN at a process limit, say). That
    /// may pass: the slot is tried again after the backoff, each try spent from the
    /// restart budget, while the other workers go on; past the budget the run stops.
    pub(crate) fn spawn_failed(&mut self, slot: usize, error: String, now: Instant) {
        let young_deaths = self.slots[slot].note_death(true);
        if !self.running() {
            return;
        }
        if !self.budget.allow(&self.settings.restart, now) {
            self.abort(AbortReason::CannotRestart { slot, error });
            return;
        }
        let entropy = self.random();
        let delay = backoff(&self.settings.restart, young_deaths, entropy);
        self.slots[slot].schedule(Some(now + delay), false);
        self.log(
            slot,
            format!(
                "procpool: cannot start worker {slot}: {error}; retrying in {} ms",
                delay.as_millis()
            ),
        );
    }

    pub(crate) fn ready(&mut self, slot: usize) {
        if !self.slots[slot].ready() {
            self.log(slot, "procpool: warning: a second `ready` ignored".into());
        }
        self.any_ready |= self.slots[slot].life() == Life::Ready;
    }

    pub(crate) fn started(&mut self, slot: usize, id: TaskId) {
        if !self.slots[slot].started(id) {
            self.log(
                slot,
                format!(
                    "procpool: warning: ignored `started` for task {id}, which it does not hold"
                ),
            );
        }
    }

    pub(crate) fn answered(&mut self, slot: usize, id: TaskId, outcome: TaskOutcome, now: Instant) {
        let max_tasks = self.settings.max_tasks_per_child;
        let Some(answered) = self.slots[slot].answered(id, now, max_tasks) else {
            let why = match self.book.was_put(id) {
                true => "a late or duplicate answer",
                false => "an answer to a task it was never given",
            };
            self.log(
                slot,
                format!("procpool: warning: dropped {why} (task {id})"),
            );
            return;
        };
        let sample = answered.service.as_secs_f64();
        self.task_seconds = Some(match self.task_seconds {
            None => sample,
            Some(average) => 0.9 * average + 0.1 * sample,
        });
        if answered.stop {
            self.commands.push_back(Command::Stop { slot });
        }
        self.budget.progress();
        let event = self.book.answered(id, slot, outcome);
        self.events.push_back(event);
    }

    /// The worker's stdout reached its end while the process may still run.
    pub(crate) fn stdout_closed(&mut self, slot: usize, now: Instant) {
        self.slots[slot].pipe_closed(KillReason::StdoutClosed, now);
    }

    /// A write to the worker's stdin failed (EPIPE: it closed its stdin) while the
    /// process may still run: what was queued for it is gone, so it is killed after
    /// the same linger as a closed stdout, and its tasks are retried uncharged.
    pub(crate) fn stdin_closed(&mut self, slot: usize, now: Instant) {
        self.slots[slot].pipe_closed(KillReason::StdinClosed, now);
    }

    /// procpool kills a slot's process for `reason` (unless it already did).
    pub(crate) fn kill(&mut self, slot: usize, reason: KillReason) {
        if self.slots[slot].kill(reason) {
            self.commands.push_back(Command::Signal {
                slot,
                signal: Signal::SIGKILL,
            });
        }
    }

    /// Whether procpool killed the slot's process (so the kernel need not be asked
    /// who sent a SIGKILL).
    pub(crate) fn killed_by_procpool(&self, slot: usize) -> bool {
        self.slots[slot].killed_by_procpool()
    }

    /// A slot's process was reaped; `oom` is what the kernel said of a SIGKILL that
    /// procpool did not send.
    pub(crate) fn exited(
        &mut self,
        slot: usize,
        status: ExitStatus,
        cpu: CpuTime,
        oom: Option<OomCheck>,
        now: Instant,
    ) {
        let exit = self.slots[slot].exited(status.clone(), cpu, now);
        let mut crash = Crash {
            slot,
            pid: exit.pid,
            status,
            killed_by_procpool: exit.kill_reason,
            oom: None,
        };
        if crash.sigkilled_from_outside() {
            crash.oom = oom;
        }
        let retired = exit.planned && crash.status.success();
        let restart_in = if retired {
            // A recycled worker (max tasks per child) is replaced straight away.
            self.running().then_some(Duration::ZERO)
        } else {
            self.plan_restart(slot, &crash, &exit, now)
        };
        self.slots[slot].schedule(restart_in.map(|delay| now + delay), retired);
        // Retries go to the front of the queue one by one: last first keeps their order.
        let mut tasks = Vec::with_capacity(exit.held.len());
        let mut ended = Vec::new();
        let blames = exit.blames(&crash);
        for (held, blame) in exit.held.iter().zip(blames).rev() {
            let (lost, end) = self.book.lost(held.id, slot, blame);
            tasks.push(lost);
            ended.extend(end);
        }
        tasks.reverse();
        ended.reverse();
        if !self.running() {
            self.book.abandon_waiting();
        }
        if !exit.planned {
            self.events.push_back(Event::WorkerDied {
                crash,
                tasks,
                restart_in,
                was_ready: exit.was_ready,
            });
        }
        self.events.extend(ended);
    }

    /// SIGINT or SIGTERM: the first stops dispatch and lets running tasks finish within
    /// the grace period; the second kills the workers.
    pub(crate) fn interrupt(&mut self, now: Instant) {
        self.interrupts += 1;
        let again = self.interrupts > 1;
        if again {
            self.kill_all(KillReason::Shutdown);
        } else if self.ending == Ending::Running {
            self.book.abandon_waiting();
            self.ending = Ending::Draining {
                deadline: now + self.settings.grace,
            };
        }
        self.events.push_back(Event::Interrupted { again });
    }

    /// Shutdown: tasks not finished are not run; every worker is sent `stop`, then
    /// SIGTERM after the grace period, then SIGKILL after another.
    pub(crate) fn shutdown(&mut self, now: Instant) {
        self.book.abandon_waiting();
        for index in 0..self.slots.len() {
            let (held, alive) = self.slots[index].stop(now);
            for id in held {
                self.book.abandon(id);
            }
            if alive {
                self.commands.push_back(Command::Stop { slot: index });
            }
        }
        self.ending = Ending::Stopping {
            term_at: now + self.settings.grace,
            kill_at: now + self.settings.grace * 2,
            termed: false,
        };
    }

    /// Sends waiting tasks to ready workers, the emptiest first, then makes a pending
    /// chaos kill.
    pub(crate) fn dispatch(&mut self, now: Instant) {
        if self.running() {
            self.send_tasks(now);
        }
        if self.chaos_pending && self.chaos_kill() {
            self.chaos_pending = false;
        }
    }

    fn send_tasks(&mut self, now: Instant) {
        let max_tasks = self.settings.max_tasks_per_child;
        // No slot takes a task at a depth below the shallowest ready one: start there,
        // so a turn with full workers costs one pass over the slots, not `prefetch`.
        let Some(shallowest) = self.slots.iter().filter_map(Slot::ready_depth).min() else {
            return;
        };
        for depth in shallowest..self.dispatch_depth() {
            for slot in &mut self.slots {
                if !slot.takes_task(depth, max_tasks) {
                    continue;
                }
                match self.book.next_runs_alone() {
                    None => return,
                    // A suspect goes only to a worker that holds nothing else.
                    Some(true) if depth > 0 => continue,
                    Some(_) => {}
                }
                let task = self.book.take().expect("a task waits");
                let timeout = task.timeout.or(self.settings.task_timeout);
                let deadline_ms = timeout.map(|timeout| timeout.as_millis() as u64);
                let line =
                    procpool_child::encode_task(task.id, task.attempt, task.input, deadline_ms);
                slot.hand(task.id, task.alone, timeout, now);
                self.commands.push_back(Command::Send {
                    slot: slot.index(),
                    line,
                });
            }
        }
    }

    /// Tasks to keep in flight per worker: enough measured work to cover
    /// [`QUEUED_WORK_TARGET`], between 1 and `prefetch`; 1 until a task was timed, so
    /// that the first worker to be ready does not take the tasks meant for the others.
    fn dispatch_depth(&self) -> usize {
        let wanted = match self.task_seconds {
            None => 1.0,
            Some(seconds) => (QUEUED_WORK_TARGET.as_secs_f64() / seconds.max(1e-9)).ceil(),
        };
        (wanted.min(self.settings.prefetch as f64) as usize).max(1)
    }

    /// Acts on every deadline that has come by `now`.
    pub(crate) fn on_time(&mut self, now: Instant) {
        let own_grace = self.own_grace();
        for index in 0..self.slots.len() {
            if let Some(reason) = self.slots[index].overdue(now, own_grace) {
                self.kill(index, reason);
            }
            if self.slots[index].restart_due(now) {
                if self.running() {
                    self.slots[index].count_restart();
                    self.commands.push_back(Command::Spawn { slot: index });
                } else {
                    self.slots[index].schedule(None, false);
                }
            }
        }
        match self.ending {
            Ending::Running => {}
            Ending::Draining { deadline } if now >= deadline => self.kill_all(KillReason::Shutdown),
            Ending::Draining { .. } => {}
            Ending::Stopping { kill_at, .. } if now >= kill_at => {
                self.kill_all(KillReason::Shutdown)
            }
            Ending::Stopping {
                term_at,
                kill_at,
                termed: false,
            } if now >= term_at => {
                for slot in self.slots.iter().filter(|slot| slot.has_process()) {
                    self.commands.push_back(Command::Signal {
                        slot: slot.index(),
                        signal: Signal::SIGTERM,
                    });
                }
                self.ending = Ending::Stopping {
                    term_at,
                    kill_at,
                    termed: true,
                };
            }
            Ending::Stopping { .. } => {}
        }
        if self.next_tick.is_some_and(|at| now >= at) {
            self.events.push_back(Event::Tick);
            self.next_tick = self.settings.tick.map(|tick| now + tick);
        }
        if let (Some(at), Some(rate)) = (self.next_chaos, self.settings.chaos) {
            if now >= at {
                if !self.chaos_kill() {
                    self.chaos_pending = true;
                }
                self.next_chaos = Some(now + self.chaos_interval(rate));
            }
        }
    }

    /// The nearest instant at which something is due, leaving out deadlines already
    /// acted on so that the loop never spins on a past instant.
    pub(crate) fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let own_grace = self.own_grace();
        let slots = self
            .slots
            .iter()
            .filter_map(|slot| slot.next_deadline(own_grace));
        let ending = match self.ending {
            Ending::Running => [None, None],
            Ending::Draining { deadline } => [(deadline > now).then_some(deadline), None],
            Ending::Stopping {
                term_at,
                kill_at,
                termed,
            } => [
                (!termed).then_some(term_at),
                (kill_at > now).then_some(kill_at),
            ],
        };
        slots
            .chain(ending.into_iter().flatten())
            .chain(self.next_tick)
            .chain(self.next_chaos)
            .min()
    }

    /// The grace a stopping (recycled) worker gets before it is killed, while the run
    /// goes on; shutdown has its own SIGTERM-then-SIGKILL schedule.
    fn own_grace(&self) -> Option<Duration> {
        (self.ending == Ending::Running).then_some(self.settings.grace)
    }

    /// Whether and when a slot whose worker died unplanned restarts; aborts the run
    /// when the restart policy says so.
    fn plan_restart(
        &mut self,
        slot: usize,
        crash: &Crash,
        exit: &Exit,
        now: Instant,
    ) -> Option<Duration> {
        if !self.running() {
            return None;
        }
        let young_deaths = self.slots[slot].note_death(exit.lived < YOUNG || !exit.was_ready);
        if !exit.was_ready && !self.any_ready && young_deaths >= DEAD_ON_ARRIVAL_LIMIT {
            self.abort(AbortReason::DeadOnArrival {
                last: crash.clone(),
                deaths: young_deaths,
            });
            return None;
        }
        // Kills that procpool chose for testing do not spend the restart budget.
        if crash.killed_by_procpool != Some(KillReason::Chaos)
            && !self.budget.allow(&self.settings.restart, now)
        {
            self.abort(AbortReason::RestartIntensity {
                intensity: self.settings.restart.intensity,
                period: self.settings.restart.period,
                last: crash.clone(),
            });
            return None;
        }
        let entropy = self.random();
        Some(backoff(&self.settings.restart, young_deaths, entropy))
    }

    fn kill_all(&mut self, reason: KillReason) {
        for index in 0..self.slots.len() {
            self.kill(index, reason);
        }
    }

    /// SIGKILLs a random worker that holds a task; false if none does. Never once the
    /// run is ending: tasks let finish after Ctrl-C are left to finish.
    fn chaos_kill(&mut self) -> bool {
        if self.ending != Ending::Running {
            return false;
        }
        let busy: Vec<usize> = self
            .slots
            .iter()
            .filter(|slot| {
                slot.busy_and_alive() && !slot.held().any(|id| self.book.spared_by_chaos(id))
            })
            .map(Slot::index)
            .collect();
        if busy.is_empty() {
            return false;
        }
        let victim = busy[(self.random() % busy.len() as u64) as usize];
        self.kill(victim, KillReason::Chaos);
        self.chaos_kills += 1;
        true
    }

    /// The gap between chaos kills: `1 / rate` seconds on average, ±50%.
    fn chaos_interval(&mut self, rate: f64) -> Duration {
        let jitter = 0.5 + (self.random() % 1000) as f64 / 1000.0;
        Duration::from_secs_f64(jitter / rate.max(1e-6))
    }

    /// xorshift64: enough randomness for jitter and chaos, without a dependency.
    fn random(&mut self) -> u64 {
        let mut x = self.entropy;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.entropy = x;
        x
    }

    fn abort(&mut self, reason: AbortReason) {
        if self.aborted.is_none() {
            self.aborted = Some(reason);
            self.book.abandon_waiting();
            self.kill_all(KillReason::Shutdown);
        }
    }

    fn log(&mut self, slot: usize, line: String) {
        self.commands.push_back(Command::Log { slot, line });
    }

    /// Neither interrupted, shutting down nor aborted: tasks are dispatched and lost
    /// ones retried.
    pub(crate) fn running(&self) -> bool {
        self.ending == Ending::Running && self.aborted.is_none()
    }

    pub(crate) fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub(crate) fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    pub(crate) fn clear_events(&mut self) {
        self.events.clear();
    }

    pub(crate) fn aborted(&self) -> Option<&AbortReason> {
        self.aborted.as_ref()
    }

    pub(crate) fn interrupted(&self) -> bool {
        self.interrupts > 0
    }

    pub(crate) fn book(&self) -> &TaskBook {
        &self.book
    }

    pub(crate) fn any_process(&self) -> bool {
        self.slots.iter().any(Slot::has_process)
    }

    pub(crate) fn workers(&self) -> Vec<WorkerStatus> {
        self.slots.iter().map(Slot::status).collect()
    }

    /// The run report, with the times only the shell can measure.
    pub(crate) fn report(
        &self,
        wall: Duration,
        supervisor_cpu: CpuTime,
        supervisor_peak_rss_kib: u64,
    ) -> PoolReport {
        let end = match (&self.aborted, self.interrupts) {
            (Some(reason), _) => RunEnd::Aborted(reason.clone()),
            (None, 0) => RunEnd::Completed,
            (None, _) => RunEnd::Interrupted,
        };
        let workers: Vec<_> = self.slots.iter().map(Slot::report).collect();
        let mut workers_cpu = CpuTime::default();
        for worker in &workers {
            workers_cpu += worker.cpu;
        }
        let counts = self.book.counts();
        PoolReport {
            end,
            tasks_total: self.book.total(),
            tasks_ok: counts.ok,
            tasks_error: counts.error,
            tasks_failed: counts.failed,
            tasks_not_run: counts.not_run,
            retries: counts.retries,
            chaos_kills: self.chaos_kills,
            failures: self.book.failures().to_vec(),
            workers,
            wall,
            supervisor_cpu,
            supervisor_peak_rss_kib,
            workers_cpu,
            cgroup: None,
        }
    }
}

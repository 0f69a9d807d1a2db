//! The core's rules, run against simulated workers on a simulated clock: named cases
//! for each rule, then a property test over random interleavings of everything that
//! can happen to a pool.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use procpool_child::{decode_line, TaskId, ToWorker};
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::event::{Charge, LostTask};

fn settings(procs: usize) -> Settings {
    Settings {
        procs,
        prefetch: 4,
        max_attempts: 3,
        restart: RestartPolicy {
            intensity: 4,
            period: Duration::from_secs(3600),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(40),
        },
        task_timeout: None,
        ready_timeout: Duration::from_secs(5),
        max_tasks_per_child: None,
        grace: Duration::from_secs(1),
        chaos: None,
        tick: None,
    }
}

/// A simulated worker process.
#[derive(Debug)]
struct Process {
    ready: bool,
    /// Tasks received and not answered, oldest first.
    inbox: VecDeque<TaskId>,
    /// Those it said `started` for.
    started: BTreeSet<TaskId>,
    /// It has said `started` at least once.
    reports_started: bool,
}

impl Process {
    /// The tasks it is running: those it started, or, if it never says `started`,
    /// the oldest it holds (a worker that runs tasks in order).
    fn running(&self) -> Vec<TaskId> {
        let started: Vec<TaskId> = self
            .inbox
            .iter()
            .copied()
            .filter(|id| self.started.contains(id))
            .collect();
        // Having started none, it is reading the oldest.
        match self.reports_started && !started.is_empty() {
            true => started,
            false => self.inbox.front().copied().into_iter().collect(),
        }
    }
}

/// The core, simulated workers, and everything observed, checked as it happens.
struct Sim {
    core: Core,
    settings: Settings,
    now: Instant,
    processes: Vec<Option<Process>>,
    next_pid: i32,
    put: u64,
    /// Every task that ended, with how.
    ended: HashMap<TaskId, &'static str>,
    /// The tasks the process that just died was running, to check the charges against.
    dying: Option<Vec<TaskId>>,
    /// Suspects of an ambiguous death not yet ended: each must run alone.
    suspects: BTreeSet<TaskId>,
    /// Restarts after deaths not caused by chaos since the last answer.
    restarts_without_answer: u32,
    interrupted: bool,
    /// New workers send `ready` as soon as they start.
    eager_ready: bool,
    /// The next this many spawns fail (a process limit), as only restarts can.
    failing_spawns: u32,
    events: Vec<Event>,
}

impl Sim {
    fn new(settings: Settings, seed: u64) -> Sim {
        let now = Instant::now();
        let mut sim = Sim {
            core: Core::new(settings.clone(), now, seed),
            processes: (0..settings.procs).map(|_| None).collect(),
            settings,
            now,
            next_pid: 100,
            put: 0,
            ended: HashMap::new(),
            dying: None,
            suspects: BTreeSet::new(),
            restarts_without_answer: 0,
            interrupted: false,
            eager_ready: false,
            failing_spawns: 0,
            events: Vec::new(),
        };
        sim.settle();
        sim
    }

    /// What the shell does after each input: deadlines due now, dispatch, commands
    /// carried out and events handed over, until the core is quiet.
    fn settle(&mut self) {
        for _ in 0..100 {
            self.core.on_time(self.now);
            self.core.dispatch(self.now);
            self.observe();
            let Some(command) = self.core.poll_command() else {
                return;
            };
            self.carry_out(command);
            while let Some(command) = self.core.poll_command() {
                self.carry_out(command);
            }
            self.observe();
        }
        panic!("the core never settles");
    }

    fn carry_out(&mut self, command: Command) {
        match command {
            Command::Spawn { slot } if self.failing_spawns > 0 => {
                self.failing_spawns -= 1;
                assert!(self.processes[slot].is_none(), "spawn over a live process");
                self.core.spawn_failed(slot, "EAGAIN".into(), self.now);
                // A failed try spends the restart budget like a restart.
                match self.core.aborted() {
                    Some(AbortReason::CannotRestart { .. }) => assert_eq!(
                        self.restarts_without_answer, self.settings.restart.intensity,
                        "gave up before the budget was spent"
                    ),
                    _ if self.core.aborted().is_none() => self.restarts_without_answer += 1,
                    _ => {}
                }
            }
            Command::Spawn { slot } => {
                assert!(self.processes[slot].is_none(), "spawn over a live process");
                self.next_pid += 1;
                self.processes[slot] = Some(Process {
                    ready: false,
                    inbox: VecDeque::new(),
                    started: BTreeSet::new(),
                    reports_started: false,
                });
                self.core.spawned(slot, self.next_pid, self.now);
                if self.eager_ready {
                    self.processes[slot].as_mut().unwrap().ready = true;
                    self.core.ready(slot);
                }
            }
            Command::Send { slot, line } => {
                assert!(!self.interrupted, "a task sent after an interrupt");
                let Ok(ToWorker::Task(task)) = decode_line::<ToWorker>(&line) else {
                    panic!("not a task line: {line:?}");
                };
                assert!(!self.ended.contains_key(&task.id), "an ended task sent");
                for other in self.processes.iter().flatten() {
                    assert!(!other.inbox.contains(&task.id), "a task in two places");
                }
                let process = self.processes[slot].as_mut().expect("send to a process");
                assert!(process.ready, "a task sent before `ready`");
                if self.suspects.contains(&task.id) {
                    assert!(
                        process.inbox.is_empty(),
                        "a suspect sent beside another task"
                    );
                }
                if let Some(&front) = process.inbox.front() {
                    assert!(
                        !self.suspects.contains(&front),
                        "a task sent beside a suspect"
                    );
                }
                process.inbox.push_back(task.id);
            }
            Command::Stop { slot } => {
                if self.processes[slot].is_some() {
                    self.exit(slot, ExitStatus::Exited(0));
                }
            }
            Command::Signal { slot, .. } => {
                if self.processes[slot].is_some() {
                    self.exit(slot, ExitStatus::Exited(137));
                }
            }
            Command::Log { .. } => {}
        }
    }

    fn exit(&mut self, slot: usize, status: ExitStatus) {
        self.exit_with(slot, status, None);
    }

    /// An exit the shell found the kernel's word `oom` for.
    fn exit_with(&mut self, slot: usize, status: ExitStatus, oom: Option<OomCheck>) {
        let process = self.processes[slot].take().expect("a live process exits");
        self.dying = Some(process.running());
        self.core
            .exited(slot, status, CpuTime::default(), oom, self.now);
        self.observe();
        self.dying = None;
    }

    fn observe(&mut self) {
        while let Some(event) = self.core.poll_event() {
            self.check(&event);
            self.events.push(event);
        }
    }

    fn check(&mut self, event: &Event) {
        match event {
            Event::Task { id, outcome, .. } => {
                let fate = match outcome {
                    TaskOutcome::Output(_) => "ok",
                    TaskOutcome::Error(_) => "error",
                    TaskOutcome::Failed(_) => "failed",
                };
                assert!(*id < self.put, "an event for a task never put");
                let before = self.ended.insert(*id, fate);
                assert!(before.is_none(), "task {id} ended twice");
                self.suspects.remove(id);
                if fate != "failed" {
                    self.restarts_without_answer = 0;
                }
            }
            Event::WorkerDied {
                crash,
                tasks,
                restart_in,
                ..
            } => {
                let running = self.dying.clone().expect("a death event after a death");
                let timeout = crash.killed_by_procpool == Some(KillReason::TaskTimeout);
                for LostTask { id, charge, .. } in tasks {
                    match charge {
                        Charge::Counted { count } => {
                            // A timeout names the oldest running task; other deaths
                            // count only when one task was running.
                            match crash.killed_by_procpool {
                                Some(KillReason::TaskTimeout) => {
                                    assert_eq!(running.first(), Some(id))
                                }
                                _ => assert_eq!(
                                    running,
                                    vec![*id],
                                    "charged a death it did not run in"
                                ),
                            }
                            assert!(*count <= self.settings.max_attempts);
                        }
                        Charge::Suspect => {
                            assert!(running.len() > 1 && running.contains(id));
                            self.suspects.insert(*id);
                        }
                        Charge::Chaos => assert!(running.contains(id)),
                        // Tasks running beside the one that timed out go back free.
                        Charge::Waiting => assert!(timeout || !running.contains(id)),
                    }
                }
                let counts = crash.killed_by_procpool != Some(KillReason::Chaos);
                if restart_in.is_some() && counts {
                    self.restarts_without_answer += 1;
                    assert!(
                        self.restarts_without_answer <= self.settings.restart.intensity,
                        "more restarts without an answer than the intensity"
                    );
                }
                let gave_up = matches!(
                    self.core.aborted(),
                    Some(AbortReason::RestartIntensity { last, .. }) if last == crash
                );
                if gave_up {
                    assert_eq!(
                        self.restarts_without_answer, self.settings.restart.intensity,
                        "gave up before the budget was spent"
                    );
                }
            }
            Event::Interrupted { .. } | Event::WorkerStarted { .. } | Event::Tick => {}
            Event::InputReady => panic!("the core has no input"),
        }
    }

    fn put(&mut self) -> TaskId {
        self.put_with(TaskOptions::default())
    }

    fn put_with(&mut self, options: TaskOptions) -> TaskId {
        let id = self.core.put(json!(self.put), options);
        assert_eq!(id, self.put);
        self.put += 1;
        self.settle();
        id
    }

    fn ready(&mut self, slot: usize) {
        if let Some(process) = &mut self.processes[slot] {
            process.ready = true;
            self.core.ready(slot);
            self.settle();
        }
    }

    /// The worker starts the `pick`-th task it holds and has not started.
    fn start(&mut self, slot: usize, pick: usize) {
        let Some(process) = &mut self.processes[slot] else {
            return;
        };
        let waiting: Vec<TaskId> = process
            .inbox
            .iter()
            .copied()
            .filter(|id| !process.started.contains(id))
            .collect();
        if waiting.is_empty() {
            return;
        }
        let id = waiting[pick % waiting.len()];
        process.started.insert(id);
        process.reports_started = true;
        self.core.started(slot, id);
        self.settle();
    }

    /// The worker answers one of the tasks it runs.
    fn answer(&mut self, slot: usize, pick: usize, ok: bool) {
        let Some(process) = &mut self.processes[slot] else {
            return;
        };
        let running = process.running();
        if running.is_empty() {
            return;
        }
        let id = running[pick % running.len()];
        process.inbox.retain(|&held| held != id);
        process.started.remove(&id);
        let outcome = match ok {
            true => TaskOutcome::Output(json!(id)),
            false => TaskOutcome::Error("no".into()),
        };
        self.core.answered(slot, id, outcome, self.now);
        self.settle();
    }

    /// The worker answers a task it does not hold: nothing may end.
    fn stray_answer(&mut self, slot: usize, id: TaskId) {
        let holds = self.processes[slot]
            .as_ref()
            .is_some_and(|process| process.inbox.contains(&id));
        if holds {
            return;
        }
        let ended = self.ended.len();
        self.core
            .answered(slot, id, TaskOutcome::Output(json!(null)), self.now);
        self.settle();
        assert_eq!(self.ended.len(), ended, "a stray answer ended a task");
    }

    fn die(&mut self, slot: usize) {
        if self.processes[slot].is_some() {
            self.exit(slot, ExitStatus::Exited(139));
            self.settle();
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.core.on_time(self.now);
        self.settle();
    }

    fn interrupt(&mut self) {
        self.interrupted = true;
        self.core.interrupt(self.now);
        self.settle();
    }

    /// Shuts down as the shell does, and checks the end: every task ended exactly once
    /// or was not run, and the report's counts agree with the events.
    fn finish(mut self) -> PoolReport {
        let joined = self.core.book().is_joined();
        self.core.shutdown(self.now);
        self.settle();
        for _ in 0..4 {
            if !self.core.any_process() {
                break;
            }
            self.advance(self.settings.grace);
        }
        assert!(!self.core.any_process(), "processes left after shutdown");
        let report = self.core.report(Duration::ZERO, CpuTime::default(), 0);
        let count = |fate: &str| self.ended.values().filter(|f| **f == fate).count() as u64;
        assert_eq!(report.tasks_total, self.put);
        assert_eq!(report.tasks_ok, count("ok"));
        assert_eq!(report.tasks_error, count("error"));
        assert_eq!(report.tasks_failed, count("failed"));
        assert_eq!(
            self.ended.len() as u64 + report.tasks_not_run,
            self.put,
            "every task ends once or is not run"
        );
        if joined && report.end == RunEnd::Completed {
            assert_eq!(report.tasks_not_run, 0, "a joined run ran everything");
        }
        report
    }
}

fn ready_pool(procs: usize) -> Sim {
    let mut sim = Sim::new(settings(procs), 7);
    for slot in 0..procs {
        sim.ready(slot);
    }
    sim
}

fn lost(sim: &Sim) -> Vec<(TaskId, Charge)> {
    sim.events
        .iter()
        .rev()
        .find_map(|event| match event {
            Event::WorkerDied { tasks, .. } => {
                Some(tasks.iter().map(|task| (task.id, task.charge)).collect())
            }
            _ => None,
        })
        .expect("a worker died")
}

#[test]
fn a_death_charges_the_oldest_task_and_frees_the_rest() {
    let mut sim = ready_pool(1);
    sim.put();
    sim.answer(0, 0, true);
    // One task was timed: the dispatch depth grows, so both go to the one worker.
    let (a, b) = (sim.put(), sim.put());
    assert_eq!(sim.processes[0].as_ref().unwrap().inbox, [a, b]);
    sim.die(0);
    assert_eq!(
        lost(&sim),
        [(a, Charge::Counted { count: 1 }), (b, Charge::Waiting)]
    );
    let report = sim.finish();
    assert_eq!(report.tasks_not_run, 2);
}

#[test]
fn a_task_is_quarantined_after_max_attempts_deaths() {
    let mut sim = ready_pool(1);
    let poison = sim.put();
    for _ in 0..3 {
        sim.advance(Duration::from_millis(100));
        sim.ready(0);
        sim.die(0);
    }
    assert_eq!(sim.ended.get(&poison), Some(&"failed"));
    assert_eq!(lost(&sim), [(poison, Charge::Counted { count: 3 })]);
    sim.finish();
}

#[test]
fn with_started_one_running_task_is_the_culprit_and_queued_ones_are_free() {
    let mut sim = ready_pool(1);
    sim.put();
    sim.answer(0, 0, true);
    let (a, b, c) = (sim.put(), sim.put(), sim.put());
    sim.start(0, 1);
    sim.die(0);
    assert_eq!(
        lost(&sim),
        [
            (a, Charge::Waiting),
            (b, Charge::Counted { count: 1 }),
            (c, Charge::Waiting)
        ]
    );
    sim.finish();
}

#[test]
fn a_worker_that_says_started_but_started_nothing_charges_the_oldest() {
    let mut sim = ready_pool(1);
    sim.put();
    sim.start(0, 0);
    sim.answer(0, 0, true);
    let (a, b) = (sim.put(), sim.put());
    sim.die(0);
    assert_eq!(
        lost(&sim),
        [(a, Charge::Counted { count: 1 }), (b, Charge::Waiting)]
    );
    sim.finish();
}

#[test]
fn an_ambiguous_death_charges_no_one_and_retries_each_suspect_alone() {
    let mut sim = ready_pool(1);
    sim.put();
    sim.answer(0, 0, true);
    let (a, b) = (sim.put(), sim.put());
    sim.start(0, 0);
    sim.start(0, 0);
    sim.die(0);
    assert_eq!(lost(&sim), [(a, Charge::Suspect), (b, Charge::Suspect)]);
    sim.advance(Duration::from_millis(50));
    sim.ready(0);
    // `Sim` checks on every send that a suspect runs alone.
    assert_eq!(sim.processes[0].as_ref().unwrap().inbox, [a]);
    sim.start(0, 0);
    sim.answer(0, 0, true);
    assert_eq!(sim.processes[0].as_ref().unwrap().inbox, [b]);
    sim.start(0, 0);
    sim.die(0);
    assert_eq!(lost(&sim), [(b, Charge::Counted { count: 1 })]);
    sim.finish();
}

#[test]
fn restarts_without_an_answer_give_up_past_the_intensity() {
    let mut sim = ready_pool(1);
    for _ in 0..10 {
        sim.put();
    }
    for _ in 0..5 {
        sim.advance(Duration::from_millis(100));
        sim.ready(0);
        sim.die(0);
    }
    assert!(matches!(
        sim.core.aborted(),
        Some(AbortReason::RestartIntensity { intensity: 4, .. })
    ));
    let report = sim.finish();
    assert!(report.tasks_not_run > 0);
}

#[test]
fn an_answer_between_deaths_keeps_the_pool_going() {
    let mut sim = ready_pool(1);
    for _ in 0..12 {
        sim.put();
        sim.die(0);
        sim.advance(Duration::from_millis(50));
        sim.ready(0);
        sim.answer(0, 0, true);
    }
    assert!(sim.core.aborted().is_none());
    sim.finish();
}

#[test]
fn workers_that_die_before_ready_stop_the_run() {
    let mut sim = Sim::new(settings(2), 7);
    sim.put();
    for _ in 0..3 {
        sim.die(0);
        sim.advance(Duration::from_millis(100));
    }
    assert!(matches!(
        sim.core.aborted(),
        Some(AbortReason::DeadOnArrival { deaths: 3, .. })
    ));
    let report = sim.finish();
    assert_eq!(report.tasks_not_run, 1);
}

#[test]
fn after_an_interrupt_running_tasks_finish_and_nothing_new_is_sent() {
    let mut sim = ready_pool(2);
    let running = sim.put();
    sim.put();
    sim.put();
    sim.interrupt();
    sim.answer(0, 0, true);
    assert_eq!(sim.ended.get(&running), Some(&"ok"));
    // The other worker's task runs past the grace period: it is killed.
    sim.advance(Duration::from_secs(1));
    assert!(sim.processes[1].is_none());
    let report = sim.finish();
    assert_eq!(report.end, RunEnd::Interrupted);
    assert_eq!((report.tasks_ok, report.tasks_not_run), (1, 2));
}

#[test]
fn a_restart_that_cannot_fork_is_retried_while_the_other_worker_goes_on() {
    let mut sim = ready_pool(2);
    let tasks: Vec<TaskId> = (0..6).map(|_| sim.put()).collect();
    sim.failing_spawns = 2;
    sim.die(0);
    // Two tries fail; each waits out a longer backoff; the third starts a worker.
    for _ in 0..3 {
        assert!(sim.core.aborted().is_none());
        assert!(sim.processes[0].is_none());
        sim.advance(Duration::from_millis(100));
    }
    assert!(sim.processes[0].is_some(), "the slot was never restarted");
    sim.ready(0);
    for _ in 0..tasks.len() {
        sim.answer(0, 0, true);
        sim.answer(1, 0, true);
    }
    let report = sim.finish();
    assert_eq!(report.end, RunEnd::Completed);
    assert_eq!(report.tasks_ok, tasks.len() as u64);
}

#[test]
fn a_restart_that_never_forks_gives_up_once_the_budget_is_spent() {
    let mut sim = ready_pool(1);
    sim.put();
    sim.failing_spawns = u32::MAX;
    sim.die(0);
    for _ in 0..10 {
        sim.advance(Duration::from_millis(100));
    }
    assert!(matches!(
        sim.core.aborted(),
        Some(AbortReason::CannotRestart { slot: 0, error }) if error == "EAGAIN"
    ));
    let report = sim.finish();
    assert_eq!(report.tasks_not_run, 1);
}

#[test]
fn the_kernels_word_on_a_sigkill_is_kept_only_where_procpool_did_not_send_it() {
    let mut sim = ready_pool(2);
    sim.put();
    sim.put();
    let sigkill = ExitStatus::Signaled {
        signal: Signal::SIGKILL.into(),
        core_dumped: false,
    };
    let oom = OomCheck::KernelLog("Out of memory: Killed process 1 (w)".into());
    let last_crash = |sim: &Sim| {
        sim.events.iter().rev().find_map(|event| match event {
            Event::WorkerDied { crash, .. } => Some(crash.clone()),
            _ => None,
        })
    };
    assert!(!sim.core.killed_by_procpool(0));
    sim.exit_with(0, sigkill.clone(), Some(oom.clone()));
    sim.settle();
    let crash = last_crash(&sim).expect("worker 0 died");
    assert_eq!(crash.oom, Some(oom.clone()));
    assert!(crash.oom_killed());

    sim.core.kill(1, KillReason::Chaos);
    assert!(sim.core.killed_by_procpool(1));
    sim.exit_with(1, sigkill, Some(oom));
    sim.settle();
    let crash = last_crash(&sim).expect("worker 1 died");
    assert_eq!(
        (crash.slot, crash.oom, crash.killed_by_procpool),
        (1, None, Some(KillReason::Chaos))
    );
    sim.finish();
}

#[test]
fn a_task_past_its_timeout_kills_its_worker_and_is_charged() {
    let mut settings = settings(1);
    settings.task_timeout = Some(Duration::from_millis(100));
    let mut sim = Sim::new(settings, 7);
    sim.ready(0);
    let slow = sim.put();
    assert_eq!(
        sim.core.next_deadline(sim.now),
        Some(sim.now + Duration::from_millis(100))
    );
    sim.advance(Duration::from_millis(100));
    assert_eq!(lost(&sim), [(slow, Charge::Counted { count: 1 })]);
    sim.finish();
}

#[test]
fn a_task_of_its_own_timeout_and_one_attempt_fails_at_its_first_timeout() {
    let mut sim = ready_pool(1);
    let own = TaskOptions {
        timeout: Some(Duration::from_millis(50)),
        max_attempts: Some(1),
    };
    let slow = sim.put_with(own);
    let untimed = sim.put();
    assert_eq!(
        sim.core.next_deadline(sim.now),
        Some(sim.now + Duration::from_millis(50)),
        "the pool has no timeout; the task has its own"
    );
    sim.advance(Duration::from_millis(50));
    assert_eq!(lost(&sim)[0], (slow, Charge::Counted { count: 1 }));
    assert_eq!(sim.ended.get(&slow).copied(), Some("failed"));
    assert_ne!(sim.ended.get(&untimed).copied(), Some("failed"));
    assert_eq!(sim.finish().tasks_failed, 1, "only the timed task failed");
}

/// Something that can happen to a pool.
#[derive(Debug, Clone)]
enum Step {
    Put,
    Ready(usize),
    Start(usize, usize),
    Answer(usize, usize, bool),
    StrayAnswer(usize, u64),
    Die(usize),
    /// The next spawns fail.
    FailSpawns(u32),
    Advance(u64),
    Interrupt,
}

fn step(procs: usize) -> impl Strategy<Value = Step> {
    let slot = 0..procs;
    // Weighted so that runs get far: most cases end without an interrupt, and
    // workers answer more often than they die.
    prop_oneof![
        40 => Just(Step::Put),
        10 => slot.clone().prop_map(Step::Ready),
        40 => (slot.clone(), 0..4usize).prop_map(|(s, k)| Step::Start(s, k)),
        60 => (slot.clone(), 0..4usize, prop::bool::weighted(0.8))
            .prop_map(|(s, k, ok)| Step::Answer(s, k, ok)),
        5 => (slot.clone(), 0..40u64).prop_map(|(s, id)| Step::StrayAnswer(s, id)),
        15 => slot.prop_map(Step::Die),
        3 => (1..4u32).prop_map(Step::FailSpawns),
        20 => (0..400u64).prop_map(Step::Advance),
        1 => Just(Step::Interrupt),
    ]
}

fn case() -> impl Strategy<Value = (Settings, bool, u64, Vec<Step>)> {
    let flags = (any::<bool>(), any::<bool>(), prop::bool::weighted(0.8));
    (1..4usize, 1..4usize, 1..4u32, 1..5u32, flags, any::<u64>()).prop_flat_map(
        |(procs, prefetch, attempts, intensity, (timeouts, chaos, eager_ready), seed)| {
            let mut settings = settings(procs);
            settings.prefetch = prefetch;
            settings.max_attempts = attempts;
            settings.restart.intensity = intensity;
            settings.ready_timeout = Duration::from_millis(500);
            settings.task_timeout = timeouts.then_some(Duration::from_millis(300));
            settings.max_tasks_per_child = timeouts.then_some(3);
            settings.chaos = chaos.then_some(5.0);
            let steps = prop::collection::vec(step(procs), 0..150);
            (Just(settings), Just(eager_ready), Just(seed), steps)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Whatever happens, in whatever order: every task ends exactly once or is
    /// reported not run; the report agrees with the events; a death is charged only
    /// to the one task that was running; suspects run alone; no task is sent after
    /// an interrupt; restarts without an answer never pass the intensity.
    #[test]
    fn every_task_ends_once_whatever_happens((settings, eager_ready, seed, steps) in case()) {
        let procs = settings.procs;
        let mut sim = Sim::new(settings, seed);
        sim.eager_ready = eager_ready;
        for slot in 0..procs {
            if eager_ready {
                sim.ready(slot);
            }
        }
        for step in steps {
            match step {
                Step::Put => { sim.put(); }
                Step::Ready(slot) => sim.ready(slot % procs),
                Step::Start(slot, pick) => sim.start(slot % procs, pick),
                Step::Answer(slot, pick, ok) => sim.answer(slot % procs, pick, ok),
                Step::StrayAnswer(slot, id) => sim.stray_answer(slot % procs, id),
                Step::Die(slot) => sim.die(slot % procs),
                Step::FailSpawns(count) => sim.failing_spawns = count,
                Step::Advance(ms) => sim.advance(Duration::from_millis(ms)),
                Step::Interrupt => sim.interrupt(),
            }
        }
        sim.finish();
    }
}

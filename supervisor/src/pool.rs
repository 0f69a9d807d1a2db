//! The pool: worker slots, the joinable queue, and the one-thread event loop that
//! dispatches tasks, reads answers, notices deaths, restarts, retries and shuts down.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::OsString;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use procpool_child::{decode_line, ArraySpec, FromWorker, TaskId, WorkerEnv};
use serde_json::Value;

use crate::lines::ReadOutcome;
use crate::queue::JoinableQueue;
use crate::report::{
    quarantine_message, CpuTime, Crash, KillReason, PoolReport, RunEnd, TaskFailure, WorkerReport,
};
use crate::restart::{backoff, RestartBudget, RestartPolicy};
use crate::signals::SignalPipes;
use crate::slot::{Phase, Slot, WorkerStatus};
use crate::sys::{self, WorkerFds};
use crate::worker::WorkerProcess;

/// How long a worker that closed its stdout may take to exit before it is killed.
const STDOUT_CLOSED_LINGER: Duration = Duration::from_secs(1);
/// A worker that dies sooner than this after starting counts as dying young (backoff).
const YOUNG: Duration = Duration::from_secs(1);
/// A slot whose workers die before `ready` this many times in a row, when no worker
/// has ever been ready, means the command cannot work: give up at once.
const DEAD_ON_ARRIVAL_LIMIT: u32 = 3;

/// How workers are started.
#[derive(Clone)]
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
    /// any other file they open as `/proc/self/fd/N`.
    pub inherit_fds: Vec<RawFd>,
    /// Return [`Event::Tick`] from [`Pool::next_event`] at least this often (for status displays).
    pub tick: Option<Duration>,
    /// Where worker log lines go; by default stderr, prefixed `[wN]`.
    pub on_log: LogSink,
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
            on_log: Box::new(|slot, line| eprintln!("[w{slot}] {line}")),
        }
    }
}

/// Default upper bound of tasks in flight per worker; bench/BENCHMARKS.md has the
/// measurement behind it (tiny-task throughput stops growing past it).
pub const DEFAULT_PREFETCH: usize = 64;

/// How much work (by measured task time) the pool keeps queued in each worker's pipe.
/// Enough to hide a round trip many times over; small enough that the last tasks of
/// a run of long tasks are not stuck behind one worker.
pub const QUEUED_WORK_TARGET: Duration = Duration::from_millis(2);

/// Why a pool could not start or had to give up.
#[derive(Debug, thiserror::Error)]
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
    /// Workers kept dying: the restart policy gave up. The report says what finished.
    #[error("{0}")]
    Aborted(String),
}

/// How a task ended: exactly one per task put, whatever happened to workers.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutcome {
    /// The worker's `result` output.
    Output(Value),
    /// The worker's `error` message; the worker was fine.
    Error(String),
    /// Quarantined after `max_attempts` workers died running it.
    Failed(Vec<Crash>),
}

/// Something that happened in the pool.
#[derive(Debug, Clone, PartialEq)]
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
        /// Tasks it held, each with the attempt that died (they are retried or failed).
        tasks: Vec<(TaskId, u32)>,
        /// When the slot restarts, if it does.
        restart_in: Option<Duration>,
        /// Whether it had sent `ready` (a worker that dies before is likely misconfigured).
        was_ready: bool,
    },
    /// SIGINT or SIGTERM arrived: dispatch has stopped and in-flight tasks get the
    /// grace period. `again` is true for the second one, which kills the workers now.
    Interrupted {
        /// Whether this is the second interrupt.
        again: bool,
    },
    /// Nothing happened for [`PoolConfig::tick`].
    Tick,
    /// The input descriptor passed to [`Pool::next_event_or_input`] is readable (or
    /// at its end): one read of it will not block.
    InputReady,
}

struct TaskRecord {
    input: Value,
    attempt: u32,
    crashes: Vec<Crash>,
}

/// What the pool is doing about the end of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ending {
    Running,
    /// Interrupted: no dispatch; in-flight tasks finish by the deadline.
    Draining {
        deadline: Instant,
    },
    /// Shutdown: `stop` sent; SIGTERM at `term_at`, SIGKILL at `kill_at`.
    Stopping {
        term_at: Instant,
        kill_at: Instant,
    },
}

/// A pool of worker processes fed from a joinable queue.
///
/// ```no_run
/// use procpool_supervisor::{Event, Pool, PoolConfig, TaskOutcome, WorkerStart};
///
/// let start = WorkerStart::Spawn { program: "python3".into(), args: vec!["worker.py".into()] };
/// let mut pool = Pool::start(PoolConfig::new(4, start))?;
/// for n in 0..100 {
///     pool.put(serde_json::json!(n));
/// }
/// while let Some(event) = pool.next_event()? {
///     if let Event::Task { id, outcome: TaskOutcome::Output(value), .. } = event {
///         println!("task {id}: {value}");
///     }
/// }
/// let report = pool.shutdown();
/// println!("{} ok in {:?}", report.tasks_ok, report.wall);
/// # Ok::<(), procpool_supervisor::PoolError>(())
/// ```
pub struct Pool {
    config: PoolConfig,
    slots: Vec<Slot>,
    queue: JoinableQueue,
    tasks: HashMap<TaskId, TaskRecord>,
    events: VecDeque<Event>,
    signals: SignalPipes,
    budget: RestartBudget,
    ending: Ending,
    interrupts: usize,
    aborted: Option<String>,
    /// Moving average of task service time in seconds, once one was measured.
    task_seconds: Option<f64>,
    any_ready: bool,
    started: Instant,
    next_tick: Option<Instant>,
    next_chaos: Option<Instant>,
    /// A chaos kill came due while no worker held a task: the next dispatch makes it,
    /// so that `--chaos` kills at its rate even when tasks are short.
    chaos_pending: bool,
    entropy: u64,
    tasks_ok: u64,
    tasks_error: u64,
    tasks_not_run: u64,
    retries: u64,
    chaos_kills: u64,
    failures: Vec<TaskFailure>,
}

impl Pool {
    /// Starts `config.procs` workers. They take tasks as soon as each sends `ready`.
    pub fn start(config: PoolConfig) -> Result<Pool, PoolError> {
        if config.procs == 0 {
            return Err(PoolError::Config("a pool needs at least one worker".into()));
        }
        if config.prefetch == 0 || config.max_attempts == 0 {
            return Err(PoolError::Config(
                "prefetch and max_attempts must be at least 1".into(),
            ));
        }
        let now = Instant::now();
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.subsec_nanos() as u64);
        let entropy = clock ^ (u64::from(std::process::id()) << 32);
        let mut pool = Pool {
            slots: (0..config.procs)
                .map(|index| Slot::new(index, now))
                .collect(),
            signals: SignalPipes::register()?,
            next_tick: config.tick.map(|tick| now + tick),
            next_chaos: None,
            chaos_pending: false,
            config,
            queue: JoinableQueue::default(),
            tasks: HashMap::new(),
            events: VecDeque::new(),
            budget: RestartBudget::new(),
            ending: Ending::Running,
            interrupts: 0,
            aborted: None,
            task_seconds: None,
            any_ready: false,
            started: now,
            entropy: entropy | 1,
            tasks_ok: 0,
            tasks_error: 0,
            tasks_not_run: 0,
            retries: 0,
            chaos_kills: 0,
            failures: Vec::new(),
        };
        for slot in 0..pool.slots.len() {
            pool.spawn(slot).map_err(|error| PoolError::Start {
                slot,
                start: pool.config.start.clone(),
                error,
            })?;
        }
        pool.next_chaos = pool
            .config
            .chaos
            .map(|rate| now + pool.chaos_interval(rate));
        Ok(pool)
    }

    /// Adds a task; returns its id. Tasks are dispatched in `put` order. A task put
    /// after an interrupt or an abort is counted as not run at once.
    pub fn put(&mut self, input: Value) -> TaskId {
        let id = self.queue.put();
        self.tasks.insert(
            id,
            TaskRecord {
                input,
                attempt: 0,
                crashes: Vec::new(),
            },
        );
        if self.ending != Ending::Running || self.aborted.is_some() {
            for waiting in self.queue.drain_waiting() {
                self.abandon(waiting);
            }
        }
        id
    }

    /// Runs the event loop until something happens. `None` means the queue is joined
    /// (every task put so far is finished) or, after an interrupt, that in-flight
    /// tasks are done or out of time. More tasks may be put and the loop resumed.
    pub fn next_event(&mut self) -> Result<Option<Event>, PoolError> {
        self.next_event_or_input(None)
    }

    /// Like [`next_event`](Pool::next_event), and also waits for `input`, the
    /// descriptor more tasks come from (a pipe, a terminal), to become readable:
    /// then [`Event::InputReady`]. The caller reads it only then, so a slow producer
    /// never stalls results, restarts or Ctrl-C. While `input` is given, a joined
    /// queue does not end the wait; after an interrupt `input` is ignored, since no
    /// more tasks will run.
    pub fn next_event_or_input(
        &mut self,
        input: Option<BorrowedFd<'_>>,
    ) -> Result<Option<Event>, PoolError> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(Some(event));
            }
            if let Some(reason) = &self.aborted {
                return Err(PoolError::Aborted(reason.clone()));
            }
            let input = input.filter(|_| !self.interrupted());
            if self.queue.is_joined() && input.is_none() {
                return Ok(None);
            }
            self.dispatch();
            if self.turn(input)? {
                self.events.push_back(Event::InputReady);
            }
        }
    }

    /// Whether events are ready, so that [`Pool::next_event`] returns without waiting
    /// (a caller that writes as it goes flushes when this is false).
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The id the next [`put`](Pool::put) returns, so that a task source can file a
    /// task under its id before handing it over.
    pub fn next_id(&self) -> TaskId {
        self.queue.total()
    }

    /// Tasks put and not finished.
    pub fn unfinished(&self) -> usize {
        self.queue.unfinished()
    }

    /// Tasks waiting for a worker.
    pub fn waiting(&self) -> usize {
        self.queue.waiting()
    }

    /// Whether SIGINT or SIGTERM arrived.
    pub fn interrupted(&self) -> bool {
        self.interrupts > 0
    }

    /// The number of worker slots.
    pub fn procs(&self) -> usize {
        self.slots.len()
    }

    /// A snapshot of every slot, for status displays.
    pub fn workers(&self) -> Vec<WorkerStatus> {
        self.slots.iter().map(Slot::status).collect()
    }

    /// Sends `stop` to every worker, waits the grace period, then SIGTERM, then
    /// SIGKILL; reaps everyone and returns the report. Tasks not finished by now are
    /// counted as not run.
    pub fn shutdown(mut self) -> PoolReport {
        for id in self.queue.drain_waiting() {
            self.abandon(id);
        }
        for slot in 0..self.slots.len() {
            for id in std::mem::take(&mut self.slots[slot].in_flight) {
                self.abandon(id);
            }
        }
        let now = Instant::now();
        self.ending = Ending::Stopping {
            term_at: now + self.config.grace,
            kill_at: now + self.config.grace * 2,
        };
        for slot in &mut self.slots {
            if let Some(process) = slot.process.as_mut() {
                process.stop();
                slot.phase = Phase::Stopping { since: now };
            } else {
                slot.phase = Phase::Down { restart_at: None };
            }
        }
        while self.slots.iter().any(|slot| slot.process.is_some()) {
            if self.turn(None).is_err() {
                break;
            }
        }
        for slot in 0..self.slots.len() {
            if let Some(mut process) = self.slots[slot].process.take() {
                if let Some((status, cpu)) = process.kill_and_reap() {
                    self.slots[slot].record_exit(status, cpu);
                }
            }
        }
        self.events.clear();
        self.report()
    }

    fn report(&self) -> PoolReport {
        let end = match (&self.aborted, self.interrupts) {
            (Some(reason), _) => RunEnd::Aborted(reason.clone()),
            (None, 0) => RunEnd::Completed,
            (None, _) => RunEnd::Interrupted,
        };
        let mut workers_cpu = CpuTime::default();
        let workers = self
            .slots
            .iter()
            .map(|slot| {
                workers_cpu += slot.cpu;
                WorkerReport {
                    slot: slot.index,
                    pid: slot.pid,
                    tasks_done: slot.tasks_done,
                    restarts: slot.restarts,
                    recycled: slot.recycled,
                    exit: slot.last_exit.clone(),
                    cpu: slot.cpu,
                }
            })
            .collect();
        PoolReport {
            end,
            tasks_total: self.queue.total(),
            tasks_ok: self.tasks_ok,
            tasks_error: self.tasks_error,
            tasks_failed: self.failures.len() as u64 - self.tasks_error,
            tasks_not_run: self.tasks_not_run,
            retries: self.retries,
            chaos_kills: self.chaos_kills,
            failures: self.failures.clone(),
            workers,
            wall: self.started.elapsed(),
            supervisor_cpu: sys::own_cpu_time(),
            workers_cpu,
        }
    }

    fn spawn(&mut self, slot: usize) -> std::io::Result<()> {
        let (stdin_read, stdin_write) = sys::pipe()?;
        let (stdout_read, stdout_write) = sys::pipe()?;
        let (stderr_read, stderr_write) = sys::pipe()?;
        for fd in [&stdin_write, &stdout_read, &stderr_read] {
            sys::set_nonblocking(fd.as_fd())?;
        }
        let fds = WorkerFds {
            stdin: stdin_read.as_fd(),
            stdout: stdout_write.as_fd(),
            stderr: stderr_write.as_fd(),
            inherit: &self.config.inherit_fds,
        };
        let env = WorkerEnv {
            index: slot,
            procs: self.slots.len(),
            arrays: self.config.arrays.clone(),
        };
        let pid = match &self.config.start {
            WorkerStart::Spawn { program, args } => {
                let mut command = Command::new(program);
                command.args(args).envs(env.to_vars());
                sys::spawn_command(&mut command, &fds)?
            }
            WorkerStart::Fork(body) => {
                let body = body.clone();
                sys::fork_worker(&fds, &move || {
                    for (name, value) in env.to_vars() {
                        // The forked worker is single-threaded, so changing its
                        // environment races with nothing.
                        std::env::set_var(name, value);
                    }
                    body()
                })?
            }
        };
        drop((stdin_read, stdout_write, stderr_write));
        let now = Instant::now();
        let state = &mut self.slots[slot];
        state.process = Some(WorkerProcess::new(
            pid,
            stdin_write,
            stdout_read,
            stderr_read,
        ));
        state.pid = pid.as_raw();
        state.phase = Phase::Starting {
            ready_by: now + self.config.ready_timeout,
        };
        state.started_at = now;
        state.tasks_this_process = 0;
        state.stdout_closed_at = None;
        state.kill_reason = None;
        self.events.push_back(Event::WorkerStarted {
            slot,
            pid: pid.as_raw(),
        });
        Ok(())
    }

    /// Sends waiting tasks to ready workers, then makes a pending chaos kill.
    fn dispatch(&mut self) {
        self.send_tasks();
        if self.chaos_pending && self.chaos_kill() {
            self.chaos_pending = false;
        }
    }

    /// Sends waiting tasks to ready workers, filling the emptiest first, up to
    /// `prefetch` in flight each.
    fn send_tasks(&mut self) {
        if self.ending != Ending::Running {
            return;
        }
        let deadline_ms = self.config.task_timeout.map(|t| t.as_millis() as u64);
        let max_tasks = self.config.max_tasks_per_child;
        for depth in 0..self.dispatch_depth() {
            for slot in &mut self.slots {
                if slot.phase != Phase::Ready
                    || slot.in_flight.len() != depth
                    || slot.kill_reason.is_some()
                {
                    continue;
                }
                // A process retiring after `max_tasks_per_child` answers gets no task
                // it would have to answer past that number.
                let promised = slot.tasks_this_process + slot.in_flight.len() as u64;
                if max_tasks.is_some_and(|max| promised >= max) {
                    continue;
                }
                let Some(id) = self.queue.take() else {
                    return;
                };
                let task = self.tasks.get_mut(&id).expect("queued task has a record");
                task.attempt += 1;
                if task.attempt > 1 {
                    self.retries += 1;
                }
                let line = procpool_child::encode_task(id, task.attempt, &task.input, deadline_ms);
                if slot.in_flight.is_empty() {
                    slot.busy_since = Instant::now();
                }
                slot.in_flight.push_back(id);
                slot.process
                    .as_mut()
                    .expect("a ready slot has a process")
                    .send(&line);
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
        (wanted.min(self.config.prefetch as f64) as usize).max(1)
    }

    /// One wait on every pipe, deadline and `input`, then everything that woke it
    /// handled. Returns whether `input` is readable.
    fn turn(&mut self, input: Option<BorrowedFd<'_>>) -> Result<bool, PoolError> {
        let timeout = self
            .next_deadline()
            .map(|at| at.saturating_duration_since(Instant::now()));
        let ready = self.poll(timeout, input)?;
        if ready.interrupts {
            let count = SignalPipes::drain(&self.signals.interrupts);
            for _ in 0..count {
                self.on_interrupt();
            }
        }
        if ready.children {
            SignalPipes::drain(&self.signals.children);
        }
        for (slot, wake) in ready.slots.into_iter().enumerate() {
            if wake.stdin {
                if let Some(process) = self.slots[slot].process.as_mut() {
                    process.flush_outbox();
                }
            }
            if wake.stderr {
                self.read_stderr(slot);
            }
            if wake.stdout {
                self.read_stdout(slot);
            }
        }
        // A death shows as SIGCHLD (the self-pipe, drained above before reaping, so a
        // later death wakes the next poll) or as EOF on the worker's stdout.
        for slot in 0..self.slots.len() {
            if ready.children || self.slots[slot].stdout_closed_at.is_some() {
                self.reap(slot);
            }
        }
        self.on_deadlines(Instant::now());
        Ok(ready.input)
    }

    fn poll(
        &mut self,
        timeout: Option<Duration>,
        input: Option<BorrowedFd<'_>>,
    ) -> Result<Wakeups, PoolError> {
        #[derive(Clone, Copy)]
        enum Source {
            Interrupts,
            Children,
            Input,
            Stdin(usize),
            Stdout(usize),
            Stderr(usize),
        }
        let mut sources = vec![Source::Interrupts, Source::Children];
        let mut fds: Vec<BorrowedFd<'_>> = vec![
            self.signals.interrupts.as_fd(),
            self.signals.children.as_fd(),
        ];
        let mut interests = vec![PollFlags::POLLIN, PollFlags::POLLIN];
        if let Some(fd) = input {
            sources.push(Source::Input);
            fds.push(fd);
            interests.push(PollFlags::POLLIN);
        }
        for (index, slot) in self.slots.iter().enumerate() {
            let Some(process) = &slot.process else {
                continue;
            };
            if let Some(fd) = process.stdin_pending() {
                sources.push(Source::Stdin(index));
                fds.push(fd);
                interests.push(PollFlags::POLLOUT);
            }
            if let Some(fd) = process.stdout.fd() {
                sources.push(Source::Stdout(index));
                fds.push(fd);
                interests.push(PollFlags::POLLIN);
            }
            if let Some(fd) = process.stderr.fd() {
                sources.push(Source::Stderr(index));
                fds.push(fd);
                interests.push(PollFlags::POLLIN);
            }
        }
        let mut poll_fds: Vec<PollFd<'_>> = fds
            .iter()
            .zip(&interests)
            .map(|(fd, &events)| PollFd::new(*fd, events))
            .collect();
        let timeout = match timeout {
            None => PollTimeout::NONE,
            // Round up so a deadline is never woken for just before it is due.
            Some(t) => {
                PollTimeout::try_from(t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        match nix::poll::poll(&mut poll_fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(err) => return Err(PoolError::Io(err.into())),
        }
        let mut wakeups = Wakeups {
            interrupts: false,
            children: false,
            input: false,
            slots: vec![SlotWakeup::default(); self.slots.len()],
        };
        for (source, poll_fd) in sources.iter().zip(&poll_fds) {
            if poll_fd.revents().is_none_or(|r| r.is_empty()) {
                continue;
            }
            match *source {
                Source::Interrupts => wakeups.interrupts = true,
                Source::Children => wakeups.children = true,
                Source::Input => wakeups.input = true,
                Source::Stdin(i) => wakeups.slots[i].stdin = true,
                Source::Stdout(i) => wakeups.slots[i].stdout = true,
                Source::Stderr(i) => wakeups.slots[i].stderr = true,
            }
        }
        Ok(wakeups)
    }

    /// The nearest instant at which something is due. A slot already killed has
    /// nothing due (its death arrives as SIGCHLD), and deadlines already acted on are
    /// left out, so the loop never spins on a past instant.
    fn next_deadline(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut deadlines: Vec<Instant> = Vec::new();
        for slot in &self.slots {
            if let Phase::Down {
                restart_at: Some(at),
            } = slot.phase
            {
                deadlines.push(at);
            }
            if slot.process.is_none() || slot.kill_reason.is_some() {
                continue;
            }
            match slot.phase {
                Phase::Starting { ready_by } => deadlines.push(ready_by),
                Phase::Stopping { since } if self.ending == Ending::Running => {
                    deadlines.push(since + self.config.grace)
                }
                _ => {}
            }
            if let (Some(timeout), false) = (self.config.task_timeout, slot.in_flight.is_empty()) {
                deadlines.push(slot.busy_since + timeout);
            }
            if let Some(closed) = slot.stdout_closed_at {
                deadlines.push(closed + STDOUT_CLOSED_LINGER);
            }
        }
        match self.ending {
            Ending::Running => {}
            Ending::Draining { deadline } => deadlines.push(deadline),
            Ending::Stopping { term_at, kill_at } => deadlines.extend([term_at, kill_at]),
        }
        deadlines.extend(self.next_tick);
        deadlines.extend(self.next_chaos);
        let ending_done = |at: &Instant| match self.ending {
            Ending::Draining { deadline } => *at == deadline && deadline <= now,
            Ending::Stopping { term_at, kill_at } => {
                (*at == term_at || *at == kill_at) && *at <= now
            }
            Ending::Running => false,
        };
        deadlines.into_iter().filter(|at| !ending_done(at)).min()
    }

    fn on_deadlines(&mut self, now: Instant) {
        for slot in &mut self.slots {
            let Some(process) = &slot.process else {
                continue;
            };
            let reason = match slot.phase {
                Phase::Starting { ready_by } if now >= ready_by => Some(KillReason::ReadyTimeout),
                // A recycled worker that does not exit after `stop` (shutdown has its
                // own SIGTERM-then-SIGKILL schedule).
                Phase::Stopping { since }
                    if self.ending == Ending::Running && now >= since + self.config.grace =>
                {
                    Some(KillReason::Shutdown)
                }
                _ if slot
                    .stdout_closed_at
                    .is_some_and(|at| now >= at + STDOUT_CLOSED_LINGER) =>
                {
                    Some(KillReason::StdoutClosed)
                }
                _ if !slot.in_flight.is_empty()
                    && self
                        .config
                        .task_timeout
                        .is_some_and(|timeout| now >= slot.busy_since + timeout) =>
                {
                    Some(KillReason::TaskTimeout)
                }
                _ => None,
            };
            if let (Some(reason), None) = (reason, slot.kill_reason) {
                slot.kill_reason = Some(reason);
                process.kill(Signal::SIGKILL);
            }
        }
        for slot in 0..self.slots.len() {
            if let Phase::Down {
                restart_at: Some(at),
            } = self.slots[slot].phase
            {
                if now >= at && self.ending == Ending::Running {
                    self.restart(slot);
                } else if now >= at {
                    self.slots[slot].phase = Phase::Down { restart_at: None };
                }
            }
        }
        match self.ending {
            Ending::Running => {}
            Ending::Draining { deadline } if now >= deadline => {
                self.kill_all(KillReason::Shutdown);
            }
            Ending::Draining { .. } => {}
            Ending::Stopping { term_at, kill_at } => {
                if now >= kill_at {
                    self.kill_all(KillReason::Shutdown);
                } else if now >= term_at {
                    for slot in &self.slots {
                        if let Some(process) = &slot.process {
                            process.kill(Signal::SIGTERM);
                        }
                    }
                }
            }
        }
        if self.next_tick.is_some_and(|at| now >= at) {
            self.events.push_back(Event::Tick);
            self.next_tick = self.config.tick.map(|tick| now + tick);
        }
        if let (Some(at), Some(rate)) = (self.next_chaos, self.config.chaos) {
            if now >= at {
                if !self.chaos_kill() {
                    self.chaos_pending = true;
                }
                self.next_chaos = Some(now + self.chaos_interval(rate));
            }
        }
    }

    fn restart(&mut self, slot: usize) {
        let state = &mut self.slots[slot];
        if std::mem::take(&mut state.retired) {
            state.recycled += 1;
        } else {
            state.restarts += 1;
        }
        if let Err(err) = self.spawn(slot) {
            self.abort(format!("cannot restart worker {slot}: {err}"));
        }
    }

    fn kill_all(&mut self, reason: KillReason) {
        for slot in &mut self.slots {
            if let Some(process) = &slot.process {
                slot.kill_reason.get_or_insert(reason);
                process.kill(Signal::SIGKILL);
            }
        }
    }

    /// SIGKILLs a random worker that holds a task; false if none does. Never once
    /// the run is ending: tasks let finish after Ctrl-C are left to finish.
    fn chaos_kill(&mut self) -> bool {
        if self.ending != Ending::Running {
            return false;
        }
        // A task survives at most `max_attempts` chaos kills, so that chaos faster than
        // the tasks cannot stall the run (chaos kills do not count towards quarantine).
        let spared = |id: &TaskId| {
            self.tasks.get(id).is_some_and(|task| {
                let chaos = task
                    .crashes
                    .iter()
                    .filter(|crash| crash.killed_by_procpool == Some(KillReason::Chaos));
                chaos.count() >= self.config.max_attempts as usize
            })
        };
        let busy: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                let slot = &self.slots[i];
                slot.process.is_some()
                    && !slot.in_flight.is_empty()
                    && slot.kill_reason.is_none()
                    && !slot.in_flight.iter().any(spared)
            })
            .collect();
        if busy.is_empty() {
            return false;
        }
        let victim = busy[(self.random() % busy.len() as u64) as usize];
        let slot = &mut self.slots[victim];
        slot.kill_reason = Some(KillReason::Chaos);
        if let Some(process) = &slot.process {
            process.kill(Signal::SIGKILL);
        }
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

    fn on_interrupt(&mut self) {
        self.interrupts += 1;
        let again = self.interrupts > 1;
        if again {
            self.kill_all(KillReason::Shutdown);
        } else if self.ending == Ending::Running {
            for id in self.queue.drain_waiting() {
                self.abandon(id);
            }
            self.ending = Ending::Draining {
                deadline: Instant::now() + self.config.grace,
            };
        }
        self.events.push_back(Event::Interrupted { again });
    }

    fn read_stderr(&mut self, slot: usize) {
        let Some(process) = self.slots[slot].process.as_mut() else {
            return;
        };
        let outcome = process.stderr.fill();
        while let Some(line) = process.stderr.next_line() {
            (self.config.on_log)(slot, &String::from_utf8_lossy(&line));
        }
        if let ReadOutcome::LineTooLong = outcome {
            (self.config.on_log)(
                slot,
                &format!(
                    "procpool: dropped a stderr line longer than {} bytes",
                    crate::worker::MAX_LINE
                ),
            );
        }
    }

    fn read_stdout(&mut self, slot: usize) {
        let Some(process) = self.slots[slot].process.as_mut() else {
            return;
        };
        let outcome = process.stdout.fill();
        let mut lines = Vec::new();
        while let Some(line) = process.stdout.next_line() {
            lines.push(line);
        }
        for line in lines {
            self.on_stdout_line(slot, &line);
        }
        let state = &mut self.slots[slot];
        match outcome {
            ReadOutcome::Open => {}
            ReadOutcome::Eof | ReadOutcome::Failed(_) => {
                state.stdout_closed_at.get_or_insert(Instant::now());
            }
            ReadOutcome::LineTooLong => {
                (self.config.on_log)(
                    slot,
                    &format!(
                        "procpool: a stdout line longer than {} bytes; killing this worker",
                        crate::worker::MAX_LINE
                    ),
                );
                state.kill_reason.get_or_insert(KillReason::LineTooLong);
                if let Some(process) = &state.process {
                    process.kill(Signal::SIGKILL);
                }
            }
        }
    }

    fn on_stdout_line(&mut self, slot: usize, line: &[u8]) {
        match decode_line::<FromWorker>(line) {
            Ok(FromWorker::Ready) => {
                let state = &mut self.slots[slot];
                match state.phase {
                    Phase::Starting { .. } => {
                        state.phase = Phase::Ready;
                        self.any_ready = true;
                    }
                    Phase::Ready | Phase::Retiring => {
                        (self.config.on_log)(slot, "procpool: warning: a second `ready` ignored")
                    }
                    // Ready arriving after `stop` was sent: nothing to do.
                    Phase::Stopping { .. } | Phase::Down { .. } => {}
                }
            }
            Ok(FromWorker::Started { .. }) => {}
            Ok(FromWorker::Result { id, output }) => {
                self.on_answer(slot, id, TaskOutcome::Output(output))
            }
            Ok(FromWorker::Error { id, message }) => {
                self.on_answer(slot, id, TaskOutcome::Error(message))
            }
            Err(err) => {
                let text = String::from_utf8_lossy(line);
                let shown: String = text.chars().take(200).collect();
                let more = if shown.len() < text.len() { "…" } else { "" };
                (self.config.on_log)(
                    slot,
                    &format!("procpool: warning: stdout line is {err}: {shown}{more}"),
                );
            }
        }
    }

    fn on_answer(&mut self, slot: usize, id: TaskId, outcome: TaskOutcome) {
        let state = &mut self.slots[slot];
        let Some(position) = state.in_flight.iter().position(|&held| held == id) else {
            let why = if self.tasks.contains_key(&id) || id < self.queue.total() {
                "a late or duplicate answer"
            } else {
                "an answer to a task it was never given"
            };
            (self.config.on_log)(
                slot,
                &format!("procpool: warning: dropped {why} (task {id})"),
            );
            return;
        };
        state.in_flight.remove(position);
        let now = Instant::now();
        let sample = now.duration_since(state.busy_since).as_secs_f64();
        state.busy_since = now;
        self.task_seconds = Some(match self.task_seconds {
            None => sample,
            Some(average) => 0.9 * average + 0.1 * sample,
        });
        state.tasks_done += 1;
        state.tasks_this_process += 1;
        state.young_deaths = 0;
        if self
            .config
            .max_tasks_per_child
            .is_some_and(|max| state.tasks_this_process >= max)
            && state.phase == Phase::Ready
        {
            state.phase = Phase::Retiring;
        }
        if state.phase == Phase::Retiring && state.in_flight.is_empty() {
            state.phase = Phase::Stopping { since: now };
            if let Some(process) = state.process.as_mut() {
                process.stop();
            }
        }
        let task = self
            .tasks
            .remove(&id)
            .expect("an in-flight task has a record");
        match &outcome {
            TaskOutcome::Output(_) => self.tasks_ok += 1,
            TaskOutcome::Error(message) => {
                self.tasks_error += 1;
                self.failures.push(TaskFailure {
                    id,
                    attempts: task.attempt,
                    message: message.clone(),
                    crashes: task.crashes,
                });
            }
            TaskOutcome::Failed(_) => unreachable!("workers answer with results or errors"),
        }
        self.queue.task_done();
        self.events.push_back(Event::Task {
            id,
            attempts: task.attempt,
            slot,
            outcome,
        });
    }

    fn reap(&mut self, slot: usize) {
        let Some(process) = self.slots[slot].process.as_mut() else {
            return;
        };
        let Some((status, cpu)) = process.try_reap() else {
            return;
        };
        // Everything the worker wrote before dying is in its pipes now: read it all.
        // A grandchild may hold the pipes open, so stop once a read leaves them open.
        loop {
            let open = |pool: &Pool| {
                pool.slots[slot]
                    .process
                    .as_ref()
                    .map_or((false, false), |p| (p.stdout.is_open(), p.stderr.is_open()))
            };
            let before = open(self);
            if before == (false, false) {
                break;
            }
            self.read_stdout(slot);
            self.read_stderr(slot);
            if open(self) == before {
                break;
            }
        }
        let state = &mut self.slots[slot];
        state.process = None;
        state.stdout_closed_at = None;
        let planned = matches!(state.phase, Phase::Stopping { .. }) && state.in_flight.is_empty();
        let lived = state.started_at.elapsed();
        let was_ready = !matches!(state.phase, Phase::Starting { .. });
        state.record_exit(status.clone(), cpu);
        let crash = Crash {
            slot,
            pid: state.pid,
            status,
            killed_by_procpool: state.kill_reason.take(),
        };
        let held: Vec<TaskId> = state.in_flight.drain(..).collect();
        let tasks: Vec<(TaskId, u32)> = held
            .iter()
            .map(|id| (*id, self.tasks.get(id).map_or(0, |t| t.attempt)))
            .collect();
        let retired = planned && crash.status.success();
        let restart_in = if retired {
            // A recycled worker (max tasks per child) is replaced straight away.
            (self.ending == Ending::Running).then_some(Duration::ZERO)
        } else {
            self.plan_restart(slot, &crash, lived, was_ready)
        };
        let now = Instant::now();
        self.slots[slot].phase = Phase::Down {
            restart_at: restart_in.map(|delay| now + delay),
        };
        self.slots[slot].retired = retired;
        if !planned {
            self.events.push_back(Event::WorkerDied {
                crash: crash.clone(),
                tasks,
                restart_in,
                was_ready,
            });
        }
        // A worker runs its tasks in order, so the oldest it held is the one it was
        // running when it died; the others waited in its pipe and go back uncharged.
        // Retries go to the front of the queue one by one: last first keeps their order.
        for (position, &id) in held.iter().enumerate().rev() {
            self.on_task_lost(slot, id, (position == 0).then_some(&crash));
        }
    }

    /// Decides whether and when a slot whose worker died unplanned restarts, and
    /// aborts the run when the restart policy says so.
    fn plan_restart(
        &mut self,
        slot: usize,
        crash: &Crash,
        lived: Duration,
        was_ready: bool,
    ) -> Option<Duration> {
        if self.ending != Ending::Running || self.aborted.is_some() {
            return None;
        }
        if lived < YOUNG || !was_ready {
            self.slots[slot].young_deaths += 1;
        }
        let young_deaths = self.slots[slot].young_deaths;
        if !was_ready && !self.any_ready && young_deaths >= DEAD_ON_ARRIVAL_LIMIT {
            self.abort(format!(
                "workers die before sending `ready` ({crash}, {young_deaths} times in a row); check the worker command and its stderr above"
            ));
            return None;
        }
        // Kills that procpool chose for testing do not spend the restart budget.
        if crash.killed_by_procpool != Some(KillReason::Chaos)
            && !self.budget.allow(&self.config.restart, Instant::now())
        {
            self.abort(format!(
                "more than {} worker restarts within {:?} (last: {crash}); giving up. Raise --max-restarts or fix the crashing tasks",
                self.config.restart.intensity, self.config.restart.period
            ));
            return None;
        }
        let entropy = self.random();
        Some(backoff(&self.config.restart, young_deaths, entropy))
    }

    /// Puts back a task whose worker died, recording the crash against it if it was the
    /// one running; a task charged with `max_attempts` crashes (chaos kills aside) is
    /// quarantined.
    fn on_task_lost(&mut self, slot: usize, id: TaskId, blamed: Option<&Crash>) {
        if self.ending != Ending::Running || self.aborted.is_some() {
            self.abandon(id);
            return;
        }
        let task = self
            .tasks
            .get_mut(&id)
            .expect("an in-flight task has a record");
        let Some(crash) = blamed else {
            self.queue.retry(id);
            return;
        };
        task.crashes.push(crash.clone());
        // A chaos kill is recorded but says nothing about the task: only the other
        // deaths count towards quarantine.
        let blamed = task
            .crashes
            .iter()
            .filter(|crash| crash.killed_by_procpool != Some(KillReason::Chaos))
            .count();
        if blamed < self.config.max_attempts as usize {
            self.queue.retry(id);
            return;
        }
        let task = self.tasks.remove(&id).expect("checked above");
        let message = quarantine_message(&task.crashes, task.attempt);
        self.failures.push(TaskFailure {
            id,
            attempts: task.attempt,
            message,
            crashes: task.crashes.clone(),
        });
        self.queue.task_done();
        self.events.push_back(Event::Task {
            id,
            attempts: task.attempt,
            slot,
            outcome: TaskOutcome::Failed(task.crashes),
        });
    }

    /// Gives up on a task without running it further (interrupt, abort, shutdown).
    fn abandon(&mut self, id: TaskId) {
        if self.tasks.remove(&id).is_some() {
            self.tasks_not_run += 1;
            self.queue.task_done();
        }
    }

    fn abort(&mut self, reason: String) {
        if self.aborted.is_none() {
            self.aborted = Some(reason);
            for id in self.queue.drain_waiting() {
                self.abandon(id);
            }
            self.kill_all(KillReason::Shutdown);
        }
    }
}

#[derive(Clone, Copy, Default)]
struct SlotWakeup {
    stdin: bool,
    stdout: bool,
    stderr: bool,
}

struct Wakeups {
    interrupts: bool,
    children: bool,
    /// The caller's input descriptor is readable, or at its end, or broken: a read
    /// returns at once either way.
    input: bool,
    slots: Vec<SlotWakeup>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        // WorkerProcess::drop kills and reaps; this only makes the order explicit:
        // workers go before the signal pipes stop listening.
        for slot in &mut self.slots {
            slot.process = None;
        }
    }
}

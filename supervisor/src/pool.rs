//! The pool's I/O shell: worker processes and their pipes, the signal pipes, and the
//! one `poll` loop over them. It turns what the OS says into calls on the
//! [`Core`](crate::core::Core) and carries out the core's commands; every decision
//! (dispatch, charging, restarts, shutdown) is the core's.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::process::Command as ProcessCommand;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use procpool_child::{decode_stdout_line, ArraySpec, FromWorker, StdoutLine, TaskId, WorkerEnv};
use procpool_shm::untrusted::{excerpt, quote};
use serde_json::Value;

use crate::cgroup::PoolCgroup;
use crate::config::{LogSink, PoolConfig, TaskOptions, WorkerStart};
use crate::core::{Command, Core, Settings};
use crate::event::{Event, PoolError, TaskOutcome};
use crate::lines::ReadOutcome;
use crate::oom::OomWatch;
use crate::orphans::Orphans;
use crate::poll::{PollTable, Token};
use crate::report::{KillReason, PoolReport};
use crate::signals::SignalPipes;
use crate::slot::WorkerStatus;
use crate::start_error::explain_process_limit;
use crate::stderr_queue;
use crate::sys::{self, WorkerFds};
use crate::worker::{WorkerProcess, LOG_LINE_MAX};

/// How long the last sweep for leftovers at shutdown may take: one stuck in the kernel
/// is left rather than waited for without end.
const LAST_SWEEP: std::time::Duration = std::time::Duration::from_secs(1);

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
    core: Core,
    /// Each slot's process; declared before `signals` so that workers are killed and
    /// reaped before the signal pipes stop listening.
    processes: Vec<Option<WorkerProcess>>,
    table: PollTable,
    signals: SignalPipes,
    start: WorkerStart,
    arrays: BTreeMap<String, ArraySpec>,
    inherit_fds: Vec<Arc<OwnedFd>>,
    on_log: LogSink,
    max_line: usize,
    /// The guardian, and what workers leave behind.
    orphans: Orphans,
    /// The pool's cgroup, where it has one: dropped after `processes`, so its leaves
    /// are empty by then.
    cgroup: Option<PoolCgroup>,
    /// Who sent a SIGKILL procpool did not.
    oom: OomWatch,
    /// The caller's input was readable at the last wait.
    input_ready: bool,
    started: Instant,
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
        let seed = clock ^ (u64::from(std::process::id()) << 32);
        let mut cgroup = config.cgroup.then(PoolCgroup::create).flatten();
        // Without the guardian's descriptors (EMFILE, say), the pool's cgroup could
        // outlive a killed supervisor: then the pool runs without one.
        let guardian_cgroup = match cgroup.as_ref().map(PoolCgroup::for_guardian) {
            Some(Ok(fds)) => Some(fds),
            Some(Err(_)) => {
                cgroup = None;
                None
            }
            None => None,
        };
        let mut pool = Pool {
            core: Core::new(Settings::of(&config), now, seed),
            processes: (0..config.procs).map(|_| None).collect(),
            table: PollTable::new(config.procs),
            signals: SignalPipes::register(config.handle_interrupts)?,
            // Twice the slots: a group is held from its worker's start to its reaping.
            orphans: Orphans::start(2 * config.procs + 16, config.adopt_orphans, guardian_cgroup)?,
            cgroup,
            oom: OomWatch::start(now),
            start: config.start,
            arrays: config.arrays,
            inherit_fds: config.inherit_fds,
            on_log: config.on_log,
            max_line: config.max_line,
            input_ready: false,
            started: now,
        };
        while let Some(command) = pool.core.poll_command() {
            match command {
                Command::Spawn { slot } => pool.spawn(slot).map_err(|error| PoolError::Start {
                    slot,
                    start: pool.start.clone(),
                    error,
                })?,
                other => pool.carry_out(other),
            }
        }
        Ok(pool)
    }

    /// Adds a task; returns its id. Tasks are dispatched in `put` order. A task put
    /// after an interrupt or an abort is counted as not run at once. The pool keeps
    /// the input until the task ends (to send it again after a crash): a caller that
    /// keeps it too can share it, as an `Arc`, rather than hold a second copy.
    pub fn put(&mut self, input: impl Into<Arc<Value>>) -> TaskId {
        self.core.put(input, TaskOptions::default())
    }

    /// [`put`](Pool::put) with the task's own timeout or attempt limit.
    pub fn put_with(&mut self, input: impl Into<Arc<Value>>, options: TaskOptions) -> TaskId {
        self.core.put(input, options)
    }

    /// Withdraws task `id` if it still waits for a worker: it ends at once, counted as
    /// not run, with no [`Event::Task`]. `false` when a worker already has it (it runs
    /// on and ends as usual) or it has ended.
    pub fn cancel(&mut self, id: TaskId) -> bool {
        self.core.cancel(id)
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
    /// queue does not end the wait, except after an interrupt: then the wait ends once
    /// in-flight tasks are done, and `input` is watched only until then (a caller that
    /// takes no more tasks once interrupted passes `None`).
    pub fn next_event_or_input(
        &mut self,
        input: Option<BorrowedFd<'_>>,
    ) -> Result<Option<Event>, PoolError> {
        loop {
            if let Some(event) = self.core.poll_event() {
                return Ok(Some(event));
            }
            if std::mem::take(&mut self.input_ready) {
                return Ok(Some(Event::InputReady));
            }
            if let Some(reason) = self.core.aborted() {
                return Err(PoolError::Aborted(reason.clone()));
            }
            // After an interrupt, `input` is still watched (a control channel's second
            // interrupt or EOF must get through), but no longer keeps the wait going.
            let joined = self.core.book().is_joined();
            if joined && (input.is_none() || self.core.interrupted()) {
                return Ok(None);
            }
            self.core.dispatch(Instant::now());
            self.execute();
            self.input_ready = self.turn(input)?;
        }
    }

    /// Does what SIGINT does to a pool that handles it (see
    /// [`PoolConfig::handle_interrupts`]): the first call stops dispatch and lets
    /// running tasks finish within the grace period, the second kills the workers.
    pub fn interrupt(&mut self) {
        self.core.interrupt(Instant::now());
        self.execute();
    }

    /// Whether events are ready, so that [`Pool::next_event`] returns without waiting
    /// (a caller that writes as it goes flushes when this is false).
    pub fn has_events(&self) -> bool {
        self.core.has_events() || self.input_ready
    }

    /// The id the next [`put`](Pool::put) returns, so that a task source can file a
    /// task under its id before handing it over.
    pub fn next_id(&self) -> TaskId {
        self.core.book().next_id()
    }

    /// Tasks put and not finished.
    pub fn unfinished(&self) -> usize {
        self.core.book().unfinished()
    }

    /// Tasks waiting for a worker.
    pub fn waiting(&self) -> usize {
        self.core.book().waiting()
    }

    /// Whether SIGINT or SIGTERM arrived, or [`interrupt`](Pool::interrupt) was called.
    pub fn interrupted(&self) -> bool {
        self.core.interrupted()
    }

    /// The number of worker slots.
    pub fn procs(&self) -> usize {
        self.processes.len()
    }

    /// A snapshot of every slot, for status displays.
    pub fn workers(&self) -> Vec<WorkerStatus> {
        self.core.workers()
    }

    /// Sends `stop` to every worker, waits the grace period, then SIGTERM, then
    /// SIGKILL; reaps everyone and returns the report. Tasks not finished by now are
    /// counted as not run.
    pub fn shutdown(mut self) -> PoolReport {
        self.core.shutdown(Instant::now());
        self.execute();
        while self.core.any_process() {
            if self.turn(None).is_err() {
                break;
            }
        }
        for slot in 0..self.processes.len() {
            if let Some(mut process) = self.processes[slot].take() {
                if let Some((status, cpu)) = process.kill_and_reap() {
                    self.orphans.worker_reaped(process.pid.as_raw());
                    self.core.exited(slot, status, cpu, None, Instant::now());
                }
            }
        }
        if let Some(cgroup) = &mut self.cgroup {
            cgroup.close(LAST_SWEEP);
        }
        self.orphans.sweep_all(LAST_SWEEP);
        self.core.clear_events();
        stderr_queue::finish(Duration::from_secs(1));
        let mut report = self.core.report(
            self.started.elapsed(),
            sys::own_cpu_time(),
            sys::own_peak_rss_kib(),
        );
        report.cgroup = self
            .cgroup
            .as_ref()
            .map(|cgroup| cgroup.dir().display().to_string());
        report
    }

    /// Carries out the core's commands until it has none.
    fn execute(&mut self) {
        while let Some(command) = self.core.poll_command() {
            if let Command::Spawn { slot } = command {
                if let Err(err) = self.spawn(slot) {
                    self.core
                        .spawn_failed(slot, err.to_string(), Instant::now());
                }
            } else {
                self.carry_out(command);
            }
        }
        for slot in 0..self.processes.len() {
            if let Some(process) = &mut self.processes[slot] {
                if process.flush_outbox().is_err() {
                    self.core.stdin_closed(slot, Instant::now());
                }
            }
        }
    }

    /// One command other than a spawn. A command for a process already reaped is moot.
    fn carry_out(&mut self, command: Command) {
        match command {
            Command::Send { slot, line } => {
                if let Some(process) = &mut self.processes[slot] {
                    process.queue(line);
                }
            }
            Command::Stop { slot } => {
                if let Some(process) = &mut self.processes[slot] {
                    process.stop();
                }
            }
            Command::Signal { slot, signal } => {
                if let Some(process) = &self.processes[slot] {
                    process.kill(signal);
                }
            }
            Command::Log { slot, line } => (self.on_log)(slot, &line),
            Command::Spawn { .. } => unreachable!("spawns are carried out by their caller"),
        }
    }

    fn spawn(&mut self, slot: usize) -> std::io::Result<()> {
        let (stdin_read, stdin_write) = sys::pipe()?;
        let (stdout_read, stdout_write) = sys::pipe()?;
        let (stderr_read, stderr_write) = sys::pipe()?;
        for fd in [&stdin_write, &stdout_read, &stderr_read] {
            sys::set_nonblocking(fd.as_fd())?;
        }
        // Task and answer lines: a long one then crosses in 16 times fewer turns.
        for fd in [&stdin_write, &stdout_read] {
            sys::grow_pipe(fd.as_fd(), 1 << 20);
        }
        // Numbers, for the child between fork and exec (where nothing may allocate).
        let inherit: Vec<RawFd> = self.inherit_fds.iter().map(|fd| fd.as_raw_fd()).collect();
        // A leaf that cannot be made (a cgroup.max.descendants, say) leaves this worker
        // to process groups and the subreaper, like a pool without cgroups.
        let leaf = self
            .cgroup
            .as_mut()
            .and_then(|cgroup| cgroup.worker_cgroup(slot).ok());
        let fds = WorkerFds {
            stdin: stdin_read.as_fd(),
            stdout: stdout_write.as_fd(),
            stderr: stderr_write.as_fd(),
            inherit: &inherit,
            subreaper: self.orphans.adopting(),
            cgroup_procs: leaf.as_ref().map(|leaf| leaf.procs.as_fd()),
        };
        let env = WorkerEnv {
            index: slot,
            procs: self.processes.len(),
            arrays: self.arrays.clone(),
        };
        let started = match &self.start {
            WorkerStart::Spawn { program, args } => {
                let mut command = ProcessCommand::new(program);
                command.args(args).envs(env.to_vars());
                sys::spawn_command(&mut command, &fds)
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
                })
            }
        };
        let pid = match started {
            Ok(pid) => pid,
            Err(err) => {
                if let (Some(cgroup), Some(leaf)) = (&mut self.cgroup, leaf) {
                    cgroup.release(leaf.dir);
                }
                return Err(explain_process_limit(err));
            }
        };
        drop((stdin_read, stdout_write, stderr_write));
        self.orphans.worker_started(pid.as_raw());
        self.processes[slot] = Some(WorkerProcess::new(
            pid,
            stdin_write,
            stdout_read,
            stderr_read,
            self.max_line,
            leaf.map(|leaf| leaf.dir),
        ));
        self.core.spawned(slot, pid.as_raw(), Instant::now());
        Ok(())
    }

    /// One wait on every pipe, deadline and `input`, then everything that woke it
    /// handled. Returns whether `input` is readable.
    fn turn(&mut self, input: Option<BorrowedFd<'_>>) -> Result<bool, PoolError> {
        let now = Instant::now();
        let timeout = self
            .core
            .next_deadline(now)
            .map(|at| at.saturating_duration_since(now));
        self.register(input);
        self.table.wait(timeout)?;
        if let (true, Some(interrupts)) = (
            self.table.ready(Token::Interrupts),
            &self.signals.interrupts,
        ) {
            for _ in 0..SignalPipes::drain(interrupts) {
                self.core.interrupt(Instant::now());
            }
        }
        if self.table.ready(Token::Log) {
            stderr_queue::flush();
        }
        let children = self.table.ready(Token::Children);
        if children {
            SignalPipes::drain(&self.signals.children);
        }
        for slot in 0..self.processes.len() {
            if self.table.ready(Token::Stdin(slot)) {
                if let Some(process) = &mut self.processes[slot] {
                    let broken = self.table.broken(Token::Stdin(slot));
                    if broken {
                        process.stdin_broken();
                    }
                    if broken || process.flush_outbox().is_err() {
                        self.core.stdin_closed(slot, Instant::now());
                    }
                }
            }
            if self.table.ready(Token::Stderr(slot)) {
                self.read_stderr(slot);
            }
            if self.table.ready(Token::Stdout(slot)) {
                self.read_stdout(slot);
            }
        }
        // A death shows as SIGCHLD (the self-pipe, drained above before reaping, so a
        // later death wakes the next poll) or as EOF on the worker's stdout.
        for slot in 0..self.processes.len() {
            let stdout_closed = self.processes[slot]
                .as_ref()
                .is_some_and(|process| !process.stdout.is_open());
            if children || stdout_closed {
                self.reap(slot);
            }
        }
        // Once the run ends, one sweep at the end of shutdown does for all.
        if children && self.core.running() {
            let workers = self.worker_pids();
            self.orphans.sweep_if_due(&workers);
            if let Some(cgroup) = &mut self.cgroup {
                cgroup.tidy();
            }
        }
        self.core.on_time(Instant::now());
        self.execute();
        Ok(self.table.ready(Token::Input))
    }

    /// Points the table at what to wait on now: the signal pipes, `input`, and each
    /// worker's open pipes (its stdin only while bytes wait to be written).
    fn register(&mut self, input: Option<BorrowedFd<'_>>) {
        let interrupts = self.signals.interrupts.as_ref().map(AsFd::as_fd);
        self.table.set(Token::Interrupts, interrupts);
        self.table
            .set(Token::Children, Some(self.signals.children.as_fd()));
        self.table.set(Token::Input, input);
        self.table.set(Token::Log, stderr_queue::pending_fd());
        for (slot, process) in self.processes.iter().enumerate() {
            let process = process.as_ref();
            let (stdin, pending) = process.map_or((None, false), WorkerProcess::stdin);
            self.table.set_stdin(slot, stdin, pending);
            self.table
                .set(Token::Stdout(slot), process.and_then(|p| p.stdout.fd()));
            self.table
                .set(Token::Stderr(slot), process.and_then(|p| p.stderr.fd()));
        }
    }

    fn read_stderr(&mut self, slot: usize) {
        let Some(process) = &mut self.processes[slot] else {
            return;
        };
        let outcome = process.stderr.fill();
        let mut lines = std::iter::from_fn(|| process.stderr.next_line()).peekable();
        while let Some(line) = lines.next() {
            // A cutting reader's cut line is the last one it has ready.
            let cut = lines.peek().is_none() && matches!(outcome, ReadOutcome::LineTooLong);
            let mut shown = excerpt(&line, LOG_LINE_MAX);
            if cut {
                shown.push_str(&format!(
                    " [procpool: cut, the line went on past {}]",
                    size_text(LOG_LINE_MAX)
                ));
            }
            (self.on_log)(slot, &shown);
        }
    }

    fn read_stdout(&mut self, slot: usize) {
        let Some(process) = &mut self.processes[slot] else {
            return;
        };
        let outcome = process.stdout.fill();
        let now = Instant::now();
        while let Some(line) = process.stdout.next_line() {
            match decode_stdout_line(&line) {
                StdoutLine::Message(FromWorker::Ready) => self.core.ready(slot),
                StdoutLine::Message(FromWorker::Started { id }) => self.core.started(slot, id),
                StdoutLine::Message(FromWorker::Result { id, output }) => {
                    self.core
                        .answered(slot, id, TaskOutcome::Output(output), now)
                }
                StdoutLine::Message(FromWorker::Error { id, message }) => {
                    self.core
                        .answered(slot, id, TaskOutcome::Error(message), now)
                }
                // An answer the strict decoder refuses (NaN, nesting too deep, an `id`
                // of the wrong type) still names its task: that task ends with an
                // error saying what was wrong, rather than waiting for ever.
                StdoutLine::Malformed {
                    kind: kind @ ("result" | "error"),
                    id: Some(id),
                    problem,
                } => {
                    let message =
                        format!("the worker's `{kind}` for this task is malformed: {problem}");
                    self.core
                        .answered(slot, id, TaskOutcome::Error(message), now)
                }
                StdoutLine::Malformed { kind, problem, .. } => (self.on_log)(
                    slot,
                    &format!(
                        "procpool: warning: ignored a malformed `{kind}` line ({problem}): {}",
                        quote(&line)
                    ),
                ),
                StdoutLine::NotProtocol(err) => (self.on_log)(
                    slot,
                    &format!("procpool: warning: stdout line is {err}: {}", quote(&line)),
                ),
            }
        }
        match outcome {
            ReadOutcome::Open => {}
            ReadOutcome::Eof | ReadOutcome::Failed(_) => self.core.stdout_closed(slot, now),
            ReadOutcome::LineTooLong => {
                (self.on_log)(
                    slot,
                    &format!(
                        "procpool: a stdout line longer than the {} line bound; killing this \
                         worker (a protocol line must end with a newline; the bound is \
                         PoolConfig::max_line, --max-line)",
                        size_text(self.max_line)
                    ),
                );
                self.core.kill(slot, KillReason::LineTooLong);
            }
        }
    }

    fn reap(&mut self, slot: usize) {
        let Some(process) = &mut self.processes[slot] else {
            return;
        };
        let Some((status, cpu)) = process.try_reap() else {
            return;
        };
        let pid = process.pid.as_raw();
        // Everything the worker wrote before dying is in its pipes now: read it all.
        // A grandchild may hold the pipes open, so stop once a read leaves them open.
        loop {
            let open = |pool: &Pool| {
                pool.processes[slot]
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
        let leaf = self.processes[slot]
            .take()
            .and_then(|mut process| process.cgroup.take());
        if let (Some(cgroup), Some(leaf)) = (&mut self.cgroup, leaf) {
            cgroup.release(leaf);
        }
        self.orphans.worker_reaped(pid);
        let outside_sigkill =
            status.killed_by(Signal::SIGKILL) && !self.core.killed_by_procpool(slot);
        let now = Instant::now();
        let oom = self
            .oom
            .reaped(pid, outside_sigkill, &self.worker_pids(), now);
        self.core.exited(slot, status, cpu, oom, now);
    }

    fn worker_pids(&self) -> Vec<i32> {
        self.processes
            .iter()
            .flatten()
            .map(|process| process.pid.as_raw())
            .collect()
    }
}

/// A byte count for a message: `256 MiB`, `64 KiB`, `1000 bytes`.
pub fn size_text(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

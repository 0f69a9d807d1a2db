//! `procpool check-worker CMD`: runs a worker command through the protocol v1 contract
//! and prints a checklist, so a worker in any language can be checked before a run.
//!
//! Required: it sends `ready`; it answers one task, then eight tasks sent at once,
//! each exactly once with a `result` or an `error` (in any order) and nothing for ids
//! it was not given, and any `started` it sends at most once per task, for a task it
//! holds; it exits 0 after `stop`, and (a second process) on EOF.
//! Optional, reported but never failing the check: only protocol messages on stdout,
//! some input answered with an `error` (a worker need not fail on any input), and
//! `started` sent for every task (a sequential worker need not send it).
//!
//! This drives the worker with the child crate's framing over `std::process` pipes
//! rather than through a `Pool`: the checks need exact control the pool hides on
//! purpose (eight tasks in flight at once, `stop` without EOF, timing each exit).
//! Reader threads are fine here: nothing is forked.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use procpool_child::{
    decode_line, encode_line, encode_task, FromWorker, TaskId, ToWorker, WorkerEnv,
};
use procpool_supervisor::{explain_start_error, ExitStatus, READY_HINT};
use serde_json::{json, Value};

use crate::stdout::outln;

/// Options of `procpool check-worker`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds to wait for `ready`, and for the answers to each batch of tasks.
    #[arg(long, default_value = "10", value_parser = crate::parse::positive_seconds)]
    pub timeout: Duration,
    /// Seconds the worker gets to exit after `stop` or EOF.
    #[arg(long, default_value = "5", value_parser = crate::parse::seconds)]
    pub grace: Duration,
    /// The worker command: one argument is split into words like a shell would (as
    /// `--child` is); several are taken as the words themselves. Options of
    /// check-worker may follow it; words that start with `-` go after `--`
    /// (`procpool check-worker -- python3 -u w.py`).
    #[arg(required = true, num_args = 1.., value_name = "CMD")]
    pub command: Vec<String>,
}

/// The inputs of the eight tasks sent at once: every kind of JSON value, and one a
/// worker may well refuse.
fn batch_inputs() -> Vec<Value> {
    vec![
        Value::Null,
        json!(7),
        json!(-2.5),
        json!("some text"),
        json!([1, 2, 3]),
        json!({"nested": {"list": [true, false, null]}}),
        json!(""),
        json!({"procpool_check": "an input your worker may reject with an error"}),
    ]
}

pub fn main(args: &Args) -> ExitCode {
    let words = match args.command.as_slice() {
        [one] => match shell_words::split(one) {
            Ok(words) if !words.is_empty() => words,
            Ok(_) => return usage("the worker command is empty"),
            Err(err) => return usage(&format!("{one:?}: {err}")),
        },
        many => many.to_vec(),
    };
    outln!("procpool check-worker: {}", shell_words::join(&words));
    let mut list = Checklist::default();
    run_checks(&words, args, &mut list);
    let failed = list.required_failed();
    outln!(
        "{} of {} required checks passed{}",
        list.required - failed,
        list.required,
        if failed == 0 {
            ": this worker speaks protocol v1"
        } else {
            ""
        }
    );
    ExitCode::from(if failed == 0 { 0 } else { 1 })
}

fn usage(message: &str) -> ExitCode {
    eprintln!("procpool: error: check-worker: {message}");
    ExitCode::from(2)
}

fn run_checks(words: &[String], args: &Args, list: &mut Checklist) {
    const READY: &str = "starts and sends ready";
    const ONE: &str = "answers a task exactly once (result or error)";
    const BATCH: &str = "answers 8 tasks sent at once, each exactly once, in any order";
    const STOP: &str = "exits 0 after stop";
    const EOF: &str = "exits 0 on EOF (stdin closed)";

    // The first process: ready, one task, eight at once, stop.
    let mut worker = match Worker::start(words) {
        Ok(worker) => worker,
        Err(err) => {
            list.fail(READY, err);
            for name in [ONE, BATCH, STOP, EOF] {
                list.fail(name, "not run".into());
            }
            return;
        }
    };
    match worker.wait_ready(args.timeout) {
        Ok(took) => list.pass(READY, format!("after {took:.2?}")),
        Err(err) => {
            list.fail(READY, err);
            for name in [ONE, BATCH, STOP, EOF] {
                list.fail(name, "not run".into());
            }
            return;
        }
    }
    worker.send_task(0, &json!(21));
    list.record(ONE, worker.check_answers(&[0], args.timeout));
    let ids: Vec<TaskId> = (1..=8).collect();
    let mut batch = Vec::new();
    for (&id, input) in ids.iter().zip(batch_inputs()) {
        // Retry numbers and deadlines as the supervisor sends them; unknown fields too.
        let mut line = encode_task(id, 1 + (id % 2) as u32, &input, (id == 3).then_some(60_000));
        if id == 5 {
            // A field from a future protocol version, after the ones procpool writes.
            line.truncate(line.len() - 2);
            line.extend_from_slice(
                b",\"x_future_field\":\"workers ignore fields they do not know\"}\n",
            );
        }
        worker.sent.push(id);
        batch.extend(line);
    }
    worker.send(&batch);
    list.record(BATCH, worker.check_answers(&ids, args.timeout));
    worker.send(&encode_line(&ToWorker::Stop));
    list.record(STOP, worker.wait_exit(args.grace));
    let mut stray = worker.stray.clone();
    let mut errors = worker.error_answers();
    let (mut announced, mut answered) = worker.announced_answers();

    // The second process: ready, one task, then EOF instead of stop.
    match Worker::start(words) {
        Ok(mut worker) => {
            let result = worker.wait_ready(args.timeout).and_then(|_| {
                worker.send_task(0, &json!(1));
                worker.check_answers(&[0], args.timeout)?;
                worker.close_stdin();
                worker.wait_exit(args.grace)
            });
            list.record(EOF, result);
            stray.extend(worker.stray.clone());
            errors += worker.error_answers();
            let (more_announced, more_answered) = worker.announced_answers();
            announced += more_announced;
            answered += more_answered;
        }
        Err(err) => list.fail(EOF, err),
    }

    let stray_check = "stdout carries only protocol messages (optional)";
    match stray.first() {
        None => list.pass(stray_check, String::new()),
        Some(first) => list.warn(
            stray_check,
            format!(
                "{} other line(s), forwarded as logs in a run, e.g. {first:?}; log to stderr",
                stray.len()
            ),
        ),
    }
    let started_check = "announces each task with `started` (optional)";
    match announced {
        0 => list.skip(
            started_check,
            "never sends it; a crash is then charged to the oldest task not answered, right for a worker that runs one task at a time".into(),
        ),
        _ if announced == answered => list.pass(started_check, format!("all {answered} tasks")),
        _ => list.warn(
            started_check,
            format!(
                "{announced} of {answered} answered tasks; a worker that sends it is charged for a crash only by the tasks it started, so send it for every task"
            ),
        ),
    }
    let error_check = "reports a failing input as an error answer (optional)";
    if errors > 0 {
        list.pass(error_check, format!("{errors} error answer(s)"));
    } else {
        list.skip(
            error_check,
            "every input got a result; fine if no input can fail".into(),
        );
    }
}

/// The checks as they are printed, and how many required ones failed.
#[derive(Default)]
struct Checklist {
    required: usize,
    failed: usize,
}

impl Checklist {
    fn line(&self, mark: &str, name: &str, detail: &str) {
        if detail.is_empty() {
            outln!("  [{mark}] {name}");
        } else {
            outln!("  [{mark}] {name}: {detail}");
        }
    }

    fn pass(&mut self, name: &str, detail: String) {
        if !name.ends_with("(optional)") {
            self.required += 1;
        }
        self.line("pass", name, &detail);
    }

    fn fail(&mut self, name: &str, detail: String) {
        self.required += 1;
        self.failed += 1;
        self.line("FAIL", name, &detail);
    }

    fn warn(&mut self, name: &str, detail: String) {
        self.line("warn", name, &detail);
    }

    fn skip(&mut self, name: &str, detail: String) {
        self.line("skip", name, &detail);
    }

    fn record(&mut self, name: &str, result: Result<String, String>) {
        match result {
            Ok(detail) => self.pass(name, detail),
            Err(detail) => self.fail(name, detail),
        }
    }

    fn required_failed(&self) -> usize {
        self.failed
    }
}

/// One worker process under test, its stdout read by a thread into a channel (closed
/// at EOF) and its stderr forwarded as `[worker] line`.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Vec<u8>>,
    stdout_open: bool,
    /// Answers by task id, in arrival order ("result" or "error").
    answers: BTreeMap<TaskId, Vec<&'static str>>,
    /// Ids in the order they were first answered.
    answer_order: Vec<TaskId>,
    /// Ids sent so far.
    sent: Vec<TaskId>,
    /// How many `started` messages came for each id.
    started: BTreeMap<TaskId, usize>,
    /// Ids whose `started` came after their answer.
    started_after_answer: Vec<TaskId>,
    /// stdout lines that are not protocol messages.
    stray: Vec<String>,
    ready: bool,
}

impl Worker {
    fn start(words: &[String]) -> Result<Worker, String> {
        let env = WorkerEnv {
            index: 0,
            procs: 1,
            arrays: BTreeMap::new(),
        };
        let mut child = Command::new(&words[0])
            .args(&words[1..])
            .envs(env.to_vars())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| {
                let err = explain_start_error(words[0].as_ref(), err);
                format!("cannot start {}: {err}", words[0])
            })?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                let mut line = Vec::new();
                match reader.read_until(b'\n', &mut line) {
                    Ok(1..) if sender.send(line).is_ok() => {}
                    _ => return,
                }
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                eprintln!("[worker] {line}");
            }
        });
        Ok(Worker {
            stdin: child.stdin.take(),
            child,
            lines,
            stdout_open: true,
            answers: BTreeMap::new(),
            answer_order: Vec::new(),
            sent: Vec::new(),
            started: BTreeMap::new(),
            started_after_answer: Vec::new(),
            stray: Vec::new(),
            ready: false,
        })
    }

    fn send(&mut self, bytes: &[u8]) {
        if let Some(stdin) = self.stdin.as_mut() {
            if stdin.write_all(bytes).and_then(|()| stdin.flush()).is_err() {
                // The worker closed its stdin (or died): what it did shows in the checks.
                self.stdin = None;
            }
        }
    }

    fn send_task(&mut self, id: TaskId, input: &Value) {
        self.sent.push(id);
        self.send(&encode_task(id, 1, input, None));
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Reads one stdout line (or notes EOF), waiting until `deadline`; false if none came.
    fn read_one(&mut self, deadline: Instant) -> bool {
        if !self.stdout_open {
            return false;
        }
        let line = match self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => return false,
            Err(RecvTimeoutError::Disconnected) => {
                self.stdout_open = false;
                return false;
            }
        };
        match decode_line::<FromWorker>(&line) {
            Ok(FromWorker::Ready) => self.ready = true,
            Ok(FromWorker::Started { id }) => self.on_started(id),
            Ok(FromWorker::Result { id, .. }) => self.on_answer(id, "result"),
            Ok(FromWorker::Error { id, .. }) => self.on_answer(id, "error"),
            Err(_) => self
                .stray
                .push(String::from_utf8_lossy(&line).trim_end().to_string()),
        }
        true
    }

    fn on_answer(&mut self, id: TaskId, kind: &'static str) {
        let answers = self.answers.entry(id).or_default();
        if answers.is_empty() {
            self.answer_order.push(id);
        }
        answers.push(kind);
    }

    fn on_started(&mut self, id: TaskId) {
        if self.answers.contains_key(&id) {
            self.started_after_answer.push(id);
        }
        *self.started.entry(id).or_default() += 1;
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        let deadline = started + timeout;
        while !self.ready {
            if !self.read_one(deadline) {
                return Err(if self.stdout_open {
                    format!("no ready within {timeout:?}; {READY_HINT}")
                } else {
                    format!("closed its stdout before ready ({})", self.exit_text())
                });
            }
        }
        Ok(started.elapsed())
    }

    /// Waits until each of `ids` is answered, then a little longer for duplicates.
    fn check_answers(&mut self, ids: &[TaskId], timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let missing = |w: &Worker| ids.iter().filter(|id| !w.answers.contains_key(id)).count();
        while missing(self) > 0 && self.read_one(deadline) {}
        let linger = Instant::now() + Duration::from_millis(100);
        while self.read_one(linger) {}
        let mut problems = Vec::new();
        let unanswered: Vec<TaskId> = ids
            .iter()
            .copied()
            .filter(|id| !self.answers.contains_key(id))
            .collect();
        if !unanswered.is_empty() {
            let why = if self.stdout_open {
                format!("within {timeout:?}")
            } else {
                format!("before stdout closed ({})", self.exit_text())
            };
            problems.push(format!("no answer to task(s) {unanswered:?} {why}"));
        }
        let twice: Vec<TaskId> = ids
            .iter()
            .copied()
            .filter(|id| self.answers.get(id).is_some_and(|a| a.len() > 1))
            .collect();
        if !twice.is_empty() {
            problems.push(format!("answered task(s) {twice:?} more than once"));
        }
        let unknown = self.never_given(self.answers.keys());
        if !unknown.is_empty() {
            problems.push(format!(
                "answered task id(s) {unknown:?} it was never given"
            ));
        }
        problems.extend(self.started_problems(ids));
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let kinds: Vec<&str> = ids.iter().map(|id| self.answers[id][0]).collect();
        let results = kinds.iter().filter(|&&k| k == "result").count();
        let order: Vec<TaskId> = self
            .answer_order
            .iter()
            .copied()
            .filter(|id| ids.contains(id))
            .collect();
        let in_order = order.windows(2).all(|pair| pair[0] < pair[1]);
        Ok(format!(
            "{results} result(s), {} error(s){}",
            ids.len() - results,
            match (ids.len(), in_order) {
                (1, _) => "",
                (_, true) => ", in order",
                (_, false) => ", out of order",
            }
        ))
    }

    /// The ids among `ids` that were never sent to the worker.
    fn never_given<'a>(&self, ids: impl Iterator<Item = &'a TaskId>) -> Vec<TaskId> {
        ids.copied().filter(|id| !self.sent.contains(id)).collect()
    }

    /// What is wrong with the `started` messages so far: for ids never sent, and for
    /// any of `ids` after its answer or more than once.
    fn started_problems(&self, ids: &[TaskId]) -> Vec<String> {
        let mut problems = Vec::new();
        let unknown = self.never_given(self.started.keys());
        if !unknown.is_empty() {
            problems.push(format!(
                "sent `started` for task id(s) {unknown:?} it was never given"
            ));
        }
        let late: Vec<TaskId> = ids
            .iter()
            .copied()
            .filter(|id| self.started_after_answer.contains(id))
            .collect();
        if !late.is_empty() {
            problems.push(format!(
                "sent `started` for task(s) {late:?} after answering them"
            ));
        }
        let twice: Vec<TaskId> = ids
            .iter()
            .copied()
            .filter(|id| self.started.get(id).is_some_and(|&count| count > 1))
            .collect();
        if !twice.is_empty() {
            problems.push(format!(
                "sent `started` for task(s) {twice:?} more than once"
            ));
        }
        problems
    }

    /// Waits up to `grace` for the exit; kills the worker if it does not come.
    fn wait_exit(&mut self, grace: Duration) -> Result<String, String> {
        let started = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => {
                    return Ok(format!("after {:.2?}", started.elapsed()))
                }
                Ok(Some(_)) => return Err(self.exit_text()),
                Ok(None) if started.elapsed() >= grace => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(format!("still running after {grace:?} (killed it)"));
                }
                Ok(None) => {
                    // Keep reading stdout so a chatty worker cannot block on a full pipe.
                    let next = Instant::now() + Duration::from_millis(10);
                    if !self.read_one(next) {
                        std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    }
                }
                Err(err) => return Err(format!("waiting for it: {err}")),
            }
        }
    }

    /// How the process ended, or that it still runs.
    fn exit_text(&mut self) -> String {
        // Give a process whose stdout just closed a moment to finish exiting.
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return ExitStatus::from(status).to_string(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => return "still running".into(),
            }
        }
    }

    /// How many of the answered tasks it was given had a `started`, and how many
    /// it answered.
    fn announced_answers(&self) -> (usize, usize) {
        let answered: Vec<&TaskId> = self
            .answers
            .keys()
            .filter(|id| self.sent.contains(id))
            .collect();
        let announced = answered
            .iter()
            .filter(|id| self.started.contains_key(id))
            .count();
        (announced, answered.len())
    }

    fn error_answers(&self) -> usize {
        self.answers
            .values()
            .filter(|answers| answers.first() == Some(&"error"))
            .count()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

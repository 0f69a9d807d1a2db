//! `procpool serve`: a private supervisor for one client (the Python package), steered
//! over a control channel. Requests come in on stdin and every task's end, worker
//! event and worker log line goes out on stdout, one JSON object per line
//! (child/PROTOCOL.md, "procpool serve").
//!
//! The channel is the process's stdin and stdout: a client starts serve with two pipes
//! (Python's `subprocess.Popen(stdin=PIPE, stdout=PIPE)`), no descriptor numbers to
//! pass, and the death of the client, even by `kill -9`, closes its end of stdin. That
//! EOF is read from the pool's own wait, like the input of `run tasks`, so serve sees
//! it at once, kills every worker's process group in one sweep and exits. serve's
//! stderr stays free for its own fatal errors.
//!
//! serve runs in a session of its own, so the terminal's Ctrl-C reaches the client
//! alone; the client passes it on as an `interrupt` request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result};
use procpool_child::{ArraySpec, TaskId};
use procpool_shm::SharedArray;
use procpool_supervisor::{
    Event, KillReason, LineReader, Pool, PoolError, PoolReport, ReadOutcome, RunEnd, TaskOptions,
    TaskOutcome,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cli::PoolArgs;
use crate::registry;
use crate::run::{self, UsageError};
use crate::source::lines::open_stdin;

/// Options of `procpool serve`: the pool options of `procpool run`, and the arrays the
/// client shares.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub pool: PoolArgs,
    /// Share the `.npy` image in inherited descriptor FD (a memfd, say) with every
    /// worker as array NAME, writable unless `:ro` follows [repeatable]
    #[arg(long = "array", value_name = "NAME=FD[:ro]", value_parser = parse_array)]
    pub arrays: Vec<ArrayArg>,
}

/// One `--array`.
#[derive(Debug, Clone)]
pub struct ArrayArg {
    name: String,
    fd: i32,
    writable: bool,
}

fn parse_array(text: &str) -> Result<ArrayArg, String> {
    let shape = "expected NAME=FD or NAME=FD:ro, as in points=5";
    let (name, rest) = text.split_once('=').ok_or(shape)?;
    let (fd, writable) = match rest.strip_suffix(":ro") {
        Some(fd) => (fd, false),
        None => (rest, true),
    };
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid_name {
        return Err(format!(
            "{name:?} is not an array name (letters, digits, _ and -)"
        ));
    }
    let fd = fd.parse::<i32>().ok().filter(|fd| *fd > 2).ok_or(shape)?;
    Ok(ArrayArg {
        name: name.into(),
        fd,
        writable,
    })
}

/// The client's id for a task: any number it likes, unique among its open tasks.
type ClientId = u64;

/// A request from the client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Request {
    /// Run `input` as a task; its end comes back under `id`. `timeout_s` and
    /// `max_attempts` override the pool's for this task alone.
    Submit {
        id: ClientId,
        input: Value,
        timeout_s: Option<f64>,
        max_attempts: Option<u32>,
    },
    /// Withdraw task `id` if no worker has it yet.
    Cancel { id: ClientId },
    /// As Ctrl-C: the first stops dispatch and lets running tasks finish within the
    /// grace period, the second kills the workers now.
    Interrupt,
    /// No more submissions: finish what was submitted (all waiting tasks withdrawn
    /// first with `cancel_futures`), say `bye` with the report, and exit. Whether the
    /// client waits for that is its own business.
    Shutdown {
        #[serde(default)]
        cancel_futures: bool,
    },
}

/// The writing half of the channel, shared with the pool's log sink.
type Outbox = Rc<RefCell<Channel>>;

/// stdout, written as JSON lines; a failed write means the client is gone.
struct Channel {
    out: BufWriter<File>,
    broken: bool,
}

impl Channel {
    fn send(&mut self, message: &Value) {
        if self.broken {
            return;
        }
        let written = serde_json::to_writer(&mut self.out, message)
            .map_err(io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"));
        self.broken = written.is_err();
    }

    fn flush(&mut self) {
        if !self.broken {
            self.broken = self.out.flush().is_err();
        }
    }
}

/// The client's tasks on the pool that have not ended, both ways round.
#[derive(Default)]
struct Tasks {
    by_pool: HashMap<TaskId, ClientId>,
    by_client: HashMap<ClientId, TaskId>,
    /// `shutdown` came: nothing more is taken.
    closing: bool,
}

pub fn serve(args: ServeArgs) -> Result<ExitCode> {
    if args.pool.child.is_none() {
        return Err(UsageError(
            "procpool serve needs --child CMD, the worker to run tasks on".into(),
        )
        .into());
    }
    // Out of the terminal's session, so that its Ctrl-C reaches the client alone
    // (already a session leader, started so by the client, is fine too).
    let _ = nix::unistd::setsid();
    let procs = run::procs(&args.pool);
    let child_only = registry::find("tasks").expect("the tasks registration exists");
    let mut config = run::pool_config(&args.pool, procs, child_only)?;
    config.handle_interrupts = false;
    // Kept open for the pool's life: each maps the client's array once more.
    let arrays = open_arrays(&args.arrays)?;
    for (arg, array) in args.arrays.iter().zip(&arrays) {
        config.inherit_fds.push(array.shared_fd());
        config
            .arrays
            .insert(arg.name.clone(), ArraySpec::of(array, arg.writable));
    }
    let stdout = File::from(io::stdout().as_fd().try_clone_to_owned()?);
    let outbox: Outbox = Rc::new(RefCell::new(Channel {
        out: BufWriter::with_capacity(1 << 16, stdout),
        broken: false,
    }));
    let log_outbox = Rc::clone(&outbox);
    // Flushed at once: the pool calls this from inside its wait, where no event may
    // follow for a long time (a task that logs, then sleeps).
    config.on_log = Box::new(move |slot, line| {
        let mut channel = log_outbox.borrow_mut();
        channel.send(&json!({"type": "log", "slot": slot, "line": line}));
        channel.flush();
    });
    // Requests are unbounded lines: the client is the user's own program, and a
    // 100 MB argument is one request.
    let input = LineReader::new(open_stdin().context("opening stdin")?, None);
    let pool = Pool::start(config).context("starting the worker pool")?;
    outbox.borrow_mut().send(&json!({
        "type": "hello",
        "version": env!("CARGO_PKG_VERSION"),
        "procs": procs,
        "pid": std::process::id(),
    }));
    Ok(drive(pool, input, &outbox))
}

/// Opens each `--array` through its descriptor, checking that it holds an `.npy` image.
fn open_arrays(args: &[ArrayArg]) -> Result<Vec<SharedArray>> {
    args.iter()
        .map(|arg| {
            let path = PathBuf::from(format!("/proc/self/fd/{}", arg.fd));
            SharedArray::open(&path, arg.writable).map_err(|err| {
                UsageError(format!(
                    "--array {}={}: {err}; pass an inherited memfd sealed against \
                     shrinking (MFD_ALLOW_SEALING, F_SEAL_SHRINK) holding a complete .npy image",
                    arg.name, arg.fd
                ))
                .into()
            })
        })
        .collect()
}

/// Puts submissions on the pool, answers requests and passes on every event until the
/// client shuts the pool down, interrupts it to the end, or goes away.
fn drive(mut pool: Pool, mut input: LineReader, outbox: &Outbox) -> ExitCode {
    let mut tasks = Tasks::default();
    let mut aborted = None;
    loop {
        // Finished, and every task's end passed on (the pool counts a task finished
        // before its event is taken).
        if tasks.closing && pool.unfinished() == 0 && !pool.has_events() {
            break;
        }
        if !pool.has_events() {
            outbox.borrow_mut().flush();
        }
        if outbox.borrow().broken {
            return vanish(pool);
        }
        let event = match pool.next_event_or_input(input.fd()) {
            Ok(Some(event)) => event,
            // Interrupted and drained (input is waited on until then).
            Ok(None) => break,
            Err(PoolError::Aborted(reason)) => {
                aborted = Some(reason.to_string());
                break;
            }
            Err(err) => {
                aborted = Some(err.to_string());
                break;
            }
        };
        if let Event::InputReady = event {
            if let ReadOutcome::Eof | ReadOutcome::Failed(_) = input.fill() {
                return vanish(pool);
            }
            while let Some(line) = input.next_line() {
                take_request(&line, &mut pool, &mut tasks, outbox);
            }
            continue;
        }
        pass_on(event, &mut tasks, outbox);
    }
    let report = pool.shutdown();
    say_goodbye(&report, aborted, &mut tasks, outbox)
}

/// The client is gone: kill every worker's process group now (two interrupts, the
/// second kills) and exit without waiting for anyone. The kernel's
/// `PR_SET_PDEATHSIG` would kill the workers too, but not what they started.
fn vanish(mut pool: Pool) -> ExitCode {
    pool.interrupt();
    pool.interrupt();
    std::process::exit(1)
}

/// Acts on one request line.
fn take_request(line: &[u8], pool: &mut Pool, tasks: &mut Tasks, outbox: &Outbox) {
    let warn = |message: String| {
        outbox
            .borrow_mut()
            .send(&json!({"type": "warning", "message": message}))
    };
    let request = match serde_json::from_slice::<Request>(line) {
        Ok(request) => request,
        Err(err) => {
            let text = String::from_utf8_lossy(line);
            let shown: String = text.chars().take(200).collect();
            return warn(format!(
                "ignored a request that is not one ({err}): {shown}"
            ));
        }
    };
    match request {
        Request::Submit { id, .. } if tasks.by_client.contains_key(&id) => warn(format!(
            "task {id} is already submitted; the second is ignored"
        )),
        Request::Submit { id, .. } if tasks.closing => {
            outbox
                .borrow_mut()
                .send(&json!({"type": "not_run", "id": id}));
        }
        Request::Submit {
            id,
            input,
            timeout_s,
            max_attempts,
        } => match task_options(timeout_s, max_attempts) {
            Ok(options) => {
                let task = pool.put_with(input, options);
                tasks.by_pool.insert(task, id);
                tasks.by_client.insert(id, task);
            }
            Err(message) => outbox
                .borrow_mut()
                .send(&json!({"type": "error", "id": id, "attempts": 0, "message": message})),
        },
        Request::Cancel { id } => cancel(id, pool, tasks, outbox),
        Request::Interrupt => pool.interrupt(),
        Request::Shutdown { cancel_futures } => {
            tasks.closing = true;
            if cancel_futures {
                let open: Vec<ClientId> = tasks.by_client.keys().copied().collect();
                for id in open {
                    cancel(id, pool, tasks, outbox);
                }
            }
        }
    }
}

/// A submission's own options, checked.
fn task_options(timeout_s: Option<f64>, max_attempts: Option<u32>) -> Result<TaskOptions, String> {
    let timeout = match timeout_s {
        None => None,
        Some(seconds) => Some(
            Duration::try_from_secs_f64(seconds)
                .ok()
                .filter(|timeout| !timeout.is_zero())
                .ok_or_else(|| {
                    format!("timeout_s must be a positive number of seconds, not {seconds}")
                })?,
        ),
    };
    if max_attempts == Some(0) {
        return Err("max_attempts must be at least 1".into());
    }
    Ok(TaskOptions {
        timeout,
        max_attempts,
    })
}

/// Withdraws a task that no worker has yet; one already running ends as usual.
fn cancel(id: ClientId, pool: &mut Pool, tasks: &mut Tasks, outbox: &Outbox) {
    let Some(&task) = tasks.by_client.get(&id) else {
        return;
    };
    if pool.cancel(task) {
        tasks.by_pool.remove(&task);
        tasks.by_client.remove(&id);
        outbox
            .borrow_mut()
            .send(&json!({"type": "cancelled", "id": id}));
    }
}

/// One pool event as the client's message.
fn pass_on(event: Event, tasks: &mut Tasks, outbox: &Outbox) {
    let message = match event {
        Event::Task {
            id,
            attempts,
            outcome,
            ..
        } => {
            let Some(client) = tasks.by_pool.remove(&id) else {
                return;
            };
            tasks.by_client.remove(&client);
            task_end(client, attempts, outcome)
        }
        Event::WorkerStarted { slot, pid } => {
            json!({"type": "worker_started", "slot": slot, "pid": pid})
        }
        Event::WorkerDied {
            crash,
            tasks: lost,
            restart_in,
            ..
        } => {
            let held: Vec<Value> = lost
                .iter()
                .filter_map(|task| tasks.by_pool.get(&task.id))
                .map(|client| json!(client))
                .collect();
            json!({
                "type": "worker_died",
                "crash": crash,
                "message": crash.to_string(),
                "tasks": held,
                "restart_in_s": restart_in.map(|delay| delay.as_secs_f64()),
            })
        }
        Event::Interrupted { again } => json!({"type": "interrupted", "again": again}),
        _ => return,
    };
    outbox.borrow_mut().send(&message);
}

/// A task's end: `result`, `error` (the worker said the task failed) or `failed`
/// (quarantined after crashes, with each crash).
fn task_end(id: ClientId, attempts: u32, outcome: TaskOutcome) -> Value {
    match outcome {
        TaskOutcome::Output(output) => {
            json!({"type": "result", "id": id, "attempts": attempts, "output": output})
        }
        TaskOutcome::Error(message) => {
            json!({"type": "error", "id": id, "attempts": attempts, "message": message})
        }
        TaskOutcome::Failed(crashes) => {
            let message = TaskOutcome::Failed(crashes.clone()).failure_message(attempts);
            // The last death decides how the client raises it (TimeoutError or a crash).
            let timed_out = crashes
                .last()
                .is_some_and(|crash| crash.killed_by_procpool == Some(KillReason::TaskTimeout));
            json!({
                "type": "failed",
                "id": id,
                "attempts": attempts,
                "message": message,
                "timed_out": timed_out,
                "crashes": crashes,
            })
        }
        // An end this binary does not know yet: still one end, so the client never waits.
        other => json!({
            "type": "error",
            "id": id,
            "attempts": attempts,
            "message": other.failure_message(attempts).unwrap_or_default(),
        }),
    }
}

/// The last words: a `not_run` for every task that did not end (interrupted, aborted),
/// `aborted` with why if the pool gave up, then `bye` with the report.
fn say_goodbye(
    report: &PoolReport,
    aborted: Option<String>,
    tasks: &mut Tasks,
    outbox: &Outbox,
) -> ExitCode {
    let mut outbox = outbox.borrow_mut();
    // The reason first, so that the client can give it to each task left open.
    if let Some(reason) = &aborted {
        outbox.send(&json!({"type": "aborted", "reason": reason}));
    }
    for (_, id) in tasks.by_pool.drain() {
        outbox.send(&json!({"type": "not_run", "id": id}));
    }
    outbox.send(&json!({"type": "bye", "report": report}));
    outbox.flush();
    match (aborted, &report.end) {
        (None, RunEnd::Completed) => ExitCode::SUCCESS,
        (None, RunEnd::Interrupted) => ExitCode::from(run::EXIT_INTERRUPTED),
        _ => ExitCode::FAILURE,
    }
}

//! `procpool run <workload> --broker URL --queue NAME`: the workload plans and
//! reduces as it does locally; its tasks go to the queue and their ends come back
//! from the run's results stream, each counted once, the first (execution is at least
//! once: a task whose node died runs again elsewhere).
//!
//! At most `--max-pending` tasks are in Redis at a time, so an input of any length
//! never fills Redis's memory; results are trimmed from their stream as they are read.
//! Ctrl-C, SIGTERM or SIGHUP withdraws the tasks no node has taken yet and ends the
//! run (exit 130); nodes finish what they hold and drop its ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use procpool_child::TaskId;
use procpool_supervisor::{PoolReport, RunEnd, TaskFailure, TaskOutcome};
use serde_json::{json, Value};

use super::{
    ensure_group, entry_field, stream_entries, Broker, BrokerArgs, Keys, RESULTS_TTL_S,
    RUN_KEY_TTL_S,
};
use crate::registry::Registration;
use crate::run::UsageError;
use crate::source::{Answer, Summary, TaskSource};

/// Options of `run --broker` beyond where the queue is.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Broker options")]
pub struct SubmitArgs {
    /// With --broker: tasks of this run in Redis at most at any time
    #[arg(long, global = true, default_value_t = 4096,
          value_parser = crate::parse::whole::<usize>(1, 1 << 24))]
    pub max_pending: usize,
}

/// How long one read of the results stream waits.
const READ_BLOCK_MS: u64 = 50;
const RUN_KEY_RENEWAL: Duration = Duration::from_secs(10);

/// How a broker run ended, for the printer.
pub struct BrokerOutcome {
    pub report: PoolReport,
    pub summary: Option<Summary>,
    pub error: Option<anyhow::Error>,
    /// Ends after the first for the same task, dropped.
    pub duplicates: u64,
    /// Nodes with a live heartbeat at the end.
    pub nodes: usize,
}

/// A task in Redis: its stream entry and its input, kept to put it again if Redis
/// comes back without it.
struct Pending {
    entry: String,
    input: Arc<Value>,
}

/// Runs `source`'s tasks through the queue and reduces their ends.
pub fn drive(
    mut source: Box<dyn TaskSource>,
    workload: &'static Registration,
    (url, queue): (&str, &str),
    broker_args: &BrokerArgs,
    submit: &SubmitArgs,
) -> Result<BrokerOutcome> {
    if let Some(reason) = source.one_machine() {
        return Err(UsageError(format!(
            "run {} cannot use --broker: {reason}; run it on one machine, without --broker",
            workload.name
        ))
        .into());
    }
    let keys = Keys::new(queue);
    let mut broker = Broker::connect(url, broker_args)?;
    ensure_group(&mut broker, &keys)?;
    claim_queue(&mut broker, &keys, queue, workload.name)?;
    let run = run_id();
    renew_run_key(&mut broker, &keys, &run)?;
    let interrupted = interrupt_flag()?;

    let started = Instant::now();
    let mut report = empty_report();
    let mut pending: HashMap<TaskId, Pending> = HashMap::new();
    let mut next_id: TaskId = 0;
    let mut last_result = "0-0".to_string();
    let mut duplicates = 0;
    let mut error = None;
    let mut planning_failed = false;
    // A task's end could not be handled (a result that cannot be written): the run stops.
    let mut stopped = false;
    let mut run_key_renewed = Instant::now();
    loop {
        // Every pass, waiting for input included: a run key let expire makes the
        // nodes drop this run's tasks.
        if run_key_renewed.elapsed() >= RUN_KEY_RENEWAL || broker.take_reconnected() {
            if !keep_run_key(&mut broker, &keys, &run)? {
                // Gone: Redis restarted without its data, or this process stalled past
                // the key's life. The queue is set up again and every unfinished task
                // goes in again (ends are counted once, whatever runs twice).
                eprintln!(
                    "procpool: Redis lost this run's state; putting {} tasks on the queue again",
                    pending.len()
                );
                ensure_group(&mut broker, &keys)?;
                claim_queue(&mut broker, &keys, queue, workload.name)?;
                renew_run_key(&mut broker, &keys, &run)?;
                let again: Vec<(TaskId, Arc<Value>)> = pending
                    .iter()
                    .map(|(id, task)| (*id, Arc::clone(&task.input)))
                    .collect();
                put_tasks(&mut broker, &keys, &run, again, &mut pending)?;
            }
            run_key_renewed = Instant::now();
        }
        if interrupted.load(Ordering::Relaxed) {
            eprintln!("procpool: interrupted; withdrawing this run's tasks from the queue");
            report.end = RunEnd::Interrupted;
            break;
        }
        // Put tasks while there is room, in one round trip per batch.
        // A source may have nothing now and more once results come in (a crawl's
        // links): it is done when it has nothing, nothing is out and no input may come.
        let mut batch = Vec::new();
        let mut has_more = !planning_failed;
        while has_more && pending.len() + batch.len() < submit.max_pending {
            match source.next_task(next_id) {
                Some(Ok(input)) => {
                    batch.push((next_id, input));
                    next_id += 1;
                }
                Some(Err(err)) => {
                    error = Some(err.context("preparing tasks"));
                    planning_failed = true;
                    has_more = false;
                }
                None => has_more = false,
            }
        }
        put_tasks(&mut broker, &keys, &run, batch, &mut pending)?;
        report.tasks_total = next_id;
        let streaming = !planning_failed && source.input().is_some();
        if pending.is_empty() && !has_more && !streaming {
            break;
        }
        if pending.is_empty() && streaming {
            wait_for_input(&mut *source)?;
            continue;
        }
        if streaming && input_readable(&*source, 0) {
            source.read_input()?;
        }
        let entries = stream_entries(broker.call(|connection| {
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1000)
                .arg("BLOCK")
                .arg(READ_BLOCK_MS)
                .arg("STREAMS")
                .arg(keys.results(&run))
                .arg(&last_result)
                .query(connection)
        })?);
        for (_, fields) in &entries {
            let Some(id) = entry_field(fields, "id").and_then(|id| id.parse::<TaskId>().ok())
            else {
                continue;
            };
            if pending.remove(&id).is_none() {
                duplicates += 1;
                continue;
            }
            let end: Value = entry_field(fields, "end")
                .and_then(|text| serde_json::from_str(text).ok())
                .unwrap_or_else(|| json!({"error": "a task end that is not JSON"}));
            if let Err(err) = hand_over(&mut *source, id, end, &mut report) {
                error = Some(err);
                stopped = true;
                break;
            }
        }
        if let Some((entry, _)) = entries.last() {
            last_result = entry.clone();
            // Read: trimmed, so the stream stays as short as the unread ends.
            broker.call(|connection| {
                redis::cmd("XTRIM")
                    .arg(keys.results(&run))
                    .arg("MINID")
                    .arg(&last_result)
                    .query::<()>(connection)
            })?;
            source.flush()?;
        }
        if stopped {
            break;
        }
    }
    // Withdrawn: tasks still in the stream (a node holding one finishes it and drops
    // its end, the run's key being gone).
    report.tasks_not_run = pending.len() as u64;
    let entries: Vec<&str> = pending.values().map(|task| task.entry.as_str()).collect();
    for chunk in entries.chunks(1000) {
        broker.call(|connection| {
            redis::cmd("XDEL")
                .arg(keys.tasks())
                .arg(chunk)
                .query::<()>(connection)
        })?;
    }
    broker.call(|connection| {
        redis::cmd("DEL")
            .arg(keys.run(&run))
            .arg(keys.results(&run))
            .query::<()>(connection)
    })?;
    source.flush()?;
    let nodes = super::status::live_nodes(&mut broker, &keys)?;
    report.wall = started.elapsed();
    report.supervisor_cpu = own_cpu();
    let summary = match (&error, &report.end) {
        (None, RunEnd::Completed) => match source.summary(&report) {
            Ok(summary) => Some(summary),
            Err(err) => {
                error = Some(err);
                None
            }
        },
        _ => None,
    };
    Ok(BrokerOutcome {
        report,
        summary,
        error,
        duplicates,
        nodes,
    })
}

/// Records that `queue` runs `workload`, or refuses when it runs another.
fn claim_queue(broker: &mut Broker, keys: &Keys, queue: &str, workload: &str) -> Result<()> {
    let (current,): (String,) = broker.call(|connection| {
        redis::pipe()
            .cmd("SET")
            .arg(keys.workload())
            .arg(workload)
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(keys.workload())
            .query(connection)
    })?;
    if current != workload {
        return Err(UsageError(format!(
            "queue {queue} runs workload {current}, not {workload}: its nodes start {current} \
             workers; use another --queue"
        ))
        .into());
    }
    Ok(())
}

/// A name for this run's keys, unique enough across submitters.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    let mixed = crate::splitmix::mix(nanos ^ (u64::from(std::process::id()) << 32));
    format!("{mixed:016x}")
}

/// Renews the run's key, and its results stream's expiry: a submitter killed outright
/// leaves neither behind for long.
fn renew_run_key(broker: &mut Broker, keys: &Keys, run: &str) -> Result<()> {
    broker.call(|connection| {
        redis::pipe()
            .cmd("SET")
            .arg(keys.run(run))
            .arg(std::process::id())
            .arg("EX")
            .arg(RUN_KEY_TTL_S)
            .ignore()
            .cmd("EXPIRE")
            .arg(keys.results(run))
            .arg(RESULTS_TTL_S)
            .ignore()
            .query::<()>(connection)
    })
}

/// Renews the run's key if it still exists; `false` if it is gone.
fn keep_run_key(broker: &mut Broker, keys: &Keys, run: &str) -> Result<bool> {
    let (kept,): (Option<String>,) = broker.call(|connection| {
        redis::pipe()
            .cmd("SET")
            .arg(keys.run(run))
            .arg(std::process::id())
            .arg("XX")
            .arg("EX")
            .arg(RUN_KEY_TTL_S)
            .cmd("EXPIRE")
            .arg(keys.results(run))
            .arg(RESULTS_TTL_S)
            .ignore()
            .query(connection)
    })?;
    Ok(kept.is_some())
}

/// Appends `tasks` to the queue in one pipeline, recording each one's entry.
fn put_tasks(
    broker: &mut Broker,
    keys: &Keys,
    run: &str,
    tasks: Vec<(TaskId, Arc<Value>)>,
    pending: &mut HashMap<TaskId, Pending>,
) -> Result<()> {
    if tasks.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for (id, input) in &tasks {
        pipe.cmd("XADD")
            .arg(keys.tasks())
            .arg("*")
            .arg("run")
            .arg(run)
            .arg("id")
            .arg(*id)
            .arg("input")
            .arg(input.to_string());
    }
    let entries: Vec<String> = broker.call(|connection| pipe.query(connection))?;
    for ((id, input), entry) in tasks.into_iter().zip(entries) {
        pending.insert(id, Pending { entry, input });
    }
    Ok(())
}

/// Passes one task's end to the source and counts it.
fn hand_over(
    source: &mut dyn TaskSource,
    id: TaskId,
    end: Value,
    report: &mut PoolReport,
) -> Result<()> {
    let attempts = end["attempts"].as_u64().unwrap_or(1) as u32;
    if let Some(output) = end.get("output") {
        match source.result(id, output.clone())? {
            Answer::Accepted => report.tasks_ok += 1,
            Answer::Rejected(why) => {
                report.tasks_error += 1;
                let message = format!("a node's worker gave a bad answer: {why}");
                eprintln!("procpool: task {id} failed: {message}");
                source.failure(id, attempts, &TaskOutcome::Error(message.clone()))?;
                report.failures.push(failure(id, attempts, message));
            }
        }
        return Ok(());
    }
    let (message, failed) = match (end["error"].as_str(), end["failed"].as_str()) {
        (Some(message), _) => (message.to_string(), false),
        (None, Some(message)) => (message.to_string(), true),
        (None, None) => (format!("a task end of no known kind: {end}"), false),
    };
    let shown = procpool_shm::untrusted::excerpt(message.as_bytes(), 300);
    match failed {
        true => {
            report.tasks_failed += 1;
            eprintln!("procpool: task {id} {shown}");
        }
        false => {
            report.tasks_error += 1;
            eprintln!("procpool: task {id} failed: {shown}");
        }
    }
    // The source hears of it as an error: the crashes happened on another machine.
    source.failure(id, attempts, &TaskOutcome::Error(message.clone()))?;
    report.retries += u64::from(attempts.saturating_sub(1));
    report.failures.push(failure(id, attempts, message));
    Ok(())
}

fn failure(id: TaskId, attempts: u32, message: String) -> TaskFailure {
    TaskFailure {
        id,
        attempts,
        message,
        crashes: Vec::new(),
    }
}

/// Set by SIGINT, SIGTERM or SIGHUP.
fn interrupt_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(signal, Arc::clone(&flag)).context("handling signals")?;
    }
    Ok(flag)
}

/// Whether the source's input is readable within `timeout_ms`.
fn input_readable(source: &dyn TaskSource, timeout_ms: u16) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let Some(fd) = source.input() else {
        return false;
    };
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::from(timeout_ms)), Ok(n) if n > 0)
}

/// Nothing in Redis and the input is silent: waits for it a while (the loop comes
/// back to check for Ctrl-C).
fn wait_for_input(source: &mut dyn TaskSource) -> Result<()> {
    if input_readable(source, 100) {
        source.read_input()?;
    }
    Ok(())
}

fn empty_report() -> PoolReport {
    PoolReport {
        end: RunEnd::Completed,
        tasks_total: 0,
        tasks_ok: 0,
        tasks_error: 0,
        tasks_failed: 0,
        tasks_not_run: 0,
        retries: 0,
        chaos_kills: 0,
        failures: Vec::new(),
        workers: Vec::new(),
        wall: Duration::ZERO,
        supervisor_cpu: Default::default(),
        supervisor_peak_rss_kib: 0,
        workers_cpu: Default::default(),
        cgroup: None,
    }
}

/// This process's CPU time.
fn own_cpu() -> procpool_supervisor::CpuTime {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(usage) => {
            let duration = |time: nix::sys::time::TimeVal| {
                Duration::from_micros(time.tv_sec() as u64 * 1_000_000 + time.tv_usec() as u64)
            };
            procpool_supervisor::CpuTime {
                user: duration(usage.user_time()),
                sys: duration(usage.system_time()),
            }
        }
        Err(_) => Default::default(),
    }
}

impl BrokerOutcome {
    /// As a local run's: 0 when every task ended ok, 130 when interrupted, else 1.
    pub fn exit_code(&self) -> u8 {
        match self.report.end {
            RunEnd::Interrupted => crate::run::EXIT_INTERRUPTED,
            RunEnd::Completed
                if self.error.is_none()
                    && self.report.tasks_error + self.report.tasks_failed == 0 =>
            {
                0
            }
            _ => 1,
        }
    }

    /// The summary, the tasks line and the time line, or one JSON object with
    /// `--json`; on stderr when the results are on stdout.
    pub fn print(
        &self,
        json_report: bool,
        workload: &Registration,
        queue: &str,
        to_stderr: bool,
    ) -> Result<()> {
        use std::io::Write;
        let report = &self.report;
        if let Some(err) = &self.error {
            procpool_supervisor::stderr_queue::write(&format!("procpool: error: {err:#}\n"));
        }
        let mut text = Vec::new();
        if json_report {
            let mut object = json!({
                "workload": workload.name,
                "queue": queue,
                "nodes": self.nodes,
                "duplicates_dropped": self.duplicates,
                "result": self.summary.as_ref().map_or(Value::Null, |s| s.result.clone()),
            });
            let fields = serde_json::to_value(report).expect("the report serialises");
            if let (Some(object), Some(fields)) = (object.as_object_mut(), fields.as_object()) {
                object.extend(fields.clone());
            }
            writeln!(text, "{object}")?;
        } else {
            if let Some(summary) = &self.summary {
                writeln!(text, "{}: {}", workload.name, summary.headline)?;
            }
            writeln!(
                text,
                "tasks: {} ok, {} error, {} failed, {} not run ({} retries, {} duplicate ends \
                 dropped) through queue {queue} ({} alive)",
                report.tasks_ok,
                report.tasks_error,
                report.tasks_failed,
                report.tasks_not_run,
                report.retries,
                self.duplicates,
                match self.nodes {
                    1 => "1 node".to_string(),
                    many => format!("{many} nodes"),
                },
            )?;
            writeln!(
                text,
                "time: wall {:.3}s; submitter user {:.3}s sys {:.3}s",
                report.wall.as_secs_f64(),
                report.supervisor_cpu.user.as_secs_f64(),
                report.supervisor_cpu.sys.as_secs_f64(),
            )?;
        }
        if to_stderr {
            procpool_supervisor::stderr_queue::write(&String::from_utf8_lossy(&text));
            return Ok(());
        }
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(&text)
            .and_then(|()| stdout.flush())
            .context("writing the summary")
    }
}

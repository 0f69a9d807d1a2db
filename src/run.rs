//! `procpool run`: builds the pool for a workload, feeds it, reports.

use std::cell::RefCell;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::{Context, Result};
use procpool_child::ArraySpec;
use procpool_shm::untrusted::{excerpt, EXCERPT_BYTES};
use procpool_supervisor::{
    stderr_queue, AbortReason, Charge, Event, LostTask, Pool, PoolConfig, PoolError, PoolReport,
    RestartPolicy, RunEnd, TaskFailure, TaskOutcome, WorkerStart,
};
use serde_json::{json, Value};

use crate::cli::{PoolArgs, RunArgs, StartMode};
use crate::joblog::JobLog;
use crate::registry::{Registration, WorkerSide};
use crate::source::{Answer, Summary, TaskSource};
use crate::status::{Status, REDRAW_EVERY};

/// A mistake in how procpool was called: exit code 2, like clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Exit code when Ctrl-C or SIGTERM ended the run (128 + SIGINT, as shells do).
pub const EXIT_INTERRUPTED: u8 = 130;

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let procs = procs(&args.pool);
    let workload = args.workload.registration;
    let broker = args.broker.target()?;
    let through_broker = broker.is_some();
    match (&workload.worker, &args.pool.child, through_broker) {
        (_, Some(_), true) => {
            return Err(UsageError(
                "--child names the nodes' worker: pass it to `procpool node`, not to run --broker"
                    .into(),
            )
            .into())
        }
        (WorkerSide::ChildOnly { usage }, None, false) => {
            return Err(UsageError(usage.to_string()).into())
        }
        _ => {}
    }
    let source = (workload.start)(&args.workload.matches, procs)
        // The workload's own options were wrong (a missing file, an impossible size).
        .map_err(|err| UsageError(format!("{err:#}")))?;
    if let Some((url, queue)) = broker {
        let to_stderr = source.results_on_stdout();
        let outcome = crate::broker::submit::drive(
            source,
            workload,
            (&url, queue),
            &args.broker,
            &args.submit,
        )?;
        outcome.print(args.pool.json, workload, queue, to_stderr)?;
        return Ok(ExitCode::from(outcome.exit_code()));
    }
    // A worker beyond the task count would only start and stop (the workload has
    // planned with `procs` all the same: that is its split, not the pool's size).
    let procs = source
        .total_tasks()
        .map_or(procs, |total| procs.min(total.max(1) as usize));
    let mut config = pool_config(&args.pool, procs, workload)?;
    config.inherit_fds.extend(source.inherited_fds());
    for shared in source.shared_arrays() {
        config.inherit_fds.push(shared.array.shared_fd());
        config.arrays.insert(
            shared.name.into(),
            ArraySpec::of(shared.array, shared.writable),
        );
    }
    let results_on_terminal = source.results_on_stdout() && std::io::stdout().is_terminal();
    let status = Rc::new(RefCell::new(Status::new(
        args.pool.quiet,
        args.pool.progress,
        results_on_terminal,
    )));
    if status.borrow().draws() {
        config.tick = Some(REDRAW_EVERY);
    }
    let log_status = Rc::clone(&status);
    config.on_log = Box::new(move |slot, line| log_status.borrow_mut().worker_log(slot, line));
    let pool = Pool::start(config).context("starting the worker pool")?;
    // Results on stdout: the summary (and the --json report) go to stderr instead.
    let summary_to_stderr = source.results_on_stdout();
    let outcome = drive(pool, source, &args.pool, &status)?;
    print_outcome(&outcome, &args.pool, workload, procs, summary_to_stderr)?;
    Ok(ExitCode::from(outcome.exit_code()))
}

/// The pool size `--procs` asks for: by default the cores this process may use.
pub(crate) fn procs(args: &PoolArgs) -> usize {
    match args.procs {
        Some(procs) => procs as usize,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

pub(crate) fn pool_config(
    args: &PoolArgs,
    procs: usize,
    workload: &'static Registration,
) -> Result<PoolConfig> {
    let start = match (args.start, &args.child) {
        (StartMode::Fork, Some(_)) => {
            return Err(UsageError(
                "--start fork runs built-in workers; drop it to use --child".into(),
            )
            .into())
        }
        (StartMode::Spawn, Some(command)) => {
            let mut words = shell_words::split(command)
                .map_err(|err| UsageError(format!("--child {command:?}: {err}")))?
                .into_iter();
            let program = words
                .next()
                .ok_or_else(|| UsageError("--child needs a command".into()))?;
            WorkerStart::Spawn {
                program: program.into(),
                args: words.map(Into::into).collect(),
            }
        }
        (StartMode::Spawn, None) => WorkerStart::Spawn {
            program: std::env::current_exe()
                .context("finding the procpool executable to start workers")?
                .into(),
            args: vec!["worker".into(), workload.name.into()],
        },
        (StartMode::Fork, None) => {
            WorkerStart::Fork(Arc::new(move || crate::worker::serve_builtin(workload)))
        }
    };
    let mut config = PoolConfig::new(procs, start);
    config.prefetch = args.prefetch as usize;
    config.max_attempts = args.max_attempts;
    let mut restart = RestartPolicy::for_pool(procs);
    if let Some(max) = args.max_restarts {
        restart.intensity = max;
    }
    restart.period = args.restart_period;
    config.restart = restart;
    config.task_timeout = args.task_timeout;
    config.ready_timeout = args.ready_timeout;
    config.max_tasks_per_child = args.max_tasks_per_child;
    config.grace = args.grace;
    config.chaos = args.chaos;
    config.max_line = args.max_line;
    config.handle_interrupts = true;
    config.adopt_orphans = true;
    config.cgroup = !args.no_cgroup;
    Ok(config)
}

/// How a run ended, with everything needed to print it.
struct Outcome {
    report: PoolReport,
    summary: Option<Summary>,
    /// A failure of the run itself (not of a task): the pool gave up, a bad output.
    error: Option<anyhow::Error>,
}

impl Outcome {
    fn exit_code(&self) -> u8 {
        match self.report.end {
            RunEnd::Interrupted => EXIT_INTERRUPTED,
            RunEnd::Aborted(_) => 1,
            RunEnd::Completed if self.error.is_some() => 1,
            RunEnd::Completed if self.report.tasks_error + self.report.tasks_failed > 0 => 1,
            RunEnd::Completed => 0,
            // An end this binary does not know yet did not complete the run.
            _ => 1,
        }
    }
}

/// Feeds the source's tasks to the pool (a bounded window ahead, so a source can
/// stream its inputs), hands every task's end back to it, and shuts the pool down.
///
/// The source is asked for tasks before every wait, so a workload whose tasks come
/// from results (a crawl's links, a BFS level) adds them as they appear; the run ends
/// when the pool is joined and the source has nothing more.
fn drive(
    mut pool: Pool,
    mut source: Box<dyn TaskSource>,
    args: &PoolArgs,
    status: &Rc<RefCell<Status>>,
) -> Result<Outcome> {
    let window = pool.procs() * args.prefetch as usize * 4 + 64;
    let total = source.total_tasks();
    let mut done = 0u64;
    let mut error = None;
    let mut planning_failed = false;
    let mut rejected = Vec::new();
    let mut joblog = args.joblog.as_deref().map(JobLog::open).transpose()?;
    loop {
        let has_room =
            |pool: &Pool, source: &dyn TaskSource| pool.unfinished().max(source.held()) < window;
        while !planning_failed && !pool.interrupted() && has_room(&pool, &*source) {
            match source.next_task(pool.next_id()) {
                Some(Ok(input)) => {
                    let id = pool.put(input);
                    if let Some(log) = &mut joblog {
                        log.queued(id);
                    }
                }
                Some(Err(err)) => {
                    error = Some(err.context("preparing tasks"));
                    planning_failed = true;
                }
                None => break,
            }
        }
        if !pool.has_events() {
            if let Err(err) = source.flush() {
                error = Some(err);
                break;
            }
        }
        // Streamed input is read only when it is readable and the window has room.
        let input = match planning_failed || pool.interrupted() || !has_room(&pool, &*source) {
            true => None,
            false => source.input(),
        };
        let event = match pool.next_event_or_input(input) {
            Ok(Some(event)) => event,
            // Joined right after asking the source for more: the run is over.
            Ok(None) => break,
            Err(PoolError::Aborted(_)) => break,
            Err(err) => return Err(err.into()),
        };
        // What the job log needs of a task's end, taken before the source has it
        // (an output can be large: only its kind is kept).
        let ended = match &event {
            Event::Task {
                id,
                attempts,
                slot,
                outcome,
            } => {
                done += 1;
                joblog.is_some().then(|| TaskEnd {
                    label: source.task_label(*id),
                    id: *id,
                    attempts: *attempts,
                    worker: (*slot, pool.workers()[*slot].pid),
                    outcome: match outcome {
                        TaskOutcome::Output(_) => TaskOutcome::Output(Value::Null),
                        other => other.clone(),
                    },
                    rejected_before: rejected.len(),
                })
            }
            _ => None,
        };
        if let Event::Tick = event {
            status.borrow_mut().draw(&pool.workers(), done, total);
            continue;
        }
        // A death line under a table that still shows the dead pid busy misleads:
        // redraw at once when a slot's process changes, not at the next tick.
        let slot_changed = matches!(
            event,
            Event::WorkerDied { .. } | Event::WorkerStarted { .. }
        );
        if let Err(err) = on_event(
            &mut *source,
            event,
            &pool,
            &mut status.borrow_mut(),
            args.max_attempts,
            &mut rejected,
        ) {
            error = Some(err);
            break;
        }
        if let (Some(log), Some(end)) = (&mut joblog, ended) {
            let rejected = rejected
                .get(end.rejected_before)
                .map(|r| r.message.as_str());
            let logged = log.ended(
                end.label,
                end.id,
                end.attempts,
                end.worker,
                &end.outcome,
                rejected,
            );
            if let Err(err) = logged {
                error = Some(err);
                break;
            }
        }
        if slot_changed {
            status.borrow_mut().draw(&pool.workers(), done, total);
        }
    }
    let mut report = pool.shutdown();
    count_rejected(&mut report, rejected);
    if let Some(log) = &mut joblog {
        if let Err(err) = log.not_run(|id| source.task_label(id)) {
            error.get_or_insert(err);
        }
    }
    status.borrow_mut().clear();
    // A run whose result cannot be summed up (rows missing, say) is a failed run, but
    // the report of what did finish is still printed.
    let summary = match (&error, &report.end) {
        (None, RunEnd::Completed) => source.summary(&report).map_or_else(
            |err| {
                error = Some(err);
                None
            },
            Some,
        ),
        _ => None,
    };
    Ok(Outcome {
        report,
        summary,
        error,
    })
}

/// A task's end as the job log records it.
struct TaskEnd {
    label: Value,
    id: procpool_child::TaskId,
    attempts: u32,
    worker: (usize, i32),
    outcome: TaskOutcome,
    /// Rejected answers before this one: a new entry is this task's.
    rejected_before: usize,
}

/// The pool counted these tasks ok when their answers came; the source rejected the
/// answers, so the report counts them as errors, with why.
fn count_rejected(report: &mut PoolReport, rejected: Vec<TaskFailure>) {
    let count = rejected.len() as u64;
    report.tasks_ok = report.tasks_ok.saturating_sub(count);
    report.tasks_error += count;
    report.failures.extend(rejected);
}

fn on_event(
    source: &mut dyn TaskSource,
    event: Event,
    pool: &Pool,
    status: &mut Status,
    max_attempts: u32,
    rejected: &mut Vec<TaskFailure>,
) -> Result<()> {
    match event {
        Event::Task {
            id,
            attempts,
            slot,
            outcome: TaskOutcome::Output(output),
        } => {
            if let Answer::Rejected(why) = source.result(id, output)? {
                let message = bad_answer(slot, pool, &why);
                status.warn(&format!("task {id} failed: {message}"));
                // Counted before the source hears of it: a source may stop the run.
                rejected.push(TaskFailure {
                    id,
                    attempts,
                    message: message.clone(),
                    crashes: Vec::new(),
                });
                source.failure(id, attempts, &TaskOutcome::Error(message))?;
            }
        }
        Event::Task {
            id,
            attempts,
            outcome,
            ..
        } => {
            let message = outcome
                .failure_message(attempts)
                .expect("results are matched above");
            // `task 7 failed: <the worker's error>`, `task 7 quarantined after ...`;
            // the worker's words escaped and cut (the report has them whole).
            let message = excerpt(message.as_bytes(), EXCERPT_BYTES);
            match outcome {
                TaskOutcome::Failed(_) => status.warn(&format!("task {id} {message}")),
                _ => status.warn(&format!("task {id} failed: {message}")),
            }
            source.failure(id, attempts, &outcome)?;
        }
        Event::WorkerDied {
            crash,
            tasks,
            restart_in,
            was_ready,
        } => {
            let next = match restart_in {
                Some(delay) if delay.is_zero() => "restarting".to_string(),
                Some(delay) => format!("restarting in {delay:.0?}"),
                None => "not restarting".to_string(),
            };
            let held = held_tasks(&tasks, was_ready, max_attempts);
            status.event(&format!("{crash} {held}; {next}"));
        }
        Event::Interrupted { again: false } => {
            status.warn("interrupted; letting running tasks finish (Ctrl-C again to kill them now)")
        }
        Event::Interrupted { again: true } => status.warn("killing workers now"),
        Event::InputReady => source.read_input()?,
        _ => {}
    }
    Ok(())
}

/// What a dead worker was doing, for its death line: `while running task 4 (attempt
/// 1/3), 2 more queued`.
fn held_tasks(tasks: &[LostTask], was_ready: bool, max_attempts: u32) -> String {
    let (running, queued): (Vec<&LostTask>, Vec<&LostTask>) = tasks
        .iter()
        .partition(|task| task.charge != Charge::Waiting);
    let mut held = match running.as_slice() {
        [] if !was_ready => String::from("before sending ready"),
        [] if queued.is_empty() => String::from("while idle"),
        [] => String::from("before starting a task"),
        [task] => {
            let charge = match task.charge {
                Charge::Counted { count } => format!("attempt {count}/{max_attempts}"),
                _ => String::from("not counted against it"),
            };
            format!("while running task {} ({charge})", task.id)
        }
        several => {
            let ids: Vec<String> = several.iter().map(|task| task.id.to_string()).collect();
            format!(
                "while running tasks {} (not counted: each is retried alone)",
                ids.join(", ")
            )
        }
    };
    if !queued.is_empty() && !running.is_empty() {
        held.push_str(&format!(", {} more queued", queued.len()));
    }
    held
}

/// Why a task's answer was refused, naming the worker that gave it.
fn bad_answer(slot: usize, pool: &Pool, why: &str) -> String {
    match pool.workers().get(slot) {
        Some(worker) => format!(
            "worker {slot} (pid {}) gave a bad answer: {why}",
            worker.pid
        ),
        None => format!("worker {slot} gave a bad answer: {why}"),
    }
}

/// The advice after the pool's reason for giving up, in this tool's own flags.
fn what_to_do(reason: &AbortReason) -> &'static str {
    match reason {
        AbortReason::RestartIntensity { .. } => ". Raise --max-restarts or fix the crashing tasks",
        AbortReason::DeadOnArrival { .. } => "; check the worker command and its stderr above",
        _ => "",
    }
}

/// Prints the run's summary; a closed stdout (`| head`) is not an error worth a panic.
fn print_outcome(
    outcome: &Outcome,
    args: &PoolArgs,
    workload: &Registration,
    procs: usize,
    to_stderr: bool,
) -> Result<()> {
    let written = if to_stderr {
        // After the log lines, through the same queue: never blocked by a full stderr.
        let mut text = Vec::new();
        let written = write_outcome(&mut text, outcome, args, workload, procs);
        stderr_queue::write(&String::from_utf8_lossy(&text));
        written
    } else {
        write_outcome(
            &mut std::io::stdout().lock(),
            outcome,
            args,
            workload,
            procs,
        )
    };
    written.context("writing the summary")
}

fn write_outcome(
    out: &mut impl Write,
    outcome: &Outcome,
    args: &PoolArgs,
    workload: &Registration,
    procs: usize,
) -> std::io::Result<()> {
    let report = &outcome.report;
    if let RunEnd::Aborted(reason) = &report.end {
        stderr_queue::write(&format!(
            "procpool: error: {reason}{}\n",
            what_to_do(reason)
        ));
    }
    if let Some(err) = &outcome.error {
        stderr_queue::write(&format!("procpool: error: {err:#}\n"));
    }
    if args.json {
        let mut object = json!({
            "workload": workload.name,
            "procs": procs,
            "start": format!("{:?}", args.start).to_lowercase(),
            "prefetch": args.prefetch,
            "result": outcome.summary.as_ref().map_or(Value::Null, |s| s.result.clone()),
        });
        let fields = serde_json::to_value(report).expect("the report serialises");
        object
            .as_object_mut()
            .expect("built as an object")
            .extend(fields.as_object().expect("the report is a struct").clone());
        return writeln!(out, "{object}");
    }
    if let Some(summary) = &outcome.summary {
        writeln!(out, "{}: {}", workload.name, summary.headline)?;
    }
    writeln!(
        out,
        "tasks: {} ok, {} error, {} failed, {} not run ({} retries, {} restarts{}) on {} ({})",
        report.tasks_ok,
        report.tasks_error,
        report.tasks_failed,
        report.tasks_not_run,
        report.retries,
        report.restarts(),
        if report.chaos_kills > 0 {
            format!(", {} chaos kills", report.chaos_kills)
        } else {
            String::new()
        },
        match procs {
            1 => "1 worker".to_string(),
            many => format!("{many} workers"),
        },
        format!("{:?}", args.start).to_lowercase(),
    )?;
    let wall = report.wall.as_secs_f64();
    let worker_cpu = report.workers_cpu.user + report.workers_cpu.sys;
    writeln!(
        out,
        "time: wall {wall:.3}s; workers user {:.3}s sys {:.3}s; supervisor user {:.3}s sys {:.3}s; parallelism {:.2}x",
        report.workers_cpu.user.as_secs_f64(),
        report.workers_cpu.sys.as_secs_f64(),
        report.supervisor_cpu.user.as_secs_f64(),
        report.supervisor_cpu.sys.as_secs_f64(),
        worker_cpu.as_secs_f64() / wall.max(1e-9),
    )
}

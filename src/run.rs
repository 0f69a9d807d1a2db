//! `procpool run`: builds the pool for a workload, feeds it, reports.

use std::cell::RefCell;
use std::io::Write;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::{Context, Result};
use procpool_child::ArraySpec;
use procpool_supervisor::{
    quarantine_message, Event, Pool, PoolConfig, PoolError, PoolReport, RestartPolicy, RunEnd,
    TaskOutcome, WorkerStart,
};
use serde_json::{json, Value};

use crate::cli::{PoolArgs, RunArgs, StartMode, WorkloadArgs};
use crate::status::{Status, REDRAW_EVERY};
use crate::workloads::{
    colmeans::Colmeans, crash::Crash, crawl::Crawl, mandelbrot::Mandelbrot, matmul::Matmul,
    maze::MazeJob, noop::Noop, primes::Primes, tasks::Tasks, Job, Kind, Summary,
};

/// A mistake in how procpool was called: exit code 2, like clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Exit code when Ctrl-C or SIGTERM ended the run (128 + SIGINT, as shells do).
pub const EXIT_INTERRUPTED: u8 = 130;

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let procs = match args.pool.procs {
        Some(procs) => procs as usize,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let kind = args.workload.kind();
    if kind == Kind::Tasks && args.pool.child.is_none() {
        return Err(UsageError(
            "`procpool run tasks` needs --child CMD, the worker that runs each line \
             (e.g. --child 'python3 examples/python/count_words.py')"
                .into(),
        )
        .into());
    }
    let job = make_job(&args.workload, procs)
        // The workload's own options were wrong (a missing file, an impossible size).
        .map_err(|err| UsageError(format!("{err:#}")))?;
    let mut config = pool_config(&args.pool, procs, kind)?;
    config.inherit_fds.extend(job.inherited_fds());
    for shared in job.shared_arrays() {
        config.inherit_fds.push(shared.array.raw_fd());
        config.arrays.insert(
            shared.name.into(),
            ArraySpec::of(shared.array, shared.writable),
        );
    }
    let status = Rc::new(RefCell::new(Status::new(args.pool.quiet)));
    if status.borrow().is_live() {
        config.tick = Some(REDRAW_EVERY);
    }
    let log_status = Rc::clone(&status);
    config.on_log = Box::new(move |slot, line| log_status.borrow_mut().worker_log(slot, line));
    let pool = Pool::start(config).context("starting the worker pool")?;
    // Results on stdout: the summary (and the --json report) go to stderr instead.
    let summary_to_stderr = job.results_on_stdout();
    let outcome = drive(pool, job, &args.pool, &status)?;
    print_outcome(&outcome, &args.pool, kind, procs, summary_to_stderr)?;
    Ok(ExitCode::from(outcome.exit_code()))
}

fn make_job(workload: &WorkloadArgs, procs: usize) -> Result<Box<dyn Job>> {
    Ok(match workload {
        WorkloadArgs::Colmeans(args) => Box::new(Colmeans::new(args, procs)?),
        WorkloadArgs::Crash(args) => Box::new(Crash::new(args)?),
        WorkloadArgs::Crawl(args) => Box::new(Crawl::new(args)?),
        WorkloadArgs::Mandelbrot(args) => Box::new(Mandelbrot::new(args)?),
        WorkloadArgs::Matmul(args) => Box::new(Matmul::new(args, procs)?),
        WorkloadArgs::Maze(args) => Box::new(MazeJob::new(args, procs)?),
        WorkloadArgs::Primes(args) => Box::new(Primes::new(args, procs)?),
        WorkloadArgs::Noop(args) => Box::new(Noop::new(args)),
        WorkloadArgs::Tasks(args) => Box::new(Tasks::new(args)?),
    })
}

fn pool_config(args: &PoolArgs, procs: usize, kind: Kind) -> Result<PoolConfig> {
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
            args: vec!["worker".into(), kind.name().into()],
        },
        (StartMode::Fork, None) => {
            WorkerStart::Fork(Arc::new(move || crate::worker::serve_builtin(kind)))
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
        }
    }
}

/// Feeds the job's tasks to the pool (a bounded window ahead, so a job can stream its
/// inputs), reduces every answer, and shuts the pool down.
///
/// The job is asked for tasks before every wait, so a job whose tasks come from
/// results (a crawl's links, a BFS level) adds them as they appear; the run ends when
/// the pool is joined and the job has nothing more.
fn drive(
    mut pool: Pool,
    mut job: Box<dyn Job>,
    args: &PoolArgs,
    status: &Rc<RefCell<Status>>,
) -> Result<Outcome> {
    let window = pool.procs() * args.prefetch as usize * 4 + 64;
    let total = job.total_tasks();
    let mut done = 0u64;
    let mut error = None;
    let mut planning_failed = false;
    loop {
        let has_room = |pool: &Pool, job: &dyn Job| pool.unfinished().max(job.held()) < window;
        while !planning_failed && !pool.interrupted() && has_room(&pool, &*job) {
            match job.next_task() {
                Some(Ok(input)) => {
                    let id = pool.put(input);
                    job.was_put(id);
                }
                Some(Err(err)) => {
                    error = Some(err.context("preparing tasks"));
                    planning_failed = true;
                }
                None => break,
            }
        }
        if !pool.has_events() {
            if let Err(err) = job.flush() {
                error = Some(err);
                break;
            }
        }
        // Streamed input is read only when it is readable and the window has room.
        let input = match planning_failed || !has_room(&pool, &*job) {
            true => None,
            false => job.input(),
        };
        let event = match pool.next_event_or_input(input) {
            Ok(Some(event)) => event,
            // Joined right after asking the job for more: the run is over.
            Ok(None) => break,
            Err(PoolError::Aborted(_)) => break,
            Err(err) => return Err(err.into()),
        };
        if let Event::Task { .. } = event {
            done += 1;
        }
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
            &mut *job,
            event,
            &mut status.borrow_mut(),
            args.max_attempts,
        ) {
            error = Some(err);
            break;
        }
        if slot_changed {
            status.borrow_mut().draw(&pool.workers(), done, total);
        }
    }
    let report = pool.shutdown();
    status.borrow_mut().clear();
    // A job whose result cannot be summed up (rows missing, say) is a failed run, but
    // the report of what did finish is still printed.
    let summary = match (&error, &report.end) {
        (None, RunEnd::Completed) => job.summary(&report).map_or_else(
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

fn on_event(job: &mut dyn Job, event: Event, status: &mut Status, max_attempts: u32) -> Result<()> {
    match event {
        Event::Task {
            id,
            outcome: TaskOutcome::Output(output),
            ..
        } => job.reduce(id, output)?,
        Event::Task {
            id,
            attempts,
            outcome,
            ..
        } => {
            match &outcome {
                TaskOutcome::Error(message) => status.warn(&format!("task {id} failed: {message}")),
                TaskOutcome::Failed(crashes) => status.warn(&format!(
                    "task {id} {}",
                    quarantine_message(crashes, attempts)
                )),
                TaskOutcome::Output(_) => unreachable!("matched above"),
            }
            job.on_failure(id, attempts, &outcome)?;
        }
        Event::WorkerDied {
            crash,
            tasks,
            restart_in,
            was_ready,
        } => {
            let held = match tasks.as_slice() {
                [] if !was_ready => String::from("before sending ready"),
                [] => String::from("while idle"),
                [(id, attempt), waiting @ ..] => {
                    let mut held =
                        format!("while running task {id} (attempt {attempt}/{max_attempts})");
                    if !waiting.is_empty() {
                        held.push_str(&format!(", {} more queued", waiting.len()));
                    }
                    held
                }
            };
            let next = match restart_in {
                Some(delay) if delay.is_zero() => "restarting".to_string(),
                Some(delay) => format!("restarting in {delay:.0?}"),
                None => "not restarting".to_string(),
            };
            status.event(&format!("{crash} {held}; {next}"));
        }
        Event::Interrupted { again: false } => {
            status.warn("interrupted; letting running tasks finish (Ctrl-C again to kill them now)")
        }
        Event::Interrupted { again: true } => status.warn("killing workers now"),
        Event::InputReady => job.read_input()?,
        Event::WorkerStarted { .. } | Event::Tick => {}
    }
    Ok(())
}

/// Prints the run's summary; a closed stdout (`| head`) is not an error worth a panic.
fn print_outcome(
    outcome: &Outcome,
    args: &PoolArgs,
    kind: Kind,
    procs: usize,
    to_stderr: bool,
) -> Result<()> {
    let written = if to_stderr {
        write_outcome(&mut std::io::stderr().lock(), outcome, args, kind, procs)
    } else {
        write_outcome(&mut std::io::stdout().lock(), outcome, args, kind, procs)
    };
    match written {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => Ok(result?),
    }
}

fn write_outcome(
    out: &mut impl Write,
    outcome: &Outcome,
    args: &PoolArgs,
    kind: Kind,
    procs: usize,
) -> std::io::Result<()> {
    let report = &outcome.report;
    if let RunEnd::Aborted(reason) = &report.end {
        eprintln!("procpool: error: {reason}");
    }
    if let Some(err) = &outcome.error {
        eprintln!("procpool: error: {err:#}");
    }
    if args.json {
        let mut object = json!({
            "workload": kind.name(),
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
        writeln!(out, "{}: {}", kind.name(), summary.headline)?;
    }
    writeln!(
        out,
        "tasks: {} ok, {} error, {} failed, {} not run ({} retries, {} restarts{}) on {} workers ({})",
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
        procs,
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

//! `crash`: a workload whose every K-th task fails in a chosen way, for real, to watch
//! (and test) how the pool contains failures.

use std::time::Duration;

use anyhow::{ensure, Result};
use procpool_child::TaskId;
use procpool_supervisor::PoolReport;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Ignored, Summary, TypedHandler, Workload};

/// How a failing task fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A real invalid memory access: the kernel sends SIGSEGV.
    Segv,
    /// `abort()`: SIGABRT.
    Abort,
    /// A Rust panic: the worker exits with code 101.
    Panic,
    /// `exit(3)` in the middle of the task.
    Exit,
    /// The worker sends itself SIGKILL (as the OOM killer would).
    Kill,
    /// Never answers; only `--task-timeout` gets the worker back.
    Hang,
    /// Allocates past a 256 MiB address-space limit until the allocator fails (SIGABRT).
    Oom,
    /// Answers with an error message; the worker itself is fine.
    Error,
}

/// Options of `procpool run crash`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// How the failing tasks fail.
    #[arg(long, value_enum, default_value_t = Mode::Segv)]
    pub mode: Mode,
    /// Every K-th task fails (tasks K, 2K, 3K, … counting from 1).
    #[arg(long, default_value_t = 10, value_parser = crate::parse::whole::<u64>(1, u64::MAX))]
    pub every: u64,
    /// How many tasks.
    #[arg(long, default_value = "100", value_parser = crate::parse::count)]
    pub tasks: u64,
    /// Milliseconds of work (sleep) in every task, so kills land mid-task.
    #[arg(long, default_value_t = 10, value_parser = crate::parse::count)]
    pub task_ms: u64,
    /// The pool's `--task-timeout`: without one, `--mode hang` would never end.
    #[arg(from_global)]
    pub task_timeout: Option<Duration>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Input {
    index: u64,
    fail: Option<Mode>,
    task_ms: u64,
}

/// Plans which tasks fail; the run report counts what came back.
pub struct Crash {
    args: Args,
    next: u64,
}

impl Workload for Crash {
    const NAME: &'static str = "crash";
    const ABOUT: &'static str =
        "Fail every K-th task for real (segv, abort, panic, exit, kill, hang, oom, error)";
    type Args = Args;
    type Input = Input;
    /// Only counted: the report is what this workload shows.
    type Output = Ignored;

    fn plan(args: &Args, _procs: usize) -> Result<Crash> {
        ensure!(args.task_ms <= 3_600_000, "--task-ms is at most an hour");
        let hangs = args.mode == Mode::Hang && args.every <= args.tasks;
        ensure!(
            !hangs || args.task_timeout.is_some(),
            "--mode hang needs --task-timeout SECS: a hung task ends only when its worker is killed"
        );
        Ok(Crash {
            args: args.clone(),
            next: 0,
        })
    }

    fn next_input(&mut self) -> Option<Result<Input>> {
        if self.next >= self.args.tasks {
            return None;
        }
        let index = self.next;
        self.next += 1;
        let fail = (index + 1)
            .is_multiple_of(self.args.every)
            .then_some(self.args.mode);
        Some(Ok(Input {
            index,
            fail,
            task_ms: self.args.task_ms,
        }))
    }

    fn reduce(&mut self, _id: TaskId, _output: Ignored) -> Result<(), String> {
        Ok(())
    }

    fn total_tasks(&self) -> Option<u64> {
        Some(self.args.tasks)
    }

    fn summary(self, report: &PoolReport) -> Result<Summary> {
        let planned = self.args.tasks / self.args.every;
        let (ok, errors, failed) = (report.tasks_ok, report.tasks_error, report.tasks_failed);
        Ok(Summary::new(
            format!(
                "{ok} ok, {errors} answered with an error, {failed} failed ({planned} planned to fail, --mode {})",
                clap::ValueEnum::to_possible_value(&self.args.mode)
                    .map_or_else(String::new, |value| value.get_name().to_string())
            ),
            json!({"ok": ok, "errors": errors, "failed": failed,
                   "planned_failures": planned, "mode": self.args.mode}),
        ))
    }

    fn worker() -> Result<TypedHandler<Crash>, String> {
        Ok(Box::new(run_task))
    }
}

fn run_task(input: Input) -> Result<Ignored, String> {
    let Input {
        index,
        fail,
        task_ms,
    } = input;
    std::thread::sleep(Duration::from_millis(task_ms));
    match fail {
        None => Ok(Ignored),
        Some(Mode::Segv) => procpool_shm::fault::segfault(),
        Some(Mode::Abort) => std::process::abort(),
        Some(Mode::Panic) => panic!("task {index} panics, as asked"),
        Some(Mode::Exit) => std::process::exit(3),
        Some(Mode::Kill) => {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            unreachable!("SIGKILL cannot be caught")
        }
        Some(Mode::Hang) => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        Some(Mode::Oom) => exhaust_memory(),
        Some(Mode::Error) => Err(format!("task {index} fails, as asked")),
    }
}

/// Caps this process's address space, then allocates and touches memory until the
/// allocator fails, which aborts the process. The cap keeps a test from pushing the
/// whole machine into the kernel's OOM killer.
fn exhaust_memory() -> ! {
    use nix::sys::resource::{setrlimit, Resource};
    const LIMIT: u64 = 256 << 20;
    if let Err(err) = setrlimit(Resource::RLIMIT_AS, LIMIT, LIMIT) {
        eprintln!(
            "cannot cap the address space ({err}); aborting instead of exhausting the machine"
        );
        std::process::abort();
    }
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 16 << 20]);
    }
}

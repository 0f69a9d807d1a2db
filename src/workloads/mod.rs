//! The built-in workloads, one file each, each holding both halves: the supervisor
//! side (a [`Job`]: task inputs out, outputs reduced, a summary at the end) and the
//! worker side (`run_task`: one input to one output, run inside a worker process).

pub mod colmeans;
pub mod crash;
pub mod crawl;
pub mod mandelbrot;
pub mod matmul;
pub mod maze;
pub mod noop;
pub mod primes;
pub mod tasks;

use std::os::fd::{BorrowedFd, RawFd};

use anyhow::Result;
use procpool_child::TaskId;
use procpool_shm::SharedArray;
use procpool_supervisor::{PoolReport, TaskOutcome};
use serde_json::Value;

/// The supervisor side of a workload.
pub trait Job {
    /// The next task's input, or `None` when there are no more (for now). Called
    /// while the pool has room, so a job can stream inputs it never holds whole.
    fn next_task(&mut self) -> Option<Result<Value>>;

    /// The input `next_task` returned last was put as task `id`.
    fn was_put(&mut self, _id: TaskId) {}

    /// Tasks the job holds on to (put and not yet fully handled); the driver puts no
    /// more while this or the pool's unfinished count fills its window.
    fn held(&self) -> usize {
        0
    }

    /// Folds one task's output into the job's result.
    fn reduce(&mut self, id: TaskId, output: Value) -> Result<()>;

    /// Hears about a task that ended without output (a worker error or a quarantined
    /// crash), after `attempts` sends. The run report counts these whatever the job does.
    fn on_failure(&mut self, _id: TaskId, _attempts: u32, _outcome: &TaskOutcome) -> Result<()> {
        Ok(())
    }

    /// The descriptor the job's inputs are streamed from, while more may come. When
    /// `next_task` has nothing, the driver waits on it together with the pool and
    /// calls [`read_input`](Job::read_input) once it is readable, so that a slow
    /// producer never holds up results, restarts or Ctrl-C.
    fn input(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    /// [`input`](Job::input) is readable: take in what is there with one read,
    /// which returns at once.
    fn read_input(&mut self) -> Result<()> {
        Ok(())
    }
    /// Called when the pool has no more events ready, before it waits: a job that
    /// writes as it goes flushes here, once per batch of answers.
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    /// Whether the job writes its results on stdout (the summary then goes to stderr).
    fn results_on_stdout(&self) -> bool {
        false
    }

    /// How many tasks the job will put, when it knows (for progress and ETA).
    fn total_tasks(&self) -> Option<u64> {
        None
    }

    /// Descriptors the job's workers inherit besides the shared arrays', to open as
    /// `/proc/self/fd/N` (a file that has no name any more).
    fn inherited_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// The shared arrays the job's workers map, described to them in `PROCPOOL_ARRAYS`.
    fn shared_arrays(&self) -> Vec<SharedArrayUse<'_>> {
        Vec::new()
    }

    /// The job's result once the pool is joined.
    fn summary(self: Box<Self>, report: &PoolReport) -> Result<Summary>;
}

/// A shared array as a job's workers see it.
pub struct SharedArrayUse<'a> {
    pub name: &'static str,
    pub array: &'a SharedArray,
    pub writable: bool,
}

impl<'a> SharedArrayUse<'a> {
    pub fn read_only(name: &'static str, array: &'a SharedArray) -> Self {
        SharedArrayUse {
            name,
            array,
            writable: false,
        }
    }

    pub fn writable(name: &'static str, array: &'a SharedArray) -> Self {
        SharedArrayUse {
            name,
            array,
            writable: true,
        }
    }
}

/// The worker side of a workload: one task input to its output, or an error message.
pub type TaskHandler = Box<dyn FnMut(&Value) -> Result<Value, String>>;

/// What a job reports: one line for people, one JSON value for scripts.
pub struct Summary {
    pub headline: String,
    pub result: Value,
}

impl Summary {
    pub fn new(headline: String, result: Value) -> Summary {
        Summary { headline, result }
    }
}

/// The workloads a built-in worker can run, by the name the CLI uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Colmeans,
    Crash,
    Crawl,
    Mandelbrot,
    Matmul,
    Maze,
    Primes,
    Noop,
    /// Lines of input to a `--child` worker; there is no built-in worker for it.
    #[value(skip)]
    Tasks,
}

impl Kind {
    /// The worker side: sets up what this workload's worker needs (maps its shared
    /// arrays) and returns the function that runs one task.
    pub fn worker(self) -> Result<TaskHandler, String> {
        Ok(match self {
            Kind::Colmeans => Box::new(colmeans::run_task),
            Kind::Crash => Box::new(crash::run_task),
            Kind::Crawl => crawl::worker()?,
            Kind::Mandelbrot => mandelbrot::worker()?,
            Kind::Matmul => matmul::worker()?,
            Kind::Maze => maze::worker()?,
            Kind::Primes => Box::new(primes::run_task),
            Kind::Noop => Box::new(noop::run_task),
            Kind::Tasks => return Err("tasks has no built-in worker; pass --child CMD".into()),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Colmeans => "colmeans",
            Kind::Crash => "crash",
            Kind::Crawl => "crawl",
            Kind::Mandelbrot => "mandelbrot",
            Kind::Matmul => "matmul",
            Kind::Maze => "maze",
            Kind::Primes => "primes",
            Kind::Noop => "noop",
            Kind::Tasks => "tasks",
        }
    }
}

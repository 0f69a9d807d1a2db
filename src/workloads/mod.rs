//! The built-in workloads, one file each, each holding both halves: the supervisor
//! side (a [`Job`]: task inputs out, outputs reduced, a summary at the end) and the
//! worker side (`run_task`: one input to one output, run inside a worker process).

pub mod noop;
pub mod primes;

use anyhow::Result;
use procpool_child::TaskId;
use procpool_supervisor::{PoolReport, TaskOutcome};
use serde_json::Value;

/// The supervisor side of a workload.
pub trait Job {
    /// The next task's input, or `None` when there are no more (for now). Called
    /// while the pool has room, so a job can stream inputs it never holds whole.
    fn next_task(&mut self) -> Option<Result<Value>>;

    /// Folds one task's output into the job's result.
    fn reduce(&mut self, id: TaskId, output: Value) -> Result<()>;

    /// Hears about a task that ended without output (a worker error or a quarantined
    /// crash). The run report counts these whatever the job does.
    fn on_failure(&mut self, _id: TaskId, _outcome: &TaskOutcome) -> Result<()> {
        Ok(())
    }

    /// The job's result once the pool is joined.
    fn summary(self: Box<Self>, report: &PoolReport) -> Result<Summary>;
}

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
    Primes,
    Noop,
}

impl Kind {
    /// The worker side: runs one task of this workload.
    pub fn run_task(self, input: &Value) -> Result<Value, String> {
        match self {
            Kind::Primes => primes::run_task(input),
            Kind::Noop => noop::run_task(input),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Primes => "primes",
            Kind::Noop => "noop",
        }
    }
}

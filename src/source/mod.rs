//! Where a run's tasks come from, and where their results go back to.
//!
//! The driver (`run.rs`) puts what a [`TaskSource`] hands out, waits on the pool (and
//! on the source's descriptor, if it streams), and hands every task's end back to the
//! same source. Sources now: a workload's own plan ([`crate::workloads::Planned`]) and
//! a line stream ([`lines`], `procpool run tasks`). A control channel (`procpool
//! serve`) or a broker stream fits the same trait: it reads submissions when its
//! descriptor is readable and writes each result back to whoever submitted it.

pub mod lines;
pub mod resume;

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use anyhow::Result;
use procpool_child::TaskId;
use procpool_shm::SharedArray;
use procpool_supervisor::{PoolReport, TaskOutcome};
use serde_json::Value;

/// What a source made of a task's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Accepted,
    /// The output is not one this source can use; the reason, for the task's error.
    Rejected(String),
}

/// A feed of tasks for the pool, and the receiver of their ends.
pub trait TaskSource {
    /// The input of the next task, which the pool will put as task `id`, or `None`
    /// when there are none (for now). Called while the pool has room, so a source can
    /// stream inputs it never holds whole. Shared: a source that keeps the input
    /// (to echo it) holds no second copy of it.
    fn next_task(&mut self, id: TaskId) -> Option<Result<Arc<Value>>>;

    /// Tasks the source holds on to (handed out and not yet fully handled); the driver
    /// hands out no more while this or the pool's unfinished count fills its window.
    fn held(&self) -> usize {
        0
    }

    /// The descriptor inputs are streamed from, while more may come. When
    /// `next_task` has nothing, the driver waits on it together with the pool and
    /// calls [`read_input`](TaskSource::read_input) once it is readable, so that a
    /// slow producer never holds up results, restarts or Ctrl-C.
    fn input(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    /// [`input`](TaskSource::input) is readable: take in what is there with one
    /// read, which returns at once.
    fn read_input(&mut self) -> Result<()> {
        Ok(())
    }

    /// Task `id` answered `output`. An `Err` is a failure of the run itself (a result
    /// that cannot be written); a bad output is [`Answer::Rejected`].
    fn result(&mut self, id: TaskId, output: Value) -> Result<Answer>;
    /// Task `id` ended without a usable output (a worker error, a quarantined crash, a
    /// rejected answer) after `attempts` sends. An `Err` stops the run.
    fn failure(&mut self, id: TaskId, attempts: u32, outcome: &TaskOutcome) -> Result<()>;
    /// Called when the pool has no more events ready, before it waits: a source that
    /// writes as it goes flushes here, once per batch of answers.
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    /// Whether results are written on stdout (the summary then goes to stderr).
    fn results_on_stdout(&self) -> bool {
        false
    }

    /// How the job log names task `id` (a stable name across runs, such as an input's
    /// index); asked before its end is handed over. By default the pool's id.
    fn task_label(&self, id: TaskId) -> Value {
        Value::from(id)
    }

    /// How many tasks there will be, when the source knows (for progress and ETA).
    fn total_tasks(&self) -> Option<u64> {
        None
    }
    /// Why the tasks cannot run on other machines (`run --broker`), if they cannot:
    /// they name shared memory or files of this one.
    fn one_machine(&self) -> Option<&'static str> {
        None
    }
    /// Descriptors the workers inherit besides the shared arrays'.
    fn inherited_fds(&self) -> Vec<Arc<OwnedFd>> {
        Vec::new()
    }
    /// The shared arrays the workers map.
    fn shared_arrays(&self) -> Vec<SharedArrayUse<'_>> {
        Vec::new()
    }
    /// The run's result once the pool is joined.
    fn summary(self: Box<Self>, report: &PoolReport) -> Result<Summary>;
}

/// A shared array as the workers see it.
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

/// What a run reports: one line for people, one JSON value for scripts.
pub struct Summary {
    pub headline: String,
    pub result: Value,
}

impl Summary {
    pub fn new(headline: String, result: Value) -> Summary {
        Summary { headline, result }
    }
}

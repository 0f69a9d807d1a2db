//! The built-in workloads, one file each, each one type holding both halves: the
//! supervisor side (plan task inputs, reduce their outputs, sum up) and the worker side
//! (one input to one output, inside a worker process), with typed inputs and outputs.
//!
//! A workload is registered by one line in [`crate::registry::REGISTRY`]: that line
//! makes its `procpool run <name>` subcommand (its options are its `Args`), its hidden
//! `procpool worker <name>`, and its `--start fork` worker. Its plan becomes the
//! run's [`TaskSource`] through [`Planned`], which erases the typed halves to the
//! JSON values that cross the pool.

pub mod colmeans;
pub mod crash;
pub mod crawl;
pub mod mandelbrot;
pub mod matmul;
pub mod maze;
pub mod noop;
pub mod primes;

use std::os::fd::OwnedFd;
use std::sync::Arc;

use anyhow::Result;
use procpool_child::TaskId;
use procpool_supervisor::{PoolReport, TaskOutcome};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::source::{Answer, TaskSource};
pub use crate::source::{SharedArrayUse, Summary};

/// A workload: both halves, typed.
pub trait Workload: Sized + 'static {
    /// Its name on the command line: `procpool run <NAME>`.
    const NAME: &'static str;
    /// One line for `procpool run --help`.
    const ABOUT: &'static str;
    /// Its options, after `procpool run <NAME>`.
    type Args: clap::Args;
    /// What one task is given.
    type Input: Serialize + DeserializeOwned;
    /// What one task answers. Any worker may answer (`--child`), so the supervisor side
    /// checks every output it reduces.
    type Output: Serialize + DeserializeOwned;

    /// Supervisor side: reads the options, prepares inputs and shared arrays.
    fn plan(args: &Self::Args, procs: usize) -> Result<Self>;
    /// The next task's input, or `None` when there are no more (for now). Called while
    /// the pool has room, so a workload whose tasks come from results (a crawl's links,
    /// a BFS level) adds them as they appear.
    fn next_input(&mut self) -> Option<Result<Self::Input>>;
    /// Folds one task's output into the result, or says what is wrong with it (then
    /// nothing of it may have been folded in): the task then counts as an error and
    /// [`on_failure`](Workload::on_failure) hears of it.
    fn reduce(&mut self, id: TaskId, output: Self::Output) -> Result<(), String>;
    /// Hears about a task that ended without a usable output (a worker error, a
    /// quarantined crash, a rejected answer) after `attempts` sends. An `Err` stops the run.
    fn on_failure(&mut self, _id: TaskId, _attempts: u32, _outcome: &TaskOutcome) -> Result<()> {
        Ok(())
    }
    /// How many tasks it will put, when it knows (for progress and ETA).
    fn total_tasks(&self) -> Option<u64> {
        None
    }
    /// Why its tasks cannot run on other machines (`run --broker`), if they cannot.
    fn one_machine(&self) -> Option<&'static str> {
        None
    }
    /// Descriptors its workers inherit besides the shared arrays', to open as
    /// `/proc/self/fd/N` (a file that has no name any more).
    fn inherited_fds(&self) -> Vec<Arc<OwnedFd>> {
        Vec::new()
    }
    /// The shared arrays its workers map, described to them in `PROCPOOL_ARRAYS`.
    fn shared_arrays(&self) -> Vec<SharedArrayUse<'_>> {
        Vec::new()
    }
    /// Its result once the pool is joined.
    fn summary(self, report: &PoolReport) -> Result<Summary>;

    /// Worker side: sets up what a worker needs (maps the shared arrays) and returns
    /// the function that runs one task.
    fn worker() -> Result<TypedHandler<Self>, String>;
}

/// The worker side of workload `W`: one input to its output, or an error message.
pub type TypedHandler<W> =
    Box<dyn FnMut(<W as Workload>::Input) -> Result<<W as Workload>::Output, String>>;

/// A workload's own plan as the run's task source: typed inputs out as JSON, JSON
/// outputs in, checked, as typed outputs.
pub struct Planned<W>(pub W);

impl<W: Workload> TaskSource for Planned<W> {
    fn next_task(&mut self, _id: TaskId) -> Option<Result<Arc<Value>>> {
        Some(self.0.next_input()?.and_then(|input| {
            serde_json::to_value(input)
                .map(Arc::new)
                .map_err(|err| anyhow::anyhow!("a task input: {err}"))
        }))
    }

    fn result(&mut self, id: TaskId, output: Value) -> Result<Answer> {
        let output = match W::Output::deserialize(output) {
            Ok(output) => output,
            Err(err) => return Ok(Answer::Rejected(format!("not a {} output: {err}", W::NAME))),
        };
        Ok(match self.0.reduce(id, output) {
            Ok(()) => Answer::Accepted,
            Err(why) => Answer::Rejected(format!("{}: {why}", W::NAME)),
        })
    }

    fn failure(&mut self, id: TaskId, attempts: u32, outcome: &TaskOutcome) -> Result<()> {
        self.0.on_failure(id, attempts, outcome)
    }

    fn total_tasks(&self) -> Option<u64> {
        self.0.total_tasks()
    }

    fn one_machine(&self) -> Option<&'static str> {
        self.0.one_machine()
    }

    fn inherited_fds(&self) -> Vec<Arc<OwnedFd>> {
        self.0.inherited_fds()
    }

    fn shared_arrays(&self) -> Vec<SharedArrayUse<'_>> {
        self.0.shared_arrays()
    }

    fn summary(self: Box<Self>, report: &PoolReport) -> Result<Summary> {
        self.0.summary(report)
    }
}

/// A value that is not read: an answer a workload only counts, whatever it says.
/// Sent as `null`; any JSON is taken, and dropped without being copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ignored;

impl Serialize for Ignored {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_unit()
    }
}

impl<'de> Deserialize<'de> for Ignored {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(deserializer).map(|_| Ignored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_answer_takes_any_json() {
        for text in ["null", "3", r#"{"a": [1, "x"]}"#] {
            let value: Value = serde_json::from_str(text).unwrap();
            assert_eq!(Ignored::deserialize(value).unwrap(), Ignored);
        }
        assert_eq!(serde_json::to_value(Ignored).unwrap(), Value::Null);
    }
}

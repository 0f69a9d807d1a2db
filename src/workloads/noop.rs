//! `noop`: empty tasks, to measure the pool's own overhead per task.

use anyhow::Result;
use procpool_child::TaskId;
use procpool_supervisor::PoolReport;
use serde_json::{json, Value};

use super::{Job, Summary};

/// Options of `procpool run noop`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// How many empty tasks to run.
    #[arg(long, default_value = "100000", value_parser = crate::cli::parse_count)]
    pub tasks: u64,
}

/// The supervisor side: `tasks` nulls out, nulls back.
pub struct Noop {
    tasks: u64,
    remaining: u64,
    done: u64,
}

impl Noop {
    pub fn new(args: &Args) -> Noop {
        Noop {
            tasks: args.tasks,
            remaining: args.tasks,
            done: 0,
        }
    }
}

impl Job for Noop {
    fn next_task(&mut self) -> Option<Result<Value>> {
        self.remaining = self.remaining.checked_sub(1)?;
        Some(Ok(Value::Null))
    }

    fn reduce(&mut self, _id: TaskId, _output: Value) -> Result<()> {
        self.done += 1;
        Ok(())
    }

    fn total_tasks(&self) -> Option<u64> {
        Some(self.tasks)
    }

    fn summary(self: Box<Self>, report: &PoolReport) -> Result<Summary> {
        let per_second = self.done as f64 / report.wall.as_secs_f64();
        Ok(Summary::new(
            format!("{} empty tasks, {per_second:.0} tasks/s", self.done),
            json!({"tasks": self.done, "tasks_per_s": per_second}),
        ))
    }
}

pub fn run_task(_input: &Value) -> Result<Value, String> {
    Ok(Value::Null)
}

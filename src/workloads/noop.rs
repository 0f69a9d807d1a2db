//! `noop`: empty tasks, to measure the pool's own overhead per task.

use anyhow::Result;
use procpool_child::TaskId;
use procpool_supervisor::PoolReport;
use serde_json::json;

use super::{Ignored, Summary, TypedHandler, Workload};

/// Options of `procpool run noop`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// How many empty tasks to run.
    #[arg(long, default_value = "100000", value_parser = crate::parse::count)]
    pub tasks: u64,
}

/// `tasks` nulls out, any answers back.
pub struct Noop {
    tasks: u64,
    remaining: u64,
    done: u64,
}

impl Workload for Noop {
    const NAME: &'static str = "noop";
    const ABOUT: &'static str = "Empty tasks, to measure the pool's own overhead per task";
    type Args = Args;
    type Input = Ignored;
    type Output = Ignored;

    fn plan(args: &Args, _procs: usize) -> Result<Noop> {
        Ok(Noop {
            tasks: args.tasks,
            remaining: args.tasks,
            done: 0,
        })
    }

    fn next_input(&mut self) -> Option<Result<Ignored>> {
        self.remaining = self.remaining.checked_sub(1)?;
        Some(Ok(Ignored))
    }

    fn reduce(&mut self, _id: TaskId, _output: Ignored) -> Result<(), String> {
        self.done += 1;
        Ok(())
    }

    fn total_tasks(&self) -> Option<u64> {
        Some(self.tasks)
    }

    fn summary(self, report: &PoolReport) -> Result<Summary> {
        let per_second = self.done as f64 / report.wall.as_secs_f64();
        Ok(Summary::new(
            format!("{} empty tasks, {per_second:.0} tasks/s", self.done),
            json!({"tasks": self.done, "tasks_per_s": per_second}),
        ))
    }

    fn worker() -> Result<TypedHandler<Noop>, String> {
        Ok(Box::new(|Ignored| Ok(Ignored)))
    }
}

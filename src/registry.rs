//! The table of what `procpool run` can run, by name: every workload, and the line
//! stream of `run tasks`. The command line is built from it (`cli.rs`), and so are the
//! workers: `procpool worker <name>` and `--start fork` look their name up here.

use anyhow::Result;
use serde::Deserialize;
use serde_json::Value;

use crate::source::{lines, TaskSource};
use crate::workloads::{
    colmeans, crash, crawl, mandelbrot, matmul, maze, noop, primes, Planned, Workload,
};

/// The worker side with the types erased, as a worker serves it.
pub type TaskHandler = Box<dyn FnMut(&Value) -> Result<Value, String>>;

/// Everything `procpool` knows of a workload by its name.
pub struct Registration {
    pub name: &'static str,
    pub about: &'static str,
    /// Adds its options to its `run <name>` subcommand.
    pub augment_args: fn(clap::Command) -> clap::Command,
    /// Reads its options and plans the run.
    pub start: fn(&clap::ArgMatches, usize) -> Result<Box<dyn TaskSource>>,
    /// Who runs its tasks.
    pub worker: WorkerSide,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Who runs a registration's tasks.
pub enum WorkerSide {
    /// A built-in worker (`procpool worker <name>`, or a fork), or any `--child`.
    Builtin(fn() -> Result<TaskHandler, String>),
    /// Only a `--child` worker; the text says what to pass.
    ChildOnly { usage: &'static str },
}

/// Every `procpool run` subcommand, in the order `--help` lists them. Adding a workload
/// is its file, its `pub mod` line in `workloads/mod.rs`, and one line here.
pub static REGISTRY: &[Registration] = &[
    register::<mandelbrot::Mandelbrot>(),
    register::<matmul::Matmul>(),
    register::<colmeans::Colmeans>(),
    register::<crash::Crash>(),
    register::<maze::Mazes>(),
    register::<crawl::Crawl>(),
    register::<primes::Primes>(),
    register::<noop::Noop>(),
    // Not a workload: a stream of inputs for a `--child` worker.
    Registration {
        name: "tasks",
        about: lines::ABOUT,
        augment_args: <lines::Args as clap::Args>::augment_args,
        start: lines::start,
        worker: WorkerSide::ChildOnly {
            usage: lines::USAGE,
        },
    },
];

/// The registration named `name`.
pub fn find(name: &str) -> Option<&'static Registration> {
    REGISTRY
        .iter()
        .find(|registration| registration.name == name)
}

const fn register<W: Workload>() -> Registration {
    Registration {
        name: W::NAME,
        about: W::ABOUT,
        augment_args: <W::Args as clap::Args>::augment_args,
        start: start::<W>,
        worker: WorkerSide::Builtin(erased_worker::<W>),
    }
}

fn start<W: Workload>(matches: &clap::ArgMatches, procs: usize) -> Result<Box<dyn TaskSource>> {
    let args = <W::Args as clap::FromArgMatches>::from_arg_matches(matches)?;
    Ok(Box::new(Planned(W::plan(&args, procs)?)))
}

fn erased_worker<W: Workload>() -> Result<TaskHandler, String> {
    let mut run_task = W::worker()?;
    Ok(Box::new(move |input| {
        let input = W::Input::deserialize(input)
            .map_err(|err| format!("{} task input {input}: {err}", W::NAME))?;
        let output = run_task(input)?;
        serde_json::to_value(output).map_err(|err| format!("{} task output: {err}", W::NAME))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        for registration in REGISTRY {
            let found = find(registration.name).expect("registered");
            assert!(std::ptr::eq(found, registration), "{}", registration.name);
        }
        assert!(find("bogus").is_none());
    }
}

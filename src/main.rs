//! `procpool`: run work on a pool of isolated worker processes.

mod bench;
mod cli;
mod run;
mod site;
mod status;
mod worker;
mod workloads;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Worker { workload } => ExitCode::from(worker::serve_builtin(workload) as u8),
        Command::ServeSite(args) => match site::serve(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("procpool serve-site: error: {err:#}");
                ExitCode::from(1)
            }
        },
        Command::Bench(args) => match bench::bench(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("procpool: error: {err:#}");
                ExitCode::from(1)
            }
        },
        Command::Run(args) => match run::run(*args) {
            Ok(code) => code,
            Err(err) => {
                eprintln!("procpool: error: {err:#}");
                // Usage mistakes exit 2 like clap's; a run that could not proceed exits 1.
                let usage = err.downcast_ref::<run::UsageError>().is_some();
                ExitCode::from(if usage { 2 } else { 1 })
            }
        },
    }
}

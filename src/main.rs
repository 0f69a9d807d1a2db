//! `procpool`: run work on a pool of isolated worker processes.

mod bench;
mod broker;
mod check_worker;
mod cli;
mod gen;
mod joblog;
mod out_file;
mod parse;
mod registry;
mod room;
mod run;
mod serve;
mod site;
mod source;
mod splitmix;
mod status;
mod stdout;
mod worker;
mod workloads;

use std::process::ExitCode;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::try_parse_args(std::env::args_os()).unwrap_or_else(|err| err.exit());
    let outcome = match cli.command {
        Command::Worker { workload } => {
            // clap took only names of the table, so the lookup finds it.
            let code = registry::find(&workload).map_or(2, worker::serve_builtin);
            return ExitCode::from(code as u8);
        }
        Command::CheckWorker(args) => return check_worker::main(&args),
        Command::ServeSite(args) => site::serve(&args).map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => bench::bench(&args).map(|()| ExitCode::SUCCESS),
        Command::Gen(args) => gen::run(args).map(|_| ExitCode::SUCCESS),
        Command::Run(args) => run::run(*args),
        Command::Serve(args) => serve::serve(*args),
        Command::Node(args) => broker::node::node(*args),
        Command::Status(args) => broker::status::status(&args),
    };
    let code = outcome.unwrap_or_else(failure);
    // What is still queued for stderr, unless nobody reads it.
    procpool_supervisor::stderr_queue::finish(STDERR_PATIENCE);
    code
}

/// How long the last log lines wait for a stderr that takes nothing, at exit.
const STDERR_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// Prints why a command failed and picks its exit code: 2 for a usage mistake (like
/// clap's own), 1 for a run that could not proceed, 141 (quietly) for a reader of
/// the output that went away.
fn failure(err: anyhow::Error) -> ExitCode {
    if stdout::failed_on_closed_pipe(&err) {
        return ExitCode::from(stdout::EXIT_CLOSED_STDOUT);
    }
    procpool_supervisor::stderr_queue::write(&format!("procpool: error: {err:#}\n"));
    let usage = err.downcast_ref::<run::UsageError>().is_some();
    ExitCode::from(if usage { 2 } else { 1 })
}

//! The command line: `procpool run <workload> [options]`.

use std::time::Duration;

use clap::{ArgMatches, FromArgMatches, Parser, Subcommand, ValueEnum};
use procpool_supervisor::DEFAULT_PREFETCH;

use crate::parse;
use crate::registry::{self, Registration, WorkerSide, REGISTRY};

const EXAMPLES: &str = "\
Examples:
  procpool run matmul                       C = A·B for two 2048x2048 matrices in shared memory
  procpool run matmul --n 4096 --check      bigger, and verified independently
  procpool run primes                       count primes below 1e10 on one worker per core
  procpool run primes --limit 1e9 --procs 8 eight workers, oversubscribed if need be
  procpool run noop --tasks 100000 --json   the pool's own overhead, as JSON
  procpool run primes --start fork          fork the workers instead of re-executing
  procpool run mandelbrot --out set.png     the classic image, rows balanced dynamically
  procpool run maze --big --size 1001       one maze, BFS level by level across workers
  procpool run crash --mode segv --every 10 one task in ten segfaults its worker
  procpool run colmeans --file big.npy      column means of a file larger than memory
  procpool gen array --rows 1e7 --cols 8 big.npy   a 640 MB test array
  procpool run tasks --child 'python3 w.py' < in.jsonl > out.jsonl
                                            one task per input line, one result line each
  procpool check-worker 'python3 w.py'      check a worker against protocol v1
  procpool run crawl --procs 16             crawl a demo site on 127.0.0.1, 16 fetches at once
  procpool node --broker redis://db:6379 --queue q   on each machine: serve queue q
  procpool run primes --broker redis://db:6379 --queue q   its tasks through Redis

  procpool bench primes --procs 1,2 -- --limit 1e9   scaling table

While a run goes, `kill -9` any worker pid: the slot restarts and its task is retried.
Ctrl-C stops dispatch and lets running tasks finish; a second Ctrl-C kills them.

Exit codes: 0 success, 1 a task failed or the pool gave up, 2 usage error, 130 interrupted.";

/// Run work on a pool of isolated worker processes, one per core, and survive any of
/// them crashing.
#[derive(Debug, Parser)]
#[command(name = "procpool", version, about, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The command line as `procpool` parses it: clap's, with negative numbers taken
    /// as values, so `--procs -1` meets the option's own bound (`must be at least 1`)
    /// instead of clap's "unexpected argument '-1'".
    pub fn command_line() -> clap::Command {
        numbers_may_be_negative(<Cli as clap::CommandFactory>::command())
    }

    /// Parses `args`, or says why not (a clap error, exit code 2).
    pub fn try_parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Cli::command_line().try_get_matches_from(args)?;
        Cli::from_arg_matches(&matches)
    }
}

fn numbers_may_be_negative(command: clap::Command) -> clap::Command {
    command
        .mut_args(|arg| match arg.get_action().takes_values() {
            true => arg.allow_negative_numbers(true),
            false => arg,
        })
        .mut_subcommands(numbers_may_be_negative)
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a workload on a pool of worker processes.
    #[command(after_help = EXAMPLES)]
    Run(Box<RunArgs>),
    /// Run a workload at several pool sizes and report speedup and efficiency.
    Bench(crate::bench::BenchArgs),
    /// Generate input data (deterministic, streamed to disk).
    #[command(subcommand)]
    Gen(crate::gen::GenArgs),
    /// Check that a worker command speaks protocol v1: ready, several tasks in flight
    /// answered exactly once each, exit 0 on stop and on EOF. Prints a checklist.
    CheckWorker(crate::check_worker::Args),
    /// A private supervisor for one client (the Python package): requests on stdin,
    /// task ends and worker events on stdout, JSON lines (child/PROTOCOL.md).
    Serve(Box<crate::serve::ServeArgs>),
    /// Serve a queue in Redis as a node: a local pool whose tasks come from the queue
    /// (`run <workload> --broker URL --queue NAME` puts them there). SIGTERM drains.
    Node(Box<crate::broker::node::NodeArgs>),
    /// Show a queue in Redis: tasks waiting, in flight and dead-lettered, and its nodes.
    Status(crate::broker::status::StatusArgs),
    /// Serve as a built-in worker: tasks on stdin, answers on stdout (protocol v1).
    #[command(hide = true)]
    Worker {
        /// The workload whose tasks to run.
        #[arg(value_parser = builtin_workers())]
        workload: String,
    },
    /// Serve the generated demo site that `run crawl` crawls, until stdin closes.
    #[command(hide = true)]
    ServeSite(crate::site::ServeArgs),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub pool: PoolArgs,
    #[command(flatten)]
    pub broker: crate::broker::BrokerArgs,
    #[command(flatten)]
    pub submit: crate::broker::submit::SubmitArgs,
    #[command(subcommand)]
    pub workload: WorkloadArgs,
}

/// The workload of a run, one of [`REGISTRY`], and its options as clap read them
/// (its `Args` are parsed from them when the run starts).
#[derive(Debug, Clone)]
pub struct WorkloadArgs {
    pub registration: &'static Registration,
    pub matches: ArgMatches,
}

impl FromArgMatches for WorkloadArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let (name, matches) = matches
            .subcommand()
            .ok_or_else(|| clap::Error::new(clap::error::ErrorKind::MissingSubcommand))?;
        let registration = registry::find(name)
            .ok_or_else(|| clap::Error::new(clap::error::ErrorKind::InvalidSubcommand))?;
        Ok(WorkloadArgs {
            registration,
            matches: matches.clone(),
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = WorkloadArgs::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Subcommand for WorkloadArgs {
    fn augment_subcommands(command: clap::Command) -> clap::Command {
        REGISTRY.iter().fold(command, |command, registration| {
            let subcommand = (registration.augment_args)(clap::Command::new(registration.name));
            command.subcommand(subcommand.about(registration.about))
        })
    }

    fn augment_subcommands_for_update(command: clap::Command) -> clap::Command {
        WorkloadArgs::augment_subcommands(command)
    }

    fn has_subcommand(name: &str) -> bool {
        registry::find(name).is_some()
    }
}

/// The names `procpool worker` takes: the workloads that have a built-in worker.
fn builtin_workers() -> clap::builder::PossibleValuesParser {
    let names = REGISTRY
        .iter()
        .filter(|registration| matches!(registration.worker, WorkerSide::Builtin(_)))
        .map(|registration| registration.name);
    clap::builder::PossibleValuesParser::new(names)
}

/// How workers are started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StartMode {
    /// Re-execute the procpool binary as a worker (works with any workload).
    Spawn,
    /// Fork the supervisor (built-in workloads only; fastest start).
    Fork,
}

/// Options shared by every workload, listed apart from the workload's own in help.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Pool options")]
pub struct PoolArgs {
    /// Worker processes [default: the cores this process may use]
    #[arg(long, global = true, value_parser = parse::whole::<u32>(1, 4096))]
    pub procs: Option<u32>,
    /// How workers are started.
    #[arg(long, global = true, value_enum, default_value_t = StartMode::Spawn)]
    pub start: StartMode,
    /// Run this command as the worker instead of the built-in one (any executable that
    /// speaks protocol v1; split into words like a shell would, executed without one).
    #[arg(long, global = true, value_name = "CMD")]
    pub child: Option<String>,
    /// Tasks in flight per worker.
    #[arg(long, global = true, default_value_t = DEFAULT_PREFETCH as u32,
          value_parser = parse::whole::<u32>(1, 1024))]
    pub prefetch: u32,
    /// A task that was running in this many crashed workers is quarantined as failed.
    #[arg(long, global = true, default_value_t = 3,
          value_parser = parse::whole::<u32>(1, 1000))]
    pub max_attempts: u32,
    /// Restart intensity: at most this many worker restarts per --restart-period
    /// [default: 5 per worker, at least 10].
    #[arg(long, global = true, value_parser = parse::whole::<u32>(0, u32::MAX.into()))]
    pub max_restarts: Option<u32>,
    /// The window of --max-restarts, in seconds.
    #[arg(long, global = true, default_value = "10", value_parser = parse::seconds)]
    pub restart_period: Duration,
    /// Kill a worker whose task runs longer than this many seconds (counts as a crash).
    #[arg(long, global = true, value_parser = parse::positive_seconds)]
    pub task_timeout: Option<Duration>,
    /// Kill a worker that has not sent `ready` this many seconds after starting.
    #[arg(long, global = true, default_value = "30", value_parser = parse::positive_seconds)]
    pub ready_timeout: Duration,
    /// Replace each worker after it has answered this many tasks.
    #[arg(long, global = true, value_parser = parse::whole::<u64>(1, u64::MAX))]
    pub max_tasks_per_child: Option<u64>,
    /// Seconds workers get to finish at shutdown or after Ctrl-C before being killed.
    #[arg(long, global = true, default_value = "5", value_parser = parse::seconds)]
    pub grace: Duration,
    /// SIGKILL a random busy worker this many times per second (to watch recovery).
    #[arg(long, global = true, value_parser = parse::rate)]
    pub chaos: Option<f64>,
    /// Keep workers in procpool's own cgroup: no cgroup per pool and per worker, even
    /// where cgroup v2 would allow them (what workers leave behind is then found by
    /// process group and the subreaper alone).
    #[arg(long, global = true)]
    pub no_cgroup: bool,
    /// Run even when what the workload makes (a matrix, an image, a dataset) looks
    /// larger than the memory or disk space available.
    #[arg(long, global = true)]
    pub force: bool,
    /// Append one JSON line per task to FILE as it ends (outcome, attempts, worker,
    /// times), and one per task that never ran.
    #[arg(long, global = true, value_name = "FILE")]
    pub joblog: Option<std::path::PathBuf>,
    /// The longest line, in bytes (256M, 1G): of a worker's stdout, past which the
    /// worker is killed, and of `run tasks` input, past which the run stops reading.
    #[arg(long, global = true, default_value = "256M", value_parser = parse::bytes)]
    pub max_line: usize,
    /// Print one JSON object (the result and the run report) instead of a summary.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print no worker events, only the summary and errors.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Print a progress line (done of total, rate, ETA) on stderr every 2 seconds
    /// where there is no live table: stderr not a terminal (CI logs, nohup), or results
    /// streaming to the terminal.
    #[arg(long, global = true)]
    pub progress: bool,
}

/// `--max-line` as a workload sees it in its own options (a global option is handed
/// down to the workload's subcommand).
pub fn max_line(matches: &ArgMatches) -> usize {
    matches
        .get_one::<usize>("max_line")
        .copied()
        .unwrap_or(procpool_supervisor::DEFAULT_MAX_LINE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command_line().debug_assert();
    }

    #[test]
    fn pool_options_go_after_the_workload() {
        let cli = Cli::try_parse_args([
            "procpool", "run", "primes", "--procs", "3", "--limit", "100",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(run.pool.procs, Some(3));
        assert_eq!(run.workload.registration.name, "primes");
    }

    #[test]
    fn absurd_durations_are_usage_errors() {
        for grace in ["1e19", "-1", "NaN", "soon"] {
            let err =
                Cli::try_parse_args(["procpool", "run", "noop", "--grace", grace]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{grace}");
        }
    }

    #[test]
    fn the_workload_sees_max_line() {
        for (args, expected) in [(&["--max-line", "1G"][..], 1 << 30), (&[], 256 << 20)] {
            let cli = Cli::try_parse_from(
                ["procpool", "run", "tasks", "--child", "w"]
                    .iter()
                    .chain(args),
            )
            .unwrap();
            let Command::Run(run) = cli.command else {
                panic!("expected run")
            };
            assert_eq!(run.pool.max_line, expected);
            assert_eq!(max_line(&run.workload.matches), expected);
        }
    }

    #[test]
    fn zero_procs_is_a_usage_error() {
        let err = Cli::try_parse_args(["procpool", "run", "noop", "--procs", "0"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}

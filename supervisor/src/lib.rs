//! How procpool runs and watches worker processes.
//!
//! A [`Pool`] starts `procs` workers — by executing a command (the procpool binary
//! re-executed, or any program that speaks protocol v1) or by forking — and feeds them
//! tasks from a joinable queue: [`Pool::put`] adds a task, [`Pool::next_event`] runs the
//! event loop until something happens (a task finished, a worker died), and returns
//! `None` once the queue is joined; [`Pool::shutdown`] sends one `stop` per worker,
//! reaps them all and returns the [`PoolReport`].
//!
//! The pool is one thread and one `poll` loop over the workers' pipes, a signal
//! self-pipe and the nearest deadline, so forking stays safe at any time. A worker that
//! dies has its tasks retried elsewhere (up to `max_attempts` deaths charged to each),
//! and its slot restarted under an OTP-style [`RestartPolicy`] that counts progress;
//! every task ends exactly once, as a result, an error, or a quarantined failure.
//! SIGINT and SIGTERM are the caller's unless [`PoolConfig::handle_interrupts`] hands
//! them to the pool; [`Pool::interrupt`] does the same from code.
//!
//! Inside, the rules (dispatch, charging, quarantine, restarts, deadlines, shutdown)
//! are a core that makes no system call and reads no clock: the `Pool` shell feeds it
//! what the OS reports and carries out the commands it returns.
//!
//! Tasks may come from a stream: [`Pool::next_event_or_input`] also wakes when the
//! stream's descriptor is readable, and a [`LineReader`] splits it into lines without
//! ever waiting on it.
//!
//! ```no_run
//! use procpool_supervisor::{Event, Pool, PoolConfig, TaskOutcome, WorkerStart};
//!
//! let start = WorkerStart::Spawn { program: "./my-worker".into(), args: vec![] };
//! let mut pool = Pool::start(PoolConfig::new(4, start))?;
//! let id = pool.put(serde_json::json!({"n": 10}));
//! while let Some(event) = pool.next_event()? {
//!     if let Event::Task { id: done, outcome, .. } = event {
//!         assert_eq!(done, id);
//!         println!("{outcome:?}");
//!     }
//! }
//! let report = pool.shutdown();
//! assert_eq!(report.tasks_ok, 1);
//! # Ok::<(), procpool_supervisor::PoolError>(())
//! ```
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod book;
pub mod cgroup;
mod config;
mod core;
mod event;
mod lines;
mod oom;
mod orphans;
mod poll;
mod pool;
mod queue;
mod report;
mod restart;
mod signals;
mod slot;
mod start_error;
pub mod stderr_queue;
mod sys;
mod worker;

pub use config::{
    LogSink, PoolConfig, TaskOptions, WorkerStart, DEFAULT_MAX_LINE, DEFAULT_PREFETCH,
    QUEUED_WORK_TARGET,
};
pub use event::{AbortReason, Charge, Event, LostTask, PoolError, TaskOutcome, READY_HINT};
pub use lines::{LineReader, ReadOutcome};
pub use pool::{size_text, Pool};
pub use queue::JoinableQueue;
pub use report::{
    quarantine_message, CpuTime, Crash, ExitSignal, ExitStatus, KillReason, OomCheck, PoolReport,
    RunEnd, TaskFailure, WorkerReport,
};
pub use restart::RestartPolicy;
pub use slot::WorkerStatus;
pub use start_error::explain_start_error;
pub use worker::LOG_LINE_MAX;

//! What a procpool worker is: the protocol v1 messages, their line framing, the
//! worker's environment, and [`serve`], the loop a Rust worker runs.
//!
//! A worker reads JSON lines on stdin and writes JSON lines on stdout; see
//! `PROTOCOL.md` in this crate for the full contract, written for any language.
//! [`serve`] sends `started` before it runs each task, so when a task takes the
//! process down, the supervisor charges that task and retries the rest for free.
//!
//! ```no_run
//! // A complete worker: doubles every number it is given.
//! procpool_child::serve(|task| {
//!     let n = task.input.as_f64().ok_or("expected a number")?;
//!     Ok(serde_json::json!(n * 2.0))
//! })
//! .expect("stdin/stdout closed");
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod env;
mod protocol;
mod serve;
mod stdout_line;

pub use env::{ArraySpec, EnvError, WorkerEnv, ENV_ARRAYS, ENV_PROCS, ENV_PROTOCOL, ENV_WORKER};
pub use protocol::{
    decode_line, encode_line, encode_task, FromWorker, ParseError, Task, TaskId, ToWorker,
    PROTOCOL_VERSION,
};
pub use serve::{serve, serve_on};
pub use stdout_line::{decode_stdout_line, StdoutLine, MAX_DEPTH};

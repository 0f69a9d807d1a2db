//! stdout for reports that people pipe into `head`: a reader that went away ends
//! procpool the way a shell tool killed by SIGPIPE ends, quietly with exit 141.
//! procpool itself ignores SIGPIPE (a write to a dead worker must fail, not kill the
//! supervisor), so every write to stdout that meets a closed pipe comes here.

use std::fmt;
use std::io::{self, Write};

/// The exit code of a process killed by SIGPIPE, as a shell reports it (128 + 13).
pub const EXIT_CLOSED_STDOUT: u8 = 141;

/// Writes one line to stdout and flushes it (a checklist shows as it goes).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::stdout::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

pub fn line(text: fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    let written = out
        .write_fmt(text)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(err) = written {
        if is_closed_pipe(&err) {
            std::process::exit(EXIT_CLOSED_STDOUT.into());
        }
        eprintln!("procpool: error: writing to stdout: {err}");
        std::process::exit(1);
    }
}

pub fn is_closed_pipe(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::BrokenPipe
}

/// Whether a failure comes down to a closed stdout (or another closed output pipe,
/// such as `run tasks --output -`): then there is no one to tell.
pub fn failed_on_closed_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<io::Error>())
        .any(is_closed_pipe)
}

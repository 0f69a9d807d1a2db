//! One worker process as the supervisor holds it: its pid, the write end of its stdin
//! with the bytes not yet written, and line readers over its stdout and stderr.
//! Dropping a `WorkerProcess` that was not reaped kills and reaps it.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use procpool_child::{encode_line, ToWorker};

use crate::lines::LineReader;
use crate::report::{CpuTime, ExitStatus};
use crate::sys;

/// The longest line a worker may write; past it the worker is treated as broken.
pub(crate) const MAX_LINE: usize = 1 << 30;

pub(crate) struct WorkerProcess {
    pub pid: Pid,
    stdin: Option<File>,
    outbox: Vec<u8>,
    /// Close stdin once the outbox is written (after `stop`: EOF says the same).
    closing: bool,
    pub stdout: LineReader,
    pub stderr: LineReader,
    reaped: bool,
}

impl WorkerProcess {
    pub(crate) fn new(pid: Pid, stdin: OwnedFd, stdout: OwnedFd, stderr: OwnedFd) -> Self {
        WorkerProcess {
            pid,
            stdin: Some(File::from(stdin)),
            outbox: Vec::new(),
            closing: false,
            stdout: LineReader::new(stdout.into(), Some(MAX_LINE)),
            stderr: LineReader::new(stderr.into(), Some(MAX_LINE)),
            reaped: false,
        }
    }

    /// Queues bytes for the worker's stdin; [`flush_outbox`](Self::flush_outbox)
    /// writes them, so that the lines of one turn go out in one write.
    pub(crate) fn queue(&mut self, bytes: &[u8]) {
        self.outbox.extend_from_slice(bytes);
    }

    /// Writes queued bytes until the pipe is full. A worker that closed its stdin
    /// gets nothing more; its death is noticed through its stdout and `waitpid`.
    pub(crate) fn flush_outbox(&mut self) {
        while !self.outbox.is_empty() {
            let Some(stdin) = self.stdin.as_mut() else {
                self.outbox.clear();
                return;
            };
            match stdin.write(&self.outbox) {
                Ok(n) => {
                    self.outbox.drain(..n);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => self.stdin = None,
            }
        }
        if self.closing {
            self.stdin = None;
        }
    }

    /// Queues the `stop` sentinel; stdin is closed once everything queued is written.
    pub(crate) fn stop(&mut self) {
        self.closing = true;
        self.queue(&encode_line(&ToWorker::Stop));
    }

    /// The stdin descriptor while bytes wait to be written (to poll for writability).
    pub(crate) fn stdin_pending(&self) -> Option<BorrowedFd<'_>> {
        match &self.stdin {
            Some(stdin) if !self.outbox.is_empty() => Some(stdin.as_fd()),
            _ => None,
        }
    }

    pub(crate) fn kill(&self, sig: Signal) {
        if !self.reaped {
            sys::kill_group(self.pid, sig);
        }
    }

    /// Reaps the worker if it has exited; its process group (the worker's own
    /// children) is killed first, so nothing it started outlives it.
    pub(crate) fn try_reap(&mut self) -> Option<(ExitStatus, CpuTime)> {
        if self.reaped {
            return None;
        }
        let reaped = match sys::try_reap(self.pid) {
            Ok(reaped) => reaped,
            // ECHILD: someone else reaped it (SIGCHLD ignored, a stray waitpid(-1)).
            Err(_) => Some((ExitStatus::Unknown, CpuTime::default())),
        };
        self.reaped = reaped.is_some();
        reaped
    }

    pub(crate) fn kill_and_reap(&mut self) -> Option<(ExitStatus, CpuTime)> {
        if self.reaped {
            return None;
        }
        // EOF on stdin too, for a worker that has not yet left our process group.
        self.stdin = None;
        self.kill(Signal::SIGKILL);
        self.reaped = true;
        sys::reap_blocking(self.pid).ok().flatten()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

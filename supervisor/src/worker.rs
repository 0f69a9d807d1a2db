//! One worker process as the supervisor holds it: its pid, the write end of its stdin
//! with the bytes not yet written, and line readers over its stdout and stderr (each
//! bounded: see [`PoolConfig::max_line`](crate::PoolConfig::max_line) and
//! [`LOG_LINE_MAX`]).
//! Dropping a `WorkerProcess` that was not reaped kills and reaps it.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use procpool_child::{encode_line, ToWorker};

use crate::lines::LineReader;
use crate::report::{CpuTime, ExitStatus};
use crate::sys;

/// The longest stderr (log) line kept; the rest of a longer line is dropped and the
/// line forwarded cut, with a mark.
pub const LOG_LINE_MAX: usize = 64 * 1024;

pub(crate) struct WorkerProcess {
    pub pid: Pid,
    stdin: Option<File>,
    outbox: Vec<u8>,
    /// Bytes at the front of `outbox` already written: the front is never moved per
    /// write, so a long line costs one pass (a memmove per 64 KiB write was quadratic).
    written: usize,
    /// Close stdin once the outbox is written (after `stop`: EOF says the same).
    closing: bool,
    pub stdout: LineReader,
    pub stderr: LineReader,
    /// Its leaf in the pool's cgroup, if it has one.
    pub cgroup: Option<PathBuf>,
    reaped: bool,
}

impl WorkerProcess {
    /// A worker whose stdout lines may be up to `max_line` bytes long.
    pub(crate) fn new(
        pid: Pid,
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
        max_line: usize,
        cgroup: Option<PathBuf>,
    ) -> Self {
        WorkerProcess {
            pid,
            stdin: Some(File::from(stdin)),
            outbox: Vec::new(),
            written: 0,
            closing: false,
            stdout: LineReader::new(stdout.into(), Some(max_line)),
            stderr: LineReader::cutting(stderr.into(), LOG_LINE_MAX),
            cgroup,
            reaped: false,
        }
    }

    /// Queues a line for the worker's stdin; [`flush_outbox`](Self::flush_outbox)
    /// writes it, so that the lines of one turn go out in one write. A line queued
    /// to an empty outbox becomes the outbox, uncopied.
    pub(crate) fn queue(&mut self, line: Vec<u8>) {
        if self.written == self.outbox.len() {
            self.outbox = line;
            self.written = 0;
            return;
        }
        if self.written * 2 >= self.outbox.len() {
            // Cheaper to move the unwritten rest than what was written is long.
            self.outbox.drain(..self.written);
            self.written = 0;
        }
        self.outbox.extend_from_slice(&line);
    }

    /// Writes queued bytes until the pipe is full. `Err` when the worker closed its
    /// stdin (EPIPE) or the pipe broke: what was queued is dropped, the worker gets
    /// nothing more, and the caller must see to it (a worker that cannot be sent
    /// tasks is killed).
    pub(crate) fn flush_outbox(&mut self) -> io::Result<()> {
        while self.written < self.outbox.len() {
            let Some(stdin) = self.stdin.as_mut() else {
                self.clear_outbox();
                return Ok(());
            };
            match stdin.write(&self.outbox[self.written..]) {
                Ok(n) => self.written += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) => {
                    self.stdin = None;
                    self.clear_outbox();
                    return Err(err);
                }
            }
        }
        self.clear_outbox();
        if self.closing {
            self.stdin = None;
        }
        Ok(())
    }

    /// Empties the outbox, giving back the memory of a long line's (an outbox is as
    /// long as the longest line queued since).
    fn clear_outbox(&mut self) {
        const KEPT_CAPACITY: usize = 1 << 20;
        self.outbox.clear();
        if self.outbox.capacity() > KEPT_CAPACITY {
            self.outbox = Vec::new();
        }
        self.written = 0;
    }

    /// Queues the `stop` sentinel; stdin is closed once everything queued is written.
    pub(crate) fn stop(&mut self) {
        self.closing = true;
        self.queue(encode_line(&ToWorker::Stop));
    }

    /// The stdin descriptor while open (to poll: for writability while bytes wait, and
    /// for its reader closing it), and whether bytes wait.
    pub(crate) fn stdin(&self) -> (Option<BorrowedFd<'_>>, bool) {
        let fd = self.stdin.as_ref().map(|stdin| stdin.as_fd());
        (fd, self.written < self.outbox.len())
    }

    /// The worker closed its stdin (poll says the pipe is broken): nothing more can
    /// be sent, and what was queued is dropped.
    pub(crate) fn stdin_broken(&mut self) {
        self.stdin = None;
        self.clear_outbox();
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

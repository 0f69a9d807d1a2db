//! One worker process as the supervisor holds it: its pid, the write end of its stdin
//! with the bytes not yet written, and line readers over its stdout and stderr.
//! Dropping a `WorkerProcess` that was not reaped kills and reaps it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use procpool_child::{encode_line, ToWorker};

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
            stdout: LineReader::new(stdout),
            stderr: LineReader::new(stderr),
            reaped: false,
        }
    }

    /// Queues bytes for the worker's stdin and writes what the pipe takes now.
    pub(crate) fn send(&mut self, bytes: &[u8]) {
        self.outbox.extend_from_slice(bytes);
        self.flush_outbox();
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

    /// Sends the `stop` sentinel, then closes stdin once everything queued is written.
    pub(crate) fn stop(&mut self) {
        self.closing = true;
        self.send(&encode_line(&ToWorker::Stop));
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

/// Splits a non-blocking pipe into lines.
pub(crate) struct LineReader {
    fd: Option<File>,
    /// Where each read lands before it is appended: allocated (and zeroed) once, not per read.
    chunk: Box<[u8]>,
    buffer: Vec<u8>,
    /// Bytes at the front of `buffer` already handed out as lines.
    consumed: usize,
    /// Bytes of `buffer` already searched for a newline.
    scanned: usize,
    /// Length of the unfinished line at the end of `buffer`.
    partial_len: usize,
    /// Dropping the rest of a line that grew past [`MAX_LINE`], up to its newline.
    discarding: bool,
}

/// What one read from a worker pipe gave.
pub(crate) enum ReadOutcome {
    /// The pipe is open; complete lines may be waiting in the reader.
    Open,
    /// The writer closed its end; the last partial line, if any, is now a line.
    Eof,
    /// A line longer than [`MAX_LINE`]: dropped, up to its newline.
    LineTooLong,
}

impl LineReader {
    fn new(fd: OwnedFd) -> Self {
        LineReader {
            fd: Some(File::from(fd)),
            chunk: vec![0; 64 * 1024].into_boxed_slice(),
            buffer: Vec::new(),
            consumed: 0,
            scanned: 0,
            partial_len: 0,
            discarding: false,
        }
    }

    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd())
    }

    pub(crate) fn is_open(&self) -> bool {
        self.fd.is_some()
    }

    /// Reads what the pipe holds now, up to a bound so that one chatty worker cannot
    /// keep the event loop from the others (poll is level-triggered: the rest waits).
    pub(crate) fn fill(&mut self) -> ReadOutcome {
        const READS_PER_FILL: usize = 16;
        for _ in 0..READS_PER_FILL {
            let Some(fd) = self.fd.as_mut() else {
                return ReadOutcome::Eof;
            };
            match fd.read(&mut self.chunk) {
                Ok(0) => {
                    self.fd = None;
                    if self.partial_len > 0 {
                        self.buffer.push(b'\n');
                        self.partial_len = 0;
                    }
                    return ReadOutcome::Eof;
                }
                Ok(n) => {
                    self.compact();
                    let mut chunk = &self.chunk[..n];
                    if self.discarding {
                        let Some(newline) = chunk.iter().position(|&b| b == b'\n') else {
                            continue;
                        };
                        self.discarding = false;
                        chunk = &chunk[newline + 1..];
                    }
                    self.buffer.extend_from_slice(chunk);
                    self.partial_len = match chunk.iter().rposition(|&b| b == b'\n') {
                        Some(last_newline) => chunk.len() - last_newline - 1,
                        None => self.partial_len + chunk.len(),
                    };
                    if self.partial_len > MAX_LINE {
                        // Drop the line, and the rest of it as it arrives; the pipe stays
                        // open, so the writer is not killed by SIGPIPE for a long line.
                        self.buffer.truncate(self.buffer.len() - self.partial_len);
                        self.scanned = self.scanned.min(self.buffer.len());
                        self.partial_len = 0;
                        self.discarding = true;
                        return ReadOutcome::LineTooLong;
                    }
                    if n < self.chunk.len() {
                        return ReadOutcome::Open;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Open,
                Err(_) => {
                    self.fd = None;
                    return ReadOutcome::Eof;
                }
            }
        }
        ReadOutcome::Open
    }

    /// The next complete line, without its newline.
    pub(crate) fn next_line(&mut self) -> Option<Vec<u8>> {
        let newline = self.buffer[self.scanned..].iter().position(|&b| b == b'\n');
        match newline {
            Some(offset) => {
                let end = self.scanned + offset;
                let line = self.buffer[self.consumed..end].to_vec();
                self.consumed = end + 1;
                self.scanned = self.consumed;
                Some(line)
            }
            None => {
                self.scanned = self.buffer.len();
                None
            }
        }
    }

    /// Drops lines already handed out, moving the rest to the front only when that
    /// costs less than what was handed out (so many short lines stay linear).
    fn compact(&mut self) {
        if self.consumed > 0 && self.consumed * 2 >= self.buffer.len() {
            self.buffer.drain(..self.consumed);
            self.scanned -= self.consumed;
            self.consumed = 0;
        }
    }
}

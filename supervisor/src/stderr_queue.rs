//! procpool's own stderr, which must never stall the pool: its log and the worker
//! lines it forwards go through one bounded queue, written without blocking from the
//! event loop (which waits for stderr to be writable while bytes are queued). When a
//! reader is slower than the workers write, or nobody reads, the queue fills and
//! later lines are dropped and counted: `procpool: N log lines dropped` is written
//! once room comes back. Tasks keep flowing and signals act at once either way.
//!
//! stderr is one per process, so the queue is too. A pipe or terminal is opened again
//! (`/proc/self/fd/2`) as a non-blocking description of this process's own, so that
//! the shell's description is left as it is; a regular file, whose writes do not
//! wait on a reader, is written as it is, as is anything that cannot be opened again
//! (a socket, where writes then may block).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bytes queued at most; past it, lines are dropped.
pub const STDERR_QUEUE_BYTES: usize = 1 << 20;

static QUEUE: Mutex<Queue> = Mutex::new(Queue::new());

/// Queues `text` (one or more whole lines) for stderr and writes what stderr takes
/// now, without waiting. Dropped, and counted, when the queue is full.
pub fn write(text: &str) {
    let mut queue = lock();
    queue.push(text.as_bytes());
    queue.flush();
}

/// Writes what is queued, waiting while stderr takes it, and gives up once it has
/// taken nothing for `patience` (a reader that never reads): for the end of a run.
pub fn finish(patience: Duration) {
    let mut queue = lock();
    let mut last_progress = Instant::now();
    loop {
        let before = queue.bytes;
        queue.flush();
        queue.note_drops();
        queue.flush();
        if queue.bytes < before {
            last_progress = Instant::now();
        }
        let Some(fd) = queue.pending_fd() else {
            return;
        };
        let left = patience.saturating_sub(last_progress.elapsed());
        if left.is_zero() {
            break;
        }
        let mut entry = [libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
            events: libc::POLLOUT,
            revents: 0,
        }];
        if crate::sys::poll(&mut entry, Some(left)).is_err() {
            break;
        }
    }
    queue.drop_all();
}

/// stderr's descriptor while bytes wait for it, for the event loop to poll.
pub(crate) fn pending_fd() -> Option<BorrowedFd<'static>> {
    lock().pending_fd()
}

/// Writes what stderr takes now (the event loop found it writable).
pub(crate) fn flush() {
    let mut queue = lock();
    queue.flush();
    queue.note_drops();
    queue.flush();
}

fn lock() -> MutexGuard<'static, Queue> {
    // A panic while holding it leaves a queue that is still consistent.
    QUEUE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where queued bytes go.
enum Out {
    Unopened,
    /// stderr reopened non-blocking: lives as long as the process, like stderr.
    NonBlocking(&'static File),
    /// stderr itself: a regular file, or what could not be reopened.
    Stderr,
    /// Writing failed (the reader went away): everything is dropped from now on.
    Broken,
}

struct Queue {
    out: Out,
    chunks: VecDeque<Vec<u8>>,
    /// Bytes of the front chunk already written.
    written: usize,
    /// Bytes queued and not written.
    bytes: usize,
    /// Lines dropped since the last note of it.
    dropped: u64,
}

impl Queue {
    const fn new() -> Queue {
        Queue {
            out: Out::Unopened,
            chunks: VecDeque::new(),
            written: 0,
            bytes: 0,
            dropped: 0,
        }
    }

    fn push(&mut self, text: &[u8]) {
        if let Out::Unopened = self.out {
            self.out = open();
        }
        if matches!(self.out, Out::Broken) {
            return;
        }
        self.note_drops();
        if self.bytes + text.len() > STDERR_QUEUE_BYTES || self.dropped > 0 {
            self.dropped += line_count(text);
            return;
        }
        self.bytes += text.len();
        self.chunks.push_back(text.to_vec());
    }

    /// Queues the count of dropped lines once there is room for it.
    fn note_drops(&mut self) {
        if self.dropped == 0 {
            return;
        }
        let note = format!(
            "procpool: {} log lines dropped (stderr was not read fast enough)\n",
            self.dropped
        );
        if self.bytes + note.len() <= STDERR_QUEUE_BYTES / 2 {
            self.dropped = 0;
            self.bytes += note.len();
            self.chunks.push_back(note.into_bytes());
        }
    }

    fn flush(&mut self) {
        while let Some(front) = self.chunks.front() {
            let result = match self.out {
                Out::NonBlocking(mut file) => file.write(&front[self.written..]),
                Out::Stderr => io::stderr().write(&front[self.written..]),
                Out::Unopened | Out::Broken => return self.drop_all(),
            };
            match result {
                Ok(0) => return,
                Ok(n) => {
                    self.written += n;
                    self.bytes -= n;
                    if self.written == front.len() {
                        self.chunks.pop_front();
                        self.written = 0;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.out = Out::Broken;
                    return self.drop_all();
                }
            }
        }
    }

    fn pending_fd(&self) -> Option<BorrowedFd<'static>> {
        match self.out {
            Out::NonBlocking(file) if !self.chunks.is_empty() => Some(file.as_fd()),
            _ => None,
        }
    }

    fn drop_all(&mut self) {
        self.chunks.clear();
        self.written = 0;
        self.bytes = 0;
    }
}

fn line_count(text: &[u8]) -> u64 {
    text.iter().filter(|&&b| b == b'\n').count().max(1) as u64
}

fn open() -> Out {
    let stderr = io::stderr();
    let kind = match stderr.as_fd().try_clone_to_owned().map(File::from) {
        Ok(file) => file.metadata().map(|meta| meta.file_type()),
        Err(err) => Err(err),
    };
    let reopen = match kind {
        Ok(kind) => kind.is_fifo() || kind.is_char_device() || stderr.is_terminal(),
        // No stderr at all (closed): nothing can be written.
        Err(_) => return Out::Broken,
    };
    if !reopen {
        return Out::Stderr;
    }
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open("/proc/self/fd/2")
    {
        Ok(file) => Out::NonBlocking(Box::leak(Box::new(file))),
        Err(_) => Out::Stderr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_full_queue_drops_lines_and_says_how_many_once_there_is_room() {
        let (read, write) = nix::unistd::pipe().unwrap();
        let write = File::from(write);
        crate::sys::set_nonblocking(write.as_fd()).unwrap();
        crate::sys::set_nonblocking(read.as_fd()).unwrap();
        let mut queue = Queue::new();
        queue.out = Out::NonBlocking(Box::leak(Box::new(write)));
        let line = format!("{}\n", "l".repeat(1023));
        let lines = 2 * STDERR_QUEUE_BYTES / line.len();
        for _ in 0..lines {
            queue.push(line.as_bytes());
            queue.flush();
        }
        assert!(queue.bytes <= STDERR_QUEUE_BYTES && queue.dropped > 0);
        let dropped = queue.dropped;
        let mut read = File::from(read);
        let mut got = Vec::new();
        let mut buffer = vec![0; 1 << 16];
        while queue.pending_fd().is_some() {
            match read.read(&mut buffer) {
                Ok(n) => got.extend_from_slice(&buffer[..n]),
                Err(err) => assert_eq!(err.kind(), io::ErrorKind::WouldBlock),
            }
            queue.flush();
            queue.note_drops();
            queue.flush();
        }
        while let Ok(n) = read.read(&mut buffer) {
            got.extend_from_slice(&buffer[..n]);
        }
        let text = String::from_utf8(got).unwrap();
        let note =
            format!("procpool: {dropped} log lines dropped (stderr was not read fast enough)\n");
        assert!(text.ends_with(&note), "{}", &text[text.len() - 200..]);
        let kept = text.lines().filter(|l| l.starts_with('l')).count() as u64;
        assert_eq!(
            kept + dropped,
            lines as u64,
            "every line is written or counted"
        );
    }
}

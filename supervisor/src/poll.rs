//! The poll registration table: one `pollfd` per thing the loop may wait on, at a
//! fixed place for the whole run (the signal pipes, the caller's input, procpool's
//! own stderr while log lines wait for it, then each
//! slot's stdin, stdout and stderr), like mio's token table. Between waits the shell
//! updates entries in place; an entry with nothing to wait on holds -1, which `poll`
//! skips, so no vector is rebuilt per turn.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

/// What a table entry stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token {
    Interrupts,
    Children,
    Input,
    /// procpool's stderr, writable (see [`crate::stderr_queue`]).
    Log,
    Stdin(usize),
    Stdout(usize),
    Stderr(usize),
}

const FIXED: usize = 4;
const PER_SLOT: usize = 3;

pub(crate) struct PollTable {
    entries: Vec<libc::pollfd>,
}

impl PollTable {
    pub(crate) fn new(procs: usize) -> PollTable {
        let empty = libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        };
        let mut table = PollTable {
            entries: vec![empty; FIXED + PER_SLOT * procs],
        };
        for token in [Token::Interrupts, Token::Children, Token::Input] {
            table.entries[Self::index(token)].events = libc::POLLIN;
        }
        table.entries[Self::index(Token::Log)].events = libc::POLLOUT;
        for slot in 0..procs {
            table.entries[Self::index(Token::Stdin(slot))].events = libc::POLLOUT;
            table.entries[Self::index(Token::Stdout(slot))].events = libc::POLLIN;
            table.entries[Self::index(Token::Stderr(slot))].events = libc::POLLIN;
        }
        table
    }

    fn index(token: Token) -> usize {
        match token {
            Token::Interrupts => 0,
            Token::Children => 1,
            Token::Input => 2,
            Token::Log => 3,
            Token::Stdin(slot) => FIXED + PER_SLOT * slot,
            Token::Stdout(slot) => FIXED + PER_SLOT * slot + 1,
            Token::Stderr(slot) => FIXED + PER_SLOT * slot + 2,
        }
    }

    /// What `token` waits on until the next update: `fd`, or nothing.
    pub(crate) fn set(&mut self, token: Token, fd: Option<BorrowedFd<'_>>) {
        let raw: RawFd = fd.map_or(-1, |fd| fd.as_raw_fd());
        self.entries[Self::index(token)].fd = raw;
    }

    /// A worker's stdin: polled while open, for writability only while `pending`
    /// bytes wait (a pipe whose reader closed it reports an error either way).
    pub(crate) fn set_stdin(&mut self, slot: usize, fd: Option<BorrowedFd<'_>>, pending: bool) {
        self.set(Token::Stdin(slot), fd);
        self.entries[Self::index(Token::Stdin(slot))].events = match pending {
            true => libc::POLLOUT,
            false => 0,
        };
    }

    /// Waits until an entry is ready or `timeout` passes (or a signal interrupts).
    ///
    /// The descriptors are borrowed from their owners by `set` right before each wait,
    /// so none can be closed and reused under the table while it waits.
    pub(crate) fn wait(&mut self, timeout: Option<Duration>) -> std::io::Result<()> {
        for entry in &mut self.entries {
            entry.revents = 0;
        }
        crate::sys::poll(&mut self.entries, timeout)
    }

    /// Whether the last wait found `token` ready (readable, writable, at its end or
    /// broken: an I/O on it will not block).
    pub(crate) fn ready(&self, token: Token) -> bool {
        self.entries[Self::index(token)].revents != 0
    }

    /// Whether the last wait found `token` broken: for a pipe's write end, that its
    /// reader closed it.
    pub(crate) fn broken(&self, token: Token) -> bool {
        self.entries[Self::index(token)].revents & libc::POLLERR != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn reports_only_the_ready_entries() {
        let mut table = PollTable::new(2);
        let (reader, mut writer) = UnixStream::pair().unwrap();
        let (idle, _idle_writer) = UnixStream::pair().unwrap();
        table.set(Token::Stdout(1), Some(reader.as_fd()));
        table.set(Token::Stderr(0), Some(idle.as_fd()));
        table.wait(Some(Duration::ZERO)).unwrap();
        assert!(!table.ready(Token::Stdout(1)));
        writer.write_all(b"x").unwrap();
        table.wait(Some(Duration::from_secs(5))).unwrap();
        assert!(table.ready(Token::Stdout(1)));
        assert!(!table.ready(Token::Stderr(0)) && !table.ready(Token::Interrupts));
        table.set(Token::Stdout(1), None);
        table.wait(Some(Duration::ZERO)).unwrap();
        assert!(!table.ready(Token::Stdout(1)), "an unset entry is skipped");
    }
}

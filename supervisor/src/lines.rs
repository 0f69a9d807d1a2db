//! Lines from a descriptor that is read only when poll says it is readable: a
//! worker's stdout and stderr, or the input a job streams its tasks from.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};

/// Splits what a descriptor delivers into lines. Each [`fill`](LineReader::fill)
/// reads until a read comes back short, so the descriptor must be one whose reads
/// return at once: a non-blocking pipe or terminal, or a regular file.
pub struct LineReader {
    fd: Option<File>,
    /// The longest line kept; longer ones are dropped. `None`: no limit.
    max_line: Option<usize>,
    /// Where each read lands before it is appended: allocated (and zeroed) once, not
    /// per read. It starts small and doubles while reads fill it, up to
    /// [`MAX_CHUNK`]: a quiet stream of a thousand workers' then costs a page, which
    /// keeps the supervisor small, and so each `fork` of it cheap.
    chunk: Vec<u8>,
    buffer: Vec<u8>,
    /// Bytes at the front of `buffer` already handed out as lines.
    consumed: usize,
    /// Bytes of `buffer` already searched for a newline.
    scanned: usize,
    /// Length of the unfinished line at the end of `buffer`.
    partial_len: usize,
    /// Dropping the rest of a line that grew past `max_line`, up to its newline.
    discarding: bool,
}

const FIRST_CHUNK: usize = 4 * 1024;
const MAX_CHUNK: usize = 64 * 1024;

/// What one [`LineReader::fill`] gave.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReadOutcome {
    /// The descriptor is open; complete lines may be waiting in the reader.
    Open,
    /// The writer closed its end; the last partial line, if any, is now a line.
    Eof,
    /// A line longer than the reader's `max_line`: dropped, up to its newline.
    LineTooLong,
    /// A read failed: the descriptor is closed, and a partial last line is dropped.
    Failed(io::Error),
}

impl LineReader {
    /// A reader of `file` that drops lines longer than `max_line` bytes, if given.
    pub fn new(file: File, max_line: Option<usize>) -> Self {
        LineReader {
            fd: Some(file),
            max_line,
            chunk: vec![0; FIRST_CHUNK],
            buffer: Vec::new(),
            consumed: 0,
            scanned: 0,
            partial_len: 0,
            discarding: false,
        }
    }

    /// The descriptor to poll, until its end was read or a read failed.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd())
    }

    /// Whether more may come.
    pub fn is_open(&self) -> bool {
        self.fd.is_some()
    }

    /// Reads what the descriptor holds now, up to a bound so that one chatty writer
    /// cannot keep the event loop from the others (poll is level-triggered: the rest
    /// waits).
    pub fn fill(&mut self) -> ReadOutcome {
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
                    if self.max_line.is_some_and(|max| self.partial_len > max) {
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
                    if self.chunk.len() < MAX_CHUNK {
                        self.chunk.resize(self.chunk.len() * 2, 0);
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Open,
                Err(err) => {
                    self.fd = None;
                    return ReadOutcome::Failed(err);
                }
            }
        }
        ReadOutcome::Open
    }

    /// The next complete line, without its newline.
    pub fn next_line(&mut self) -> Option<Vec<u8>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A reader over a non-blocking pipe, and the pipe's write end.
    fn pipe(max_line: Option<usize>) -> (LineReader, File) {
        let (read, write) = nix::unistd::pipe().unwrap();
        let read = File::from(read);
        nix::fcntl::fcntl(
            &read,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        (LineReader::new(read, max_line), File::from(write))
    }

    fn lines(reader: &mut LineReader) -> Vec<String> {
        std::iter::from_fn(|| reader.next_line())
            .map(|line| String::from_utf8(line).unwrap())
            .collect()
    }

    #[test]
    fn lines_come_whole_however_the_writes_cut_them() {
        let (mut reader, mut writer) = pipe(None);
        for piece in ["a\nb", "c\r", "\n\nd"] {
            writer.write_all(piece.as_bytes()).unwrap();
            assert!(matches!(reader.fill(), ReadOutcome::Open));
        }
        assert_eq!(lines(&mut reader), ["a", "bc\r", ""]);
        drop(writer);
        assert!(matches!(reader.fill(), ReadOutcome::Eof));
        assert_eq!(lines(&mut reader), ["d"], "the last line needs no newline");
        assert!(!reader.is_open() && reader.fd().is_none());
    }

    #[test]
    fn a_line_past_the_limit_is_dropped_up_to_its_newline() {
        let (mut reader, mut writer) = pipe(Some(8));
        writer.write_all(b"short\n0123456789").unwrap();
        assert!(matches!(reader.fill(), ReadOutcome::LineTooLong));
        writer.write_all(b"more of it\nnext\n").unwrap();
        assert!(matches!(reader.fill(), ReadOutcome::Open));
        assert_eq!(lines(&mut reader), ["short", "next"]);

        let (mut unlimited, mut writer) = pipe(None);
        let long = "7".repeat(200_000);
        let written = std::thread::spawn(move || writer.write_all(format!("{long}\n").as_bytes()));
        let mut got = Vec::new();
        while got.is_empty() {
            assert!(matches!(unlimited.fill(), ReadOutcome::Open));
            got = lines(&mut unlimited);
        }
        written.join().unwrap().unwrap();
        assert_eq!(got[0].len(), 200_000);
    }
}

//! `procpool run tasks`: one task per input line, one result line per task, for a
//! `--child` worker in any language. A task source with no workload behind it: there
//! is no built-in worker, and results go back to the stream's own output.
//!
//! Input: each line is one task's input, a JSON value; a line of text that is not JSON is
//! taken as a JSON string; blank lines are skipped. Output: one JSON line per task,
//! `{"id":..,"input":..,"output":..}` or `{"id":..,"input":..,"error":".."}`, in
//! completion order, or in input order with `--ordered`.
//!
//! A line longer than `--max-line` (default 256 MiB) stops the run: no more input is
//! read, the tasks already put finish, and the run exits 1 naming the line. Such a
//! line means the input is not one value per line (a binary file, `/dev/zero`, a
//! missing newline), not that one task is bad: skipping it would silently lose data,
//! and an endless stream without newlines would be read for ever.
//!
//! Memory stays bounded whatever the input size: the driver asks for the next input
//! only while fewer than its window of tasks are held (in flight, or finished and
//! waiting for an earlier one with `--ordered`), and the source keeps the inputs of
//! those tasks only, to echo them in the output.
//!
//! The input is read only when it is readable, from the pool's own wait, through the
//! supervisor's [`LineReader`]: with a producer that writes a line now and then (`tail -f`, a
//! terminal), tasks run and results are written as lines arrive, and Ctrl-C works
//! while the producer is silent.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use procpool_child::TaskId;
use procpool_supervisor::{LineReader, PoolReport, ReadOutcome, TaskOutcome};
use serde::Serialize;
use serde_json::{json, Value};

use super::resume::{KeptLines, Previous};
use super::{Answer, Summary, TaskSource};
use crate::out_file::OutFile;

/// One line for `procpool run --help`.
pub const ABOUT: &str = "One task per input line (JSON, or taken as a string) for a --child \
    worker, which is required; one result line per task: {\"id\",\"input\",\"output\"} or \
    {\"id\",\"input\",\"error\"}";

/// There is no built-in worker: what to pass instead.
pub const USAGE: &str = "`procpool run tasks` needs --child CMD, the worker that runs each \
    line (e.g. --child 'python3 examples/python/count_words.py')";

/// Reads the options of `procpool run tasks` and opens the stream.
pub fn start(matches: &clap::ArgMatches, _procs: usize) -> Result<Box<dyn TaskSource>> {
    let args = <Args as clap::FromArgMatches>::from_arg_matches(matches)?;
    Ok(Box::new(Tasks::new(&args, crate::cli::max_line(matches))?))
}

/// Options of `procpool run tasks`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Read task inputs from FILE, one per line ('-': stdin).
    #[arg(long, default_value = "-", value_name = "FILE|-")]
    pub input: String,
    /// Write one result line per task to FILE ('-': stdout; the summary then goes to stderr).
    #[arg(long, default_value = "-", value_name = "FILE|-")]
    pub output: String,
    /// Write results in input order (default: as they complete).
    #[arg(long)]
    pub ordered: bool,
    /// Run only the inputs that have no line in --output FILE yet: the same command
    /// again after an interrupted, killed or crashed run.
    #[arg(long)]
    pub resume: bool,
}

/// One output line; `id` is the input's index among the non-blank lines.
#[derive(Serialize)]
struct ResultLine<'a> {
    id: u64,
    input: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// The line stream of `procpool run tasks`.
pub struct Tasks {
    input: LineReader,
    input_name: String,
    /// A read of the input failed: reported once, after the lines before it.
    read_error: Option<io::Error>,
    /// A line was longer than `max_line`: reported like `read_error`.
    line_too_long: bool,
    /// Lines taken from the input so far, blank ones included (to name a bad one).
    lines_read: u64,
    max_line: usize,
    /// The index the next non-blank input line has.
    next_index: u64,
    /// `--resume`: indices that already have a result line; they are skipped.
    done: HashSet<u64>,
    /// The tasks to run, when the input is a regular file (counted before the run).
    total: Option<u64>,
    /// Inputs skipped for that.
    skipped: u64,
    /// Tasks put and not yet answered: the input's index and the input, shared with
    /// the pool.
    inputs: HashMap<TaskId, (u64, Arc<Value>)>,
    ordered: bool,
    /// `--ordered`: every task put and not yet written, in input order.
    order: VecDeque<TaskId>,
    /// `--ordered`: encoded lines of answered tasks waiting for an earlier one.
    finished: HashMap<TaskId, (u64, Vec<u8>)>,
    /// `--ordered --resume`: the earlier lines, merged in as the new ones pass them,
    /// and the file that replaces the output at the end.
    merge: Option<(KeptLines, OutFile)>,
    out: BufWriter<Box<dyn Write>>,
    output_name: String,
    to_stdout: bool,
}

impl Tasks {
    /// The stream `args` name, whose lines may be up to `max_line` bytes long.
    pub fn new(args: &Args, max_line: usize) -> Result<Tasks> {
        let input = if args.input == "-" {
            open_stdin().context("reading stdin")?
        } else {
            let file = File::open(&args.input)
                .with_context(|| format!("--input {}: cannot open it", args.input))?;
            if file.metadata().is_ok_and(|meta| meta.is_dir()) {
                bail!(
                    "--input {} is a directory; give a file of JSON lines",
                    args.input
                );
            }
            file
        };
        let inputs_in_file = count_inputs(&input);
        let input = LineReader::new(input, Some(max_line));
        let to_stdout = args.output == "-";
        if args.resume && to_stdout {
            bail!("--resume needs --output FILE, the results of the earlier run");
        }
        let output = Path::new(&args.output);
        let previous = args.resume.then(|| Previous::read(output)).transpose()?;
        let mut merge = None;
        let out: Box<dyn Write> = match &previous {
            None if to_stdout => Box::new(io::stdout()),
            None => Box::new(
                File::create(output)
                    .with_context(|| format!("--output {}: cannot create it", args.output))?,
            ),
            Some(previous) if args.ordered => {
                let (kept, replacement) = previous.merge_into(output)?;
                let file = OpenOptions::new()
                    .write(true)
                    .open(replacement.temp_path())?;
                merge = Some((kept, replacement));
                Box::new(file)
            }
            Some(previous) => Box::new(previous.append_to(output)?),
        };
        let done: HashSet<u64> = previous.map(|previous| previous.done).unwrap_or_default();
        Ok(Tasks {
            total: inputs_in_file.map(|count| count.saturating_sub(done.len() as u64)),
            input,
            input_name: if args.input == "-" {
                "stdin".into()
            } else {
                args.input.clone()
            },
            read_error: None,
            line_too_long: false,
            lines_read: 0,
            max_line,
            next_index: 0,
            done,
            skipped: 0,
            inputs: HashMap::new(),
            ordered: args.ordered,
            order: VecDeque::new(),
            finished: HashMap::new(),
            merge,
            out: BufWriter::with_capacity(1 << 16, out),
            output_name: if to_stdout {
                "stdout".into()
            } else {
                args.output.clone()
            },
            to_stdout,
        })
    }

    /// The next non-blank input line read so far that has no result yet, with its
    /// index, as a JSON value (see [`input_value`]).
    fn next_input(&mut self) -> Option<(u64, Result<Value, String>)> {
        loop {
            let line = self.input.next_line()?;
            self.lines_read += 1;
            let text = line.strip_suffix(b"\r").unwrap_or(&line);
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let index = self.next_index;
            self.next_index += 1;
            if self.done.contains(&index) {
                self.skipped += 1;
                continue;
            }
            return Some((index, input_value(text)));
        }
    }

    /// Writes (or, with `--ordered`, queues) the line of a finished task.
    fn finish(&mut self, id: TaskId, output: Option<&Value>, error: Option<&str>) -> Result<()> {
        let (index, input) = self.inputs.remove(&id).unwrap_or_default();
        let line = ResultLine {
            id: index,
            input: &input,
            output,
            error,
        };
        if !self.ordered {
            serde_json::to_writer(&mut self.out, &line)?;
            self.out.write_all(b"\n").context("writing a result")?;
            return Ok(());
        }
        let mut encoded = serde_json::to_vec(&line)?;
        encoded.push(b'\n');
        self.finished.insert(id, (index, encoded));
        self.write_ready_in_order()
    }

    /// Writes the finished lines at the head of the input order.
    fn write_ready_in_order(&mut self) -> Result<()> {
        while let Some((index, line)) = self.order.front().and_then(|id| self.finished.remove(id)) {
            self.order.pop_front();
            self.write_in_order(index, &line)?;
        }
        Ok(())
    }

    /// Writes the line of input `index`, after the earlier run's lines before it.
    fn write_in_order(&mut self, index: u64, line: &[u8]) -> Result<()> {
        if let Some((kept, _)) = &mut self.merge {
            kept.write_before(index, &mut self.out)?;
        }
        self.out.write_all(line).context("writing a result")
    }

    /// `--ordered --resume`: the earlier lines after the last new one, then the merged
    /// file replaces the output.
    fn finish_merge(&mut self) -> Result<()> {
        let Some((mut kept, replacement)) = self.merge.take() else {
            return Ok(());
        };
        kept.write_rest(&mut self.out)?;
        self.out.flush()?;
        replacement.commit()
    }
}

/// A non-blank input line as a task's input: its JSON value, or the line as a string
/// when it is text that is not JSON. A line that would change on the way is refused
/// with what is wrong with it: one that is not UTF-8; one that starts like JSON (`{`,
/// `[`, `"`) and does not parse (cut short, nested past the parser's 128 levels),
/// which is a broken value, not text; and one holding a number with no exact 64-bit
/// form, which would arrive rounded.
fn input_value(line: &[u8]) -> Result<Value, String> {
    let parse_error = match serde_json::from_slice(line) {
        Ok(value) => {
            return match std::str::from_utf8(line).ok().and_then(inexact_number) {
                Some(number) => Err(inexact_number_problem(number)),
                None => Ok(value),
            }
        }
        Err(err) => err,
    };
    let text = std::str::from_utf8(line)
        .map_err(|err| format!("is not valid UTF-8 (at byte {})", err.valid_up_to()))?;
    // serde_json refuses a number past a double's range (`1e400`); as a line of its
    // own it is a number that would change, not text.
    let trimmed = text.trim();
    if trimmed.starts_with(|c: char| c == '-' || c.is_ascii_digit())
        && trimmed.bytes().all(is_number_byte)
    {
        return Err(inexact_number_problem(trimmed));
    }
    if trimmed.starts_with(['{', '[', '"']) {
        return Err(format!("starts like JSON but is not ({parse_error})"));
    }
    Ok(Value::String(text.to_owned()))
}

fn inexact_number_problem(number: &str) -> String {
    format!(
        "holds the number {number}, which has no exact 64-bit form (integers within \
         ±2^63 or up to 2^64, finite doubles) and would reach the worker changed; quote it \
         to pass it as text"
    )
}

/// The first number in JSON `text` (outside strings) that a 64-bit integer or a
/// finite double cannot hold as written: an integer past 64 bits (which would become
/// a rounded double), or a double past 1.8e308. More digits than a double keeps are
/// not flagged: that is how JSON doubles are commonly written.
fn inexact_number(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut in_string = false;
    let mut at = 0;
    while at < bytes.len() {
        let byte = bytes[at];
        if in_string {
            match byte {
                b'\\' => at += 1,
                b'"' => in_string = false,
                _ => {}
            }
            at += 1;
            continue;
        }
        if byte == b'"' {
            in_string = true;
            at += 1;
            continue;
        }
        if byte == b'-' || byte.is_ascii_digit() {
            let len = bytes[at..]
                .iter()
                .take_while(|&&b| is_number_byte(b))
                .count();
            let number = &text[at..at + len];
            let exact = if number.contains(['.', 'e', 'E']) {
                number.parse::<f64>().is_ok_and(f64::is_finite)
            } else {
                number.parse::<i64>().is_ok() || number.parse::<u64>().is_ok()
            };
            if !exact {
                return Some(number);
            }
            at += len;
            continue;
        }
        at += 1;
    }
    None
}

/// Inputs (non-blank lines) in `file` when it is a regular file of at most
/// [`COUNT_LIMIT`] bytes, read once before the run for the progress total; `None`
/// for a pipe, a terminal or a bigger file. Read by offset: the run's reads still
/// start at the beginning.
fn count_inputs(file: &File) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() > COUNT_LIMIT {
        return None;
    }
    let mut buffer = vec![0; 1 << 16];
    let (mut offset, mut count, mut in_input) = (0, 0, false);
    loop {
        let read = file.read_at(&mut buffer, offset).ok()?;
        if read == 0 {
            return Some(count + u64::from(in_input));
        }
        offset += read as u64;
        for &byte in &buffer[..read] {
            if byte == b'\n' {
                count += u64::from(in_input);
                in_input = false;
            } else if !byte.is_ascii_whitespace() {
                in_input = true;
            }
        }
    }
}

/// Input files past this size are not counted first (the count would cost a second
/// read of a file that may not fit the page cache).
const COUNT_LIMIT: u64 = 1 << 30;

/// Whether `byte` can be part of a JSON number.
fn is_number_byte(byte: u8) -> bool {
    byte.is_ascii_digit() || matches!(byte, b'-' | b'+' | b'.' | b'e' | b'E')
}

/// stdin, to be read only when poll says it is readable. A pipe or a terminal is
/// opened again as a file description of this process's own and made non-blocking
/// there, so a read after the poll can never wait (the shell's description is left as
/// it is); a regular file, whose reads never wait, is read through a duplicate that
/// keeps its offset, as is anything that cannot be opened again (a socket).
pub(crate) fn open_stdin() -> io::Result<File> {
    let stdin = File::from(io::stdin().as_fd().try_clone_to_owned()?);
    if stdin.metadata()?.is_file() {
        return Ok(stdin);
    }
    // Non-blocking from the open: opening a pipe whose writer is gone must not wait.
    Ok(OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open("/proc/self/fd/0")
        .unwrap_or(stdin))
}

impl TaskSource for Tasks {
    fn total_tasks(&self) -> Option<u64> {
        self.total
    }

    fn next_task(&mut self, id: TaskId) -> Option<Result<Arc<Value>>> {
        if let Some((index, value)) = self.next_input() {
            // Reported as a planning failure, like a line past the bound: the tasks
            // before it finish, and --resume goes on once the line is fixed.
            let value = match value {
                Ok(value) => value,
                Err(problem) => {
                    return Some(Err(anyhow::anyhow!(
                        "reading {}: line {} {problem}; an input line is one JSON value, or \
                         text that does not start with {{, [ or \" (taken as a string)",
                        self.input_name,
                        self.lines_read,
                    )))
                }
            };
            // Shared with the pool, which keeps it to send again after a crash.
            let value = Arc::new(value);
            self.inputs.insert(id, (index, Arc::clone(&value)));
            if self.ordered {
                self.order.push_back(id);
            }
            return Some(Ok(value));
        }
        // Reported as a planning failure, so the tasks already running still finish.
        let name = &self.input_name;
        if std::mem::take(&mut self.line_too_long) {
            return Some(Err(anyhow::anyhow!(
                "reading {name}: line {} is longer than the {} line bound; is the input one \
                 JSON value per line? (raise the bound with --max-line)",
                self.lines_read + 1,
                procpool_supervisor::size_text(self.max_line),
            )));
        }
        self.read_error
            .take()
            .map(|err| Err(anyhow::Error::new(err).context(format!("reading {name}"))))
    }

    fn input(&self) -> Option<BorrowedFd<'_>> {
        self.input.fd()
    }

    fn read_input(&mut self) -> Result<()> {
        // A signal mid-read, or data gone (a terminal drops typed-ahead input on
        // Ctrl-C), is `Open`: reading goes on.
        match self.input.fill() {
            ReadOutcome::Failed(err) => self.read_error = Some(err),
            // The lines before it are still in the reader: they run first.
            ReadOutcome::LineTooLong => self.line_too_long = true,
            _ => {}
        }
        Ok(())
    }

    fn held(&self) -> usize {
        if self.ordered {
            self.order.len()
        } else {
            self.inputs.len()
        }
    }

    fn result(&mut self, id: TaskId, output: Value) -> Result<Answer> {
        self.finish(id, Some(&output), None)?;
        Ok(Answer::Accepted)
    }

    fn failure(&mut self, id: TaskId, attempts: u32, outcome: &TaskOutcome) -> Result<()> {
        let message = outcome
            .failure_message(attempts)
            .expect("results go to `result`");
        self.finish(id, None, Some(&message))
    }

    fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .with_context(|| format!("writing results to {}", self.output_name))
    }

    fn results_on_stdout(&self) -> bool {
        self.to_stdout
    }

    fn task_label(&self, id: TaskId) -> Value {
        self.inputs
            .get(&id)
            .map_or(Value::Null, |(index, _)| json!(index))
    }

    fn summary(mut self: Box<Self>, report: &PoolReport) -> Result<Summary> {
        self.flush()?;
        self.finish_merge()?;
        let (ok, errors, failed) = (report.tasks_ok, report.tasks_error, report.tasks_failed);
        let total = ok + errors + failed;
        let resumed = match self.skipped {
            0 => String::new(),
            skipped => format!("; {skipped} inputs had results already"),
        };
        Ok(Summary::new(
            format!(
                "{total} results written to {} ({ok} ok, {errors} error, {failed} failed){resumed}",
                self.output_name
            ),
            json!({
                "skipped": self.skipped,
                "tasks": total,
                "ok": ok,
                "error": errors,
                "failed": failed,
                "output": if self.to_stdout { "-" } else { self.output_name.as_str() },
            }),
        ))
    }
}

impl Drop for Tasks {
    /// An interrupted run still writes what finished: with `--ordered`, the results
    /// held back behind a task that never ran, in order, skipping the gap.
    fn drop(&mut self) {
        let mut ids: Vec<TaskId> = self.finished.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some((index, line)) = self.finished.remove(&id) {
                let _ = self.write_in_order(index, &line);
            }
        }
        let _ = self.out.flush();
        // What was there before stays, with what this run added.
        let _ = self.finish_merge();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_of_a_regular_file_are_counted_and_a_pipe_is_not() {
        let mut file = tempfile::tempfile().expect("a temp file");
        std::io::Write::write_all(&mut file, b"1\n\n  \r\n{\"a\": 2}\r\nlast without newline")
            .expect("writing");
        assert_eq!(count_inputs(&file), Some(3));
        let (read_end, _write_end) = nix::unistd::pipe().expect("a pipe");
        assert_eq!(count_inputs(&File::from(read_end)), None);
    }
}

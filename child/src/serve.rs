//! `serve`: the loop a Rust worker runs.

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};

use serde_json::Value;

use crate::protocol::{decode_line, encode_line, FromWorker, Task, ToWorker};

/// Runs the worker loop on this process's stdin and stdout until `stop` or EOF.
///
/// Sends `ready`, then for every task sends `started` and answers with the handler's
/// outcome: `Ok` becomes a `result` message, `Err` an `error` message (the task failed,
/// the worker goes on). Tasks sent ahead (the supervisor's prefetch) wait in the pipe
/// and are answered in order. A panic in the handler is not caught: the worker dies,
/// and the supervisor sees a crash and retries the task elsewhere, which is the point
/// of isolation.
///
/// `started` is in the pipe before the handler runs, so a crash is charged to the task
/// that caused it and to no other. It costs no extra write: an answer is held back
/// until the next message goes out, and goes out with the next task's `started` when
/// that task is already waiting, or alone before the loop waits for input.
///
/// ```no_run
/// procpool_child::serve(|task| {
///     let n = task.input.as_u64().ok_or("input must be a number")?;
///     Ok(serde_json::json!(n * 2))
/// })
/// .unwrap();
/// ```
pub fn serve<H>(handler: H) -> io::Result<()>
where
    H: FnMut(&Task) -> Result<Value, String>,
{
    let stdin = io::stdin();
    let stdout = io::stdout();
    serve_on(stdin.lock(), stdout.lock(), handler)
}

/// [`serve`] over any reader and writer, so the loop can be tested in memory.
pub fn serve_on<R, W, H>(input: R, output: W, mut handler: H) -> io::Result<()>
where
    R: Read,
    W: Write,
    H: FnMut(&Task) -> Result<Value, String>,
{
    let mut input = BufReader::new(input);
    let mut output = BufWriter::new(output);
    write(&mut output, &FromWorker::Ready)?;
    let mut line = Vec::new();
    loop {
        // Everything written goes out before a read that may block: the supervisor is
        // waiting for it.
        if !input.buffer().contains(&b'\n') {
            output.flush()?;
        }
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return output.flush();
        }
        match decode_line::<ToWorker>(&line) {
            Ok(ToWorker::Task(task)) => {
                // Flushed before the handler runs: if it takes the process down, the
                // supervisor knows which task did.
                write(&mut output, &FromWorker::Started { id: task.id })?;
                output.flush()?;
                let answer = match handler(&task) {
                    Ok(output) => FromWorker::Result {
                        id: task.id,
                        output,
                    },
                    Err(message) => FromWorker::Error {
                        id: task.id,
                        message,
                    },
                };
                write(&mut output, &answer)?;
            }
            Ok(ToWorker::Stop) => return output.flush(),
            Err(err) => eprintln!(
                "procpool worker: ignoring a line from the supervisor: {err}: {}",
                String::from_utf8_lossy(&line).trim_end()
            ),
        }
    }
}

fn write(output: &mut impl Write, message: &FromWorker) -> io::Result<()> {
    output.write_all(&encode_line(message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;
    use std::rc::Rc;

    fn task_line(id: u64, input: Value) -> String {
        format!("{{\"type\":\"task\",\"id\":{id},\"attempt\":1,\"input\":{input}}}\n")
    }

    fn double(task: &Task) -> Result<Value, String> {
        let n = task.input.as_i64().ok_or("input must be an integer")?;
        Ok(json!(n * 2))
    }

    fn decode_all(bytes: &[u8]) -> Vec<FromWorker> {
        bytes
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| decode_line(line).unwrap())
            .collect()
    }

    fn run(input: &str) -> Vec<FromWorker> {
        let mut output = Vec::new();
        serve_on(input.as_bytes(), &mut output, double).unwrap();
        decode_all(&output)
    }

    /// The worker's end of the stdout pipe: each write the loop makes, as it made it.
    #[derive(Clone, Default)]
    struct Pipe(Rc<RefCell<Vec<Vec<FromWorker>>>>);

    impl Pipe {
        fn messages(&self) -> Vec<FromWorker> {
            self.0.borrow().iter().flatten().cloned().collect()
        }
    }

    impl Write for Pipe {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.borrow_mut().push(decode_all(bytes));
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The worker's end of the stdin pipe, handing out one chunk per read and calling
    /// `on_read` first (where a real pipe could block).
    struct Chunks<F: FnMut()> {
        chunks: VecDeque<String>,
        on_read: F,
    }

    impl<F: FnMut()> Read for Chunks<F> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            (self.on_read)();
            let Some(chunk) = self.chunks.pop_front() else {
                return Ok(0);
            };
            buf[..chunk.len()].copy_from_slice(chunk.as_bytes());
            Ok(chunk.len())
        }
    }

    #[test]
    fn starts_and_answers_every_task_in_flight_then_stops() {
        let messages = run(&[
            task_line(1, json!(20)),
            task_line(2, json!("x")),
            task_line(3, json!(-4)).replace("\"attempt\":1", "\"attempt\":2"),
            "{\"type\":\"stop\"}\n".into(),
            task_line(4, json!(1)),
        ]
        .concat());
        assert_eq!(
            messages,
            vec![
                FromWorker::Ready,
                FromWorker::Started { id: 1 },
                FromWorker::Result {
                    id: 1,
                    output: json!(40)
                },
                FromWorker::Started { id: 2 },
                FromWorker::Error {
                    id: 2,
                    message: "input must be an integer".into()
                },
                FromWorker::Started { id: 3 },
                FromWorker::Result {
                    id: 3,
                    output: json!(-8)
                },
            ]
        );
    }

    #[test]
    fn eof_means_stop() {
        let messages = run(task_line(9, json!(1)).trim_end());
        assert_eq!(
            messages,
            vec![
                FromWorker::Ready,
                FromWorker::Started { id: 9 },
                FromWorker::Result {
                    id: 9,
                    output: json!(2)
                },
            ]
        );
    }

    #[test]
    fn started_is_in_the_pipe_before_the_handler_runs() {
        let pipe = Pipe::default();
        let seen = pipe.clone();
        let input = [task_line(5, json!(1)), task_line(6, json!(2))].concat();
        serve_on(input.as_bytes(), pipe.clone(), |task| {
            // What a crash here would leave for the supervisor to read.
            assert_eq!(
                seen.messages().last(),
                Some(&FromWorker::Started { id: task.id })
            );
            double(task)
        })
        .unwrap();
        assert_eq!(pipe.messages().len(), 5);
    }

    #[test]
    fn an_answer_goes_out_with_the_next_started_when_that_task_waits() {
        // Three tasks arrive in one read: one write per task, plus `ready` and the
        // last answer, the same count as without `started`.
        let pipe = Pipe::default();
        let input = [
            task_line(1, json!(1)),
            task_line(2, json!(2)),
            task_line(3, json!(3)),
        ]
        .concat();
        serve_on(input.as_bytes(), pipe.clone(), double).unwrap();
        let result = |id, output| FromWorker::Result {
            id,
            output: json!(output),
        };
        let started = |id| FromWorker::Started { id };
        assert_eq!(
            *pipe.0.borrow(),
            vec![
                vec![FromWorker::Ready],
                vec![started(1)],
                vec![result(1, 2), started(2)],
                vec![result(2, 4), started(3)],
                vec![result(3, 6)],
            ]
        );
    }

    #[test]
    fn an_answer_never_waits_for_the_next_task_to_arrive() {
        // Tasks arrive one per read, as from a supervisor that waits for each answer:
        // whenever the loop reads, every answer it has is already in the pipe.
        let pipe = Pipe::default();
        let seen = pipe.clone();
        let handled = Rc::new(Cell::new(0));
        let counted = Rc::clone(&handled);
        let reads = Rc::new(Cell::new(0));
        let input = Chunks {
            chunks: (1..=3).map(|id| task_line(id, json!(id))).collect(),
            on_read: || {
                reads.set(reads.get() + 1);
                let answered = seen
                    .messages()
                    .iter()
                    .filter(|m| matches!(m, FromWorker::Result { .. }))
                    .count();
                assert_eq!(answered, handled.get(), "an answer was still buffered");
            },
        };
        serve_on(input, pipe.clone(), |task| {
            counted.set(counted.get() + 1);
            double(task)
        })
        .unwrap();
        assert_eq!(reads.get(), 4, "three tasks, then EOF");
        assert_eq!(pipe.messages().len(), 7);
    }
}

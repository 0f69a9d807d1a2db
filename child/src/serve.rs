//! `serve`: the loop a Rust worker runs.

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};

use serde_json::Value;

use crate::protocol::{decode_line, encode_line, FromWorker, Task, ToWorker};

/// Runs the worker loop on this process's stdin and stdout until `stop` or EOF.
///
/// Sends `ready`, then answers every task with the handler's outcome: `Ok` becomes a
/// `result` message, `Err` an `error` message (the task failed, the worker goes on).
/// Tasks sent ahead (the supervisor's prefetch) wait in the pipe and are answered in
/// order. A panic in the handler is not caught: the worker dies, and the supervisor
/// sees a crash and retries the task elsewhere, which is the point of isolation.
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
    send(&mut output, &FromWorker::Ready)?;
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        match decode_line::<ToWorker>(&line) {
            Ok(ToWorker::Task(task)) => {
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
                send(&mut output, &answer)?;
            }
            Ok(ToWorker::Stop) => return Ok(()),
            Err(err) => eprintln!(
                "procpool worker: ignoring a line from the supervisor: {err}: {}",
                String::from_utf8_lossy(&line).trim_end()
            ),
        }
    }
}

fn send(output: &mut impl Write, message: &FromWorker) -> io::Result<()> {
    output.write_all(&encode_line(message))?;
    // Flush per message: the supervisor is waiting for this answer, not for a full buffer.
    output.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(input: &str) -> Vec<FromWorker> {
        let mut output = Vec::new();
        serve_on(input.as_bytes(), &mut output, |task| {
            let n = task.input.as_i64().ok_or("input must be an integer")?;
            Ok(json!(n * 2))
        })
        .unwrap();
        output
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| decode_line(line).unwrap())
            .collect()
    }

    #[test]
    fn answers_every_task_in_flight_then_stops() {
        let answers = run(concat!(
            "{\"type\":\"task\",\"id\":1,\"attempt\":1,\"input\":20}\n",
            "{\"type\":\"task\",\"id\":2,\"attempt\":1,\"input\":\"x\"}\n",
            "{\"type\":\"task\",\"id\":3,\"attempt\":2,\"input\":-4}\n",
            "{\"type\":\"stop\"}\n",
            "{\"type\":\"task\",\"id\":4,\"attempt\":1,\"input\":1}\n",
        ));
        assert_eq!(
            answers,
            vec![
                FromWorker::Ready,
                FromWorker::Result {
                    id: 1,
                    output: json!(40)
                },
                FromWorker::Error {
                    id: 2,
                    message: "input must be an integer".into()
                },
                FromWorker::Result {
                    id: 3,
                    output: json!(-8)
                },
            ]
        );
    }

    #[test]
    fn eof_means_stop() {
        let answers = run("{\"type\":\"task\",\"id\":9,\"attempt\":1,\"input\":1}");
        assert_eq!(answers.len(), 2);
        assert_eq!(
            answers[1],
            FromWorker::Result {
                id: 9,
                output: json!(2)
            }
        );
    }
}

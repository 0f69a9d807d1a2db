//! Protocol v1 messages and their line framing.
//!
//! One JSON object per line, tagged by `"type"`. Unknown fields are ignored on
//! both sides so either can grow without breaking the other.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The protocol version this crate speaks; workers see it as `PROCPOOL_PROTOCOL`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Identifies a task for the whole run; retries keep the same id.
pub type TaskId = u64;

/// A message from the supervisor to a worker (the worker's stdin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", try_from = "SupervisorLine")]
pub enum ToWorker {
    /// Run this task and answer it exactly once with a result or an error.
    Task(Task),
    /// The sentinel: finish what you hold and exit 0. EOF on stdin means the same.
    Stop,
}

/// One task as the worker receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// The task's id, to be echoed in the answer.
    pub id: TaskId,
    /// 1 on the first try; a retry after a worker crash gets the next number.
    pub attempt: u32,
    /// The workload-defined input.
    pub input: Value,
    /// Milliseconds the worker has before the supervisor kills it, if a deadline is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

/// A message from a worker to the supervisor (the worker's stdout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", try_from = "WorkerLine")]
pub enum FromWorker {
    /// Sent once, when the worker can take tasks.
    Ready,
    /// Optional: the worker begins running this task now. A worker that sends it is
    /// charged for a death only by the tasks it had started and not answered.
    Started {
        /// The id of the task begun.
        id: TaskId,
    },
    /// The task succeeded.
    Result {
        /// The id of the task answered.
        id: TaskId,
        /// The workload-defined output.
        #[serde(default)]
        output: Value,
    },
    /// The task failed; the worker itself is fine and takes more tasks.
    Error {
        /// The id of the task answered.
        id: TaskId,
        /// What went wrong, for the run report.
        message: String,
    },
}

// Lines are read into one flat struct per direction before they become a message:
// serde then reads a line once, straight into its fields. An internally tagged enum
// first buffers the whole object (a task's input included) to find `type`, which
// doubled the decoding cost per line.

#[derive(Deserialize)]
struct SupervisorLine {
    #[serde(rename = "type")]
    kind: SupervisorLineKind,
    id: Option<TaskId>,
    attempt: Option<u32>,
    /// `Some(Value::Null)` for `"input": null`, `None` only when the key is missing.
    #[serde(default, deserialize_with = "present")]
    input: Option<Value>,
    deadline_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum SupervisorLineKind {
    Task,
    Stop,
}

fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

impl TryFrom<SupervisorLine> for ToWorker {
    type Error = &'static str;

    fn try_from(line: SupervisorLine) -> Result<Self, &'static str> {
        Ok(match line.kind {
            SupervisorLineKind::Stop => ToWorker::Stop,
            SupervisorLineKind::Task => ToWorker::Task(Task {
                id: line.id.ok_or("missing field `id`")?,
                attempt: line.attempt.ok_or("missing field `attempt`")?,
                input: line.input.ok_or("missing field `input`")?,
                deadline_ms: line.deadline_ms,
            }),
        })
    }
}

#[derive(Deserialize)]
struct WorkerLine {
    #[serde(rename = "type")]
    kind: WorkerLineKind,
    id: Option<TaskId>,
    #[serde(default)]
    output: Value,
    message: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum WorkerLineKind {
    Ready,
    Started,
    Result,
    Error,
}

impl TryFrom<WorkerLine> for FromWorker {
    type Error = &'static str;

    fn try_from(line: WorkerLine) -> Result<Self, &'static str> {
        let id = || line.id.ok_or("missing field `id`");
        Ok(match line.kind {
            WorkerLineKind::Ready => FromWorker::Ready,
            WorkerLineKind::Started => FromWorker::Started { id: id()? },
            WorkerLineKind::Result => FromWorker::Result {
                id: id()?,
                output: line.output,
            },
            WorkerLineKind::Error => FromWorker::Error {
                id: id()?,
                message: line.message.ok_or("missing field `message`")?,
            },
        })
    }
}

/// A line that could not be read as a protocol message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("not a protocol v1 message ({reason})")]
pub struct ParseError {
    reason: String,
    /// Where in the line the decoder stopped, 1-based; 0 when it cannot say.
    column: usize,
}

impl ParseError {
    /// What the decoder said.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The 1-based column of the line where the decoder stopped, if it knows.
    pub fn column(&self) -> Option<usize> {
        (self.column > 0).then_some(self.column)
    }
}

/// Encodes a message as one line, `\n` included.
pub fn encode_line<M: Serialize>(message: &M) -> Vec<u8> {
    // Serialising these enums cannot fail: every key is a string and every value is JSON.
    let mut line = serde_json::to_vec(message).expect("protocol messages always serialise");
    line.push(b'\n');
    line
}

/// Encodes a `task` message without taking ownership of (or cloning) its input.
pub fn encode_task(id: TaskId, attempt: u32, input: &Value, deadline_ms: Option<u64>) -> Vec<u8> {
    #[derive(Serialize)]
    struct TaskLine<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        id: TaskId,
        attempt: u32,
        input: &'a Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        deadline_ms: Option<u64>,
    }
    encode_line(&TaskLine {
        kind: "task",
        id,
        attempt,
        input,
        deadline_ms,
    })
}

/// Decodes one line (with or without its trailing newline).
pub fn decode_line<M: for<'de> Deserialize<'de>>(line: &[u8]) -> Result<M, ParseError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    serde_json::from_slice(line).map_err(|err| ParseError {
        reason: err.to_string(),
        column: err.column(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn task_wire_form_matches_the_spec() {
        let task = ToWorker::Task(Task {
            id: 7,
            attempt: 1,
            input: json!({"lo": 0}),
            deadline_ms: None,
        });
        assert_eq!(
            encode_line(&task),
            b"{\"type\":\"task\",\"id\":7,\"attempt\":1,\"input\":{\"lo\":0}}\n"
        );
        assert_eq!(encode_line(&ToWorker::Stop), b"{\"type\":\"stop\"}\n");
    }

    #[test]
    fn borrowed_task_encoding_matches_the_owned_one() {
        for deadline_ms in [None, Some(1500)] {
            let input = json!({"rows": [0, 64], "name": "c"});
            let owned = ToWorker::Task(Task {
                id: 42,
                attempt: 3,
                input: input.clone(),
                deadline_ms,
            });
            assert_eq!(encode_task(42, 3, &input, deadline_ms), encode_line(&owned));
        }
    }

    #[test]
    fn worker_messages_parse_and_ignore_unknown_fields() {
        let ready: FromWorker = decode_line(b"{\"type\":\"ready\",\"pid\":12}\n").unwrap();
        assert_eq!(ready, FromWorker::Ready);
        let result: FromWorker =
            decode_line(b"{\"type\":\"result\",\"id\":3,\"output\":[1,2],\"ms\":4}").unwrap();
        assert_eq!(
            result,
            FromWorker::Result {
                id: 3,
                output: json!([1, 2])
            }
        );
        let error: FromWorker =
            decode_line(b"{\"type\":\"error\",\"id\":3,\"message\":\"bad input\"}\r\n").unwrap();
        assert_eq!(
            error,
            FromWorker::Error {
                id: 3,
                message: "bad input".into()
            }
        );
    }

    #[test]
    fn a_null_input_is_an_input_and_a_missing_one_an_error() {
        let task: ToWorker =
            decode_line(b"{\"type\":\"task\",\"id\":1,\"attempt\":1,\"input\":null}").unwrap();
        assert!(matches!(
            task,
            ToWorker::Task(Task {
                input: Value::Null,
                ..
            })
        ));
        assert!(decode_line::<ToWorker>(b"{\"type\":\"task\",\"id\":1,\"attempt\":1}").is_err());
    }

    #[test]
    fn started_wire_form_matches_the_spec() {
        let started = FromWorker::Started { id: 7 };
        assert_eq!(encode_line(&started), b"{\"type\":\"started\",\"id\":7}\n");
        assert_eq!(
            decode_line::<FromWorker>(b"{\"type\":\"started\",\"id\":7,\"thread\":2}").unwrap(),
            started
        );
        assert!(decode_line::<FromWorker>(b"{\"type\":\"started\"}").is_err());
    }

    #[test]
    fn non_protocol_lines_are_errors_not_panics() {
        for line in [
            &b"hello"[..],
            b"{\"type\":\"bogus\"}",
            b"{\"type\":\"result\"}",
            b"[1,2]",
            b"",
        ] {
            assert!(decode_line::<FromWorker>(line).is_err(), "{line:?}");
        }
    }
}

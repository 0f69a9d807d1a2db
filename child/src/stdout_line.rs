//! Reading a worker's stdout line leniently enough to know which task a broken
//! message names, so that the supervisor can end that task instead of leaving it
//! waiting for an answer that already came.
//!
//! A well-formed line goes through the strict decoder ([`decode_line`]) alone. Only a
//! line it refuses is scanned again by [`outline`]: a small, non-recursive reader
//! of the top-level members of a JSON object that takes out the raw `type` and `id`
//! and skips everything else without judging it (a `NaN`, a nesting thousands deep,
//! a string cut short), so whatever spoils the rest of a line, the task it names is
//! still known.

use crate::protocol::{decode_line, FromWorker, ParseError, TaskId};

/// How deep the strict decoder reads nested arrays and objects (serde_json's limit);
/// an answer nested deeper ends its task with an error that says so.
pub const MAX_DEPTH: usize = 128;

/// What one stdout line of a worker says.
#[derive(Debug, Clone, PartialEq)]
pub enum StdoutLine {
    /// A well-formed protocol message.
    Message(FromWorker),
    /// A `result`, `error` or `started` that is not well-formed.
    Malformed {
        /// Its `type`: `"result"`, `"error"` or `"started"`.
        kind: &'static str,
        /// The task it names, read leniently (`"7"`, `7.0` and `7e0` name task 7);
        /// `None` when it names none: no `id`, or one that is no task's.
        id: Option<TaskId>,
        /// What is wrong with it, for the task's error and the log.
        problem: String,
    },
    /// Not a protocol message at all (a stray print, an unknown `type`).
    NotProtocol(ParseError),
}

/// Reads one line from a worker's stdout (with or without its newline).
pub fn decode_stdout_line(line: &[u8]) -> StdoutLine {
    let error = match decode_line::<FromWorker>(line) {
        Ok(message) => return StdoutLine::Message(message),
        Err(error) => error,
    };
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // A stray print without its newline glues itself to the front of the next message.
    let (skipped, object) = match line.first() {
        Some(b'{') => (0, line),
        _ => match find(line, b"{\"type\"") {
            Some(start) => (start, &line[start..]),
            None => return StdoutLine::NotProtocol(error),
        },
    };
    let members = outline(object);
    let kind = match members.kind {
        Some(b"\"result\"") => "result",
        Some(b"\"error\"") => "error",
        Some(b"\"started\"") => "started",
        _ => return StdoutLine::NotProtocol(error),
    };
    let (id, id_problem) = match members.id {
        None => (None, Some("it has no `id`".to_string())),
        Some(raw) => lenient_id(raw),
    };
    let problem = match (skipped, id_problem) {
        (0, Some(problem)) => problem,
        (0, None) => describe(&error, object),
        (skipped, _) => format!(
            "{skipped} bytes of other output came before it on its line \
             (a print without a newline?)"
        ),
    };
    StdoutLine::Malformed { kind, id, problem }
}

/// The raw values of an object's top-level `type` and `id` members.
#[derive(Debug, Default, PartialEq)]
struct Members<'a> {
    kind: Option<&'a [u8]>,
    id: Option<&'a [u8]>,
}

/// Scans the members of the object that starts `text`, as far as they can be told
/// apart; stops at the first thing that is not a member.
fn outline(text: &[u8]) -> Members<'_> {
    let mut members = Members::default();
    let mut at = 1; // past the `{`
    loop {
        at = skip_whitespace(text, at);
        let Some(key_end) = (text.get(at) == Some(&b'"'))
            .then(|| string_end(text, at))
            .flatten()
        else {
            return members;
        };
        let key = &text[at + 1..key_end - 1];
        at = skip_whitespace(text, key_end);
        if text.get(at) != Some(&b':') {
            return members;
        }
        let start = skip_whitespace(text, at + 1);
        let end = value_end(text, start);
        let value = trim_end(&text[start..end]);
        match key {
            b"type" => members.kind = members.kind.or(Some(value)),
            b"id" => members.id = members.id.or(Some(value)),
            _ => {}
        }
        at = skip_whitespace(text, end);
        match text.get(at) {
            Some(b',') => at += 1,
            _ => return members,
        }
    }
}

/// Where the value starting at `start` ends: past its closing quote or bracket, or
/// at the `,` `}` `]` that ends a bare token (a number, `NaN`, `true`). Nesting is
/// counted, not recursed into; a value cut short ends with the text.
fn value_end(text: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut at = start;
    while at < text.len() {
        match text[at] {
            b'"' => match string_end(text, at) {
                Some(end) => at = end,
                None => return text.len(),
            },
            b'[' | b'{' => {
                depth += 1;
                at += 1;
            }
            b']' | b'}' if depth > 0 => {
                depth -= 1;
                at += 1;
            }
            b',' | b']' | b'}' if depth == 0 => return at,
            _ => at += 1,
        }
        if depth == 0 && matches!(text.get(at - 1), Some(b'"' | b']' | b'}')) {
            return at;
        }
    }
    text.len()
}

/// Past the closing quote of the string whose opening quote is at `start`.
fn string_end(text: &[u8], start: usize) -> Option<usize> {
    let mut at = start + 1;
    while at < text.len() {
        match text[at] {
            b'\\' => at += 2,
            b'"' => return Some(at + 1),
            _ => at += 1,
        }
    }
    None
}

fn skip_whitespace(text: &[u8], mut at: usize) -> usize {
    while text.get(at).is_some_and(u8::is_ascii_whitespace) {
        at += 1;
    }
    at
}

fn trim_end(mut value: &[u8]) -> &[u8] {
    while let [rest @ .., last] = value {
        if !last.is_ascii_whitespace() {
            break;
        }
        value = rest;
    }
    value
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The task a raw `id` names, if any, and what is wrong with it, if anything: ids
/// are the integers the supervisor sent, but a string of one or a float with no
/// fraction still says which task is meant.
fn lenient_id(raw: &[u8]) -> (Option<TaskId>, Option<String>) {
    let shown = String::from_utf8_lossy(&raw[..raw.len().min(40)]).into_owned();
    if let Ok(id) = std::str::from_utf8(raw).unwrap_or("").parse::<TaskId>() {
        return (Some(id), None);
    }
    let (number, what) = match raw.strip_prefix(b"\"").and_then(|r| r.strip_suffix(b"\"")) {
        Some(inner) => (inner, "a string"),
        None => (raw, "not an integer"),
    };
    let id = std::str::from_utf8(number)
        .ok()
        .and_then(|text| text.trim().parse::<f64>().ok())
        // Below 2^53 every integer is exact in an f64, and no run has more tasks.
        .filter(|value| value.fract() == 0.0 && (0.0..9.007_199_254_740_992e15).contains(value))
        .map(|value| value as TaskId);
    let problem = match id {
        Some(id) => format!("its `id` is {shown}, {what}; echo the task's id {id} as sent"),
        None => format!("its `id` is {shown}, which is no task's id"),
    };
    (id, Some(problem))
}

/// The strict decoder's complaint, in words that say what to fix.
fn describe(error: &ParseError, object: &[u8]) -> String {
    let reason = error.reason();
    if reason.starts_with("recursion limit exceeded") {
        return format!("it is nested deeper than {MAX_DEPTH} levels, the most procpool reads");
    }
    if let Some(token) = non_json_number(error, object) {
        return format!(
            "it holds {token}, which is not JSON (Python: json.dumps(..., allow_nan=False) \
             refuses it)"
        );
    }
    match reason.strip_prefix("missing field `message`") {
        Some(_) => "an `error` answer needs a `message` string".to_string(),
        None => format!("it is not a valid message ({reason})"),
    }
}

/// `NaN`, `Infinity` or `-Infinity` where the strict decoder stopped.
fn non_json_number(error: &ParseError, object: &[u8]) -> Option<&'static str> {
    // The decoder stops at the token, or just past the sign of `-Infinity`.
    let at = error.column()?.checked_sub(1)?;
    [at.saturating_sub(1), at].into_iter().find_map(|start| {
        let rest = object.get(start..)?;
        ["-Infinity", "NaN", "Infinity"]
            .into_iter()
            .find(|token| rest.starts_with(token.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn malformed(line: &str) -> (&'static str, Option<TaskId>, String) {
        match decode_stdout_line(line.as_bytes()) {
            StdoutLine::Malformed { kind, id, problem } => (kind, id, problem),
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn well_formed_lines_are_messages() {
        assert_eq!(
            decode_stdout_line(b"{\"type\":\"started\",\"id\":3}\n"),
            StdoutLine::Message(FromWorker::Started { id: 3 })
        );
    }

    #[test]
    fn string_and_float_ids_name_their_task() {
        for (line, id) in [
            (r#"{"type":"result","id":"0","output":1}"#, 0),
            (r#"{"type":"error","id":18.0,"message":"x"}"#, 18),
            (r#"{"type":"started","id":19e0}"#, 19),
            (r#"{"id": "7" , "type" : "result"}"#, 7),
        ] {
            let (_, named, problem) = malformed(line);
            assert_eq!(named, Some(id), "{line}");
            assert!(problem.contains("echo the task's id"), "{problem}");
        }
    }

    #[test]
    fn unusable_ids_name_no_task() {
        for line in [
            r#"{"type":"result","output":1}"#,
            r#"{"type":"result","id":-1}"#,
            r#"{"type":"result","id":1.5}"#,
            r#"{"type":"result","id":null}"#,
            r#"{"type":"result","id":{"n":1}}"#,
            r#"{"type":"result","id":"seven"}"#,
        ] {
            let (kind, id, problem) = malformed(line);
            assert_eq!((kind, id), ("result", None), "{line}");
            assert!(problem.contains("id"), "{problem}");
        }
    }

    #[test]
    fn an_error_without_message_says_so() {
        let (kind, id, problem) = malformed(r#"{"type":"error","id":4}"#);
        assert_eq!((kind, id), ("error", Some(4)));
        assert!(problem.contains("needs a `message`"), "{problem}");
    }

    #[test]
    fn nan_infinity_and_deep_nesting_still_name_the_task() {
        for token in ["NaN", "Infinity", "-Infinity"] {
            let line = format!(r#"{{"type":"result","id":5,"output":[1,{token}]}}"#);
            let (_, id, problem) = malformed(&line);
            assert_eq!(id, Some(5));
            assert!(
                problem.contains(token) && problem.contains("allow_nan"),
                "{problem}"
            );
        }
        let deep = format!(
            r#"{{"type":"result","output":{}0{},"id":6}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let (_, id, problem) = malformed(&deep);
        assert_eq!(id, Some(6));
        assert!(problem.contains("nested deeper than 128"), "{problem}");
    }

    #[test]
    fn a_message_cut_short_or_glued_to_a_print_names_its_task() {
        let (_, id, _) = malformed(r#"{"type":"result","id":8,"output":{"a":[1,"#);
        assert_eq!(id, Some(8));
        let (_, id, problem) = malformed(r#"progress 50%{"type":"result","id":9,"output":1}"#);
        assert_eq!(id, Some(9));
        assert!(problem.contains("12 bytes of other output"), "{problem}");
    }

    #[test]
    fn lines_that_are_no_message_stay_not_protocol() {
        for line in [
            &b"hello"[..],
            b"{\"type\":\"bogus\",\"id\":1}",
            b"{\"id\":1}",
            b"[1,2]",
            b"",
            b"{\"type\":\"ready\",\"x\":NaN}",
            b"\xff\xfe{",
        ] {
            assert!(
                matches!(decode_stdout_line(line), StdoutLine::NotProtocol(_)),
                "{line:?}"
            );
        }
    }
}

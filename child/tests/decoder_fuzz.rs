//! The worker-line decoder under random and mutated lines (10⁵ cases of each kind):
//! it never panics, and a line that begins as an answer to task 7 always names task 7,
//! whatever follows — so the supervisor can end that task instead of waiting for ever.

use procpool_child::{decode_stdout_line, FromWorker, StdoutLine};
use proptest::prelude::*;

/// The start of an answer, kept intact by the mutations of the second property.
const PREFIX: &str = r#"{"type":"result","id":7,"output":"#;

/// Well-formed tails for `PREFIX`, and whole messages of each type.
const TAILS: &[&str] = &[
    r#"{"a":[1,2.5,"x\"y",null,true],"b":{"c":-3e10}}}"#,
    r#"[[[[0]]]],"extra":1}"#,
    r#""é \u00e9 \\"}"#,
    r#"12345678901234567890}"#,
];
const MESSAGES: &[&str] = &[
    r#"{"type":"ready"}"#,
    r#"{"type":"started","id":3}"#,
    r#"{"type":"error","id":4,"message":"bad input"}"#,
    r#"{"type":"result","id":5,"output":{"k":[1,{"n":null}]}}"#,
];
/// What workers get wrong, spliced in.
const JUNK: &[&str] = &[
    "NaN",
    "Infinity",
    "-Infinity",
    "\"",
    "\\",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\u{0}",
    "\u{1b}[2J",
    "\"id\":\"7\"",
    "\n",
    "1e999",
    "\u{fffd}",
];

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Delete(usize, usize),
    Insert(usize, usize),
    Deepen(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Flip(at, byte)),
        (any::<usize>(), 0..16usize).prop_map(|(at, len)| Mutation::Delete(at, len)),
        (any::<usize>(), 0..JUNK.len()).prop_map(|(at, junk)| Mutation::Insert(at, junk)),
        (any::<usize>(), 100..3000usize).prop_map(|(at, depth)| Mutation::Deepen(at, depth)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

/// Applies `mutations` to `line` from byte `keep` on (the bytes before are left alone).
fn mutate(line: &str, keep: usize, mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = line.as_bytes().to_vec();
    for mutation in mutations {
        let position = |at: usize, bytes: &[u8]| keep + at % (bytes.len() - keep + 1);
        match *mutation {
            Mutation::Flip(at, byte) if bytes.len() > keep => {
                let index = keep + at % (bytes.len() - keep);
                bytes[index] = byte;
            }
            Mutation::Flip(..) => {}
            Mutation::Delete(at, len) => {
                let start = position(at, &bytes);
                let end = (start + len).min(bytes.len());
                bytes.drain(start..end);
            }
            Mutation::Insert(at, junk) => {
                let start = position(at, &bytes);
                bytes.splice(start..start, JUNK[junk].bytes());
            }
            Mutation::Deepen(at, depth) => {
                let start = position(at, &bytes);
                bytes.splice(start..start, std::iter::repeat_n(b'[', depth));
            }
            Mutation::Truncate(at) => {
                let end = position(at, &bytes);
                bytes.truncate(end);
            }
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100_000, ..ProptestConfig::default() })]

    #[test]
    fn any_mutated_line_decodes_without_panic(
        message in 0..MESSAGES.len(),
        mutations in prop::collection::vec(mutation(), 1..5),
    ) {
        let _ = decode_stdout_line(&mutate(MESSAGES[message], 0, &mutations));
    }

    #[test]
    fn an_answer_to_task_7_names_task_7_whatever_follows_its_id(
        tail in 0..TAILS.len(),
        mutations in prop::collection::vec(mutation(), 0..5),
    ) {
        let line = format!("{PREFIX}{}", TAILS[tail]);
        let bytes = mutate(&line, PREFIX.len() - r#""output":"#.len(), &mutations);
        match decode_stdout_line(&bytes) {
            StdoutLine::Message(FromWorker::Result { id, .. }) => prop_assert_eq!(id, 7),
            StdoutLine::Malformed { kind, id, .. } => {
                prop_assert_eq!((kind, id), ("result", Some(7)));
            }
            other => prop_assert!(false, "{:?} for {:?}", other, String::from_utf8_lossy(&bytes)),
        }
    }
}

//! `--child` works with every workload, so every answer a supervisor reduces is
//! untrusted. Each test here runs a workload with a stdlib Python worker that answers
//! every task with a wrong value of the right shape (or the wrong shape): the answer
//! is that task's error, naming the worker and what was wrong, the run exits 1, the
//! report counts the task as an error, and nothing panics.

mod util;

use serde_json::{json, Value};
use util::{protocol_worker, Procpool};

/// A protocol worker answering every task with `answer`, a Python expression over
/// the task message `m`.
fn worker(answer: &str) -> String {
    protocol_worker(&format!(
        r#"send({{"type": "result", "id": m["id"], "output": {answer}}})"#
    ))
}

/// Runs `procpool run ARGS --procs 1 --json --child 'python3 w.py'` with `answer`,
/// checks the common promises and returns the report and stderr.
fn run_with_answer(args: &[&str], answer: &str) -> (Value, String) {
    let common = ["--procs", "1", "--json", "--child", "python3 w.py"];
    let output = Procpool::new(["run"].iter().chain(args).chain(&common))
        .write("w.py", worker(answer))
        .run(1);
    assert!(!output.stderr.contains("panicked"), "{output}");
    let report = output.json();
    let failures = report["failures"].as_array().expect("failures").clone();
    assert!(!failures.is_empty(), "{output}");
    assert_eq!(
        report["tasks_error"],
        json!(failures.len()),
        "every rejected answer is counted as an error\n{output}"
    );
    let pid = report["workers"][0]["pid"].as_i64().expect("a pid");
    let first = &failures[0];
    let message = first["message"].as_str().expect("a message");
    assert!(
        message.starts_with(&format!("worker 0 (pid {pid}) gave a bad answer: ")),
        "{output}"
    );
    let line = format!("task {} failed: {message}", first["id"]);
    assert!(output.stderr.contains(&line), "{line}\n{output}");
    assert!(!message.contains('\n'), "one line\n{output}");
    (report, output.stderr)
}

#[test]
fn primes_counts_past_the_range_are_rejected() {
    let (report, _) = run_with_answer(
        &["primes", "--limit", "1000", "--range", "100"],
        "18446744073709551615",
    );
    assert_eq!(report["tasks_ok"], json!(0));
    assert_eq!(report["tasks_error"], json!(10));
    assert_eq!(report["result"]["complete"], json!(false));
    let message = report["failures"][0]["message"].as_str().unwrap();
    assert!(
        message.ends_with(
            "primes: a count of 18446744073709551615 primes, more than a range of 100 numbers holds"
        ),
        "{message}"
    );

    let (report, _) = run_with_answer(&["primes", "--limit", "100", "--range", "100"], "'many'");
    let message = report["failures"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("not a primes output: invalid type: string \"many\""),
        "{message}"
    );
}

#[test]
fn mandelbrot_checksums_past_the_block_are_rejected() {
    let (report, _) = run_with_answer(
        &[
            "mandelbrot",
            "--width",
            "10",
            "--height",
            "8",
            "--rows",
            "4",
            "--max-iter",
            "10",
        ],
        "18446744073709551615",
    );
    assert_eq!(report["tasks_error"], json!(2));
    let message = report["failures"][0]["message"].as_str().unwrap();
    assert!(
        message.ends_with("mandelbrot: a checksum of 18446744073709551615, more than a block of rows can sum to (400)"),
        "{message}"
    );
}

#[test]
fn matmul_row_counts_past_the_block_are_rejected() {
    let (report, stderr) = run_with_answer(
        &["matmul", "--n", "32", "--block", "16"],
        r#"{"rows": 18446744073709551615, "kernel_s": 0.1}"#,
    );
    assert_eq!(report["tasks_error"], json!(2));
    let message = report["failures"][0]["message"].as_str().unwrap();
    assert!(
        message
            .ends_with("matmul: 18446744073709551615 rows written, more than a task's block of 16"),
        "{message}"
    );
    assert!(
        stderr.contains("workers reported 0 rows of C, expected 32"),
        "{stderr}"
    );
}

#[test]
fn colmeans_tiles_outside_the_array_are_rejected() {
    let (report, _) = run_with_answer(
        &["colmeans", "--gen-rows", "1000", "--gen-cols", "2"],
        r#"{"rows": [5, 1], "cols": [0, 2], "sums": [1.0, 2.0], "peak_rss_kib": 0}"#,
    );
    assert_eq!(report["tasks_ok"], json!(0));
    assert_eq!(report["result"]["means"], Value::Null);
    let message = report["failures"][0]["message"].as_str().unwrap();
    assert!(
        message.ends_with("colmeans: a tile of rows 5..1 × columns 0..2, outside the 1000x2 array"),
        "{message}"
    );
}

#[test]
fn a_big_maze_slice_past_the_frontier_is_rejected_and_stops_the_search() {
    let (report, stderr) = run_with_answer(
        &["maze", "--big", "--size", "20"],
        r#"{"lo": 1000000000, "found": 5}"#,
    );
    assert_eq!(report["tasks_error"], json!(1));
    let message = report["failures"][0]["message"].as_str().unwrap();
    assert!(
        message.ends_with(
            "maze: a slice from frontier cell 1000000000; level 0 has 1 cells in slices of 256"
        ),
        "{message}"
    );
    assert!(
        stderr.contains("a BFS task of the big maze failed; the search cannot go on"),
        "{stderr}"
    );
}

#[test]
fn maze_answers_for_seeds_of_no_task_are_rejected() {
    let (report, _) = run_with_answer(
        &["maze", "--mazes", "3", "--size", "10"],
        r#"{"seed": 999, "length": 3}"#,
    );
    assert_eq!(report["tasks_error"], json!(3));
    let message = report["failures"][0]["message"].as_str().unwrap();
    assert!(
        message.ends_with("maze: seed 999, which no task of this run has"),
        "{message}"
    );
}

#[test]
fn crawl_word_counts_that_overflow_are_rejected() {
    // Each page links to one more, so there is a second page to overflow the total.
    let (report, _) = run_with_answer(
        &[
            "crawl",
            "--site-pages",
            "3",
            "--delay-ms",
            "0",
            "--max-pages",
            "3",
        ],
        r#"{"url": m["input"]["url"], "status": 200, "words": 18446744073709551615,
            "links": [m["input"]["url"].rstrip("/") + "/again" + str(m["id"])]}"#,
    );
    assert_eq!(report["tasks_ok"], json!(1), "the first page fits");
    assert_eq!(report["tasks_error"], json!(1));
    assert_eq!(report["result"]["words"], json!(u64::MAX));
    let message = report["failures"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("crawl: 18446744073709551615 words on http://")
            && message.ends_with("the word totals would overflow"),
        "{message}"
    );
}

/// What a strict JSON decoder refuses but a worker easily writes: each still names its
/// task, which ends with an error saying what was wrong instead of waiting for ever.
#[test]
fn an_answer_json_refuses_ends_its_task_with_an_error_that_says_why() {
    let raw = r#"i = m["id"]
kind = m["input"]
deep = "[" * 10000 + "0" + "]" * 10000
lines = {
    "nan": '{"type": "result", "id": %d, "output": [1.5, NaN]}' % i,
    "infinity": '{"type": "result", "id": %d, "output": -Infinity}' % i,
    "deep": '{"type": "result", "id": %d, "output": %s}' % (i, deep),
    "string id": '{"type": "result", "id": "%d", "output": 1}' % i,
    "no message": '{"type": "error", "id": %d}' % i,
    "glued": 'progress{"type": "result", "id": %d, "output": 1}' % i,
    "fine": '{"type": "result", "id": %d, "output": 1}' % i,
}
sys.stdout.write(lines[kind] + "\n")
sys.stdout.flush()"#;
    let input =
        "\"nan\"\n\"infinity\"\n\"deep\"\n\"string id\"\n\"no message\"\n\"glued\"\n\"fine\"\n";
    let output = Procpool::tasks(&protocol_worker(raw), input, &["--procs", "1", "--ordered"])
        .timeout(std::time::Duration::from_secs(30))
        .run(1);
    let lines = util::result_lines(&output.stdout);
    assert_eq!(lines.len(), 7, "every task ends\n{output}");
    let error = |index: usize| {
        lines[index]["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let expected = [
        (0, "NaN, which is not JSON"),
        (1, "-Infinity, which is not JSON"),
        (2, "nested deeper than 128 levels"),
        (3, "echo the task's id 3 as sent"),
        (4, "needs a `message`"),
        (5, "8 bytes of other output came before it"),
    ];
    for (index, says) in expected {
        assert!(
            error(index).contains(says),
            "task {index}: {:?}\n{output}",
            lines[index]
        );
        assert!(error(index).contains("malformed"), "{:?}", lines[index]);
    }
    assert_eq!(lines[6]["output"], json!(1));
    assert!(output.stderr.contains("on 1 worker (spawn)"), "{output}");
}

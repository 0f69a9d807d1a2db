//! Workers in another language: the ten-line Python example, and Python workers that
//! misbehave on purpose (chatter on stdout, task errors, dying at once, crashing on
//! one task, hanging on one task).

mod util;

use std::time::Duration;

use serde_json::{json, Value};
use util::{assert_no_orphans, manifest_dir, worker_pids, Procpool};

/// The start of every misbehaving worker: the example's loop, with a hook per task.
/// `answer(message)` returns the reply to send for a task.
const WORKER_PRELUDE: &str = r#"
import json, os, signal, sys, time, resource
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # crash tests need no core files
def send(message): print(json.dumps(message), flush=True)
"#;

const WORKER_LOOP: &str = r#"
send({"type": "ready"})
for line in sys.stdin:
    message = json.loads(line)
    if message["type"] == "stop":
        break
    if message["type"] == "task":
        send(answer(message))
"#;

/// A worker script: prelude, `body` (which defines `answer`), loop.
fn worker_script(body: &str) -> String {
    format!("{WORKER_PRELUDE}{body}{WORKER_LOOP}")
}

fn example_worker() -> String {
    let path = manifest_dir().join("examples/python/worker.py");
    format!("python3 {}", path.display())
}

#[test]
fn the_example_worker_runs_noop_tasks() {
    let output = Procpool::new([
        "run",
        "noop",
        "--tasks",
        "500",
        "--procs",
        "2",
        "--child",
        &example_worker(),
        "--json",
    ])
    .run(0);
    let report = output.json();
    assert_eq!(report["result"]["tasks"], json!(500), "{output}");
    assert_eq!(report["tasks_total"], json!(500), "{output}");
    assert_eq!(report["tasks_ok"], json!(500), "{output}");
    assert_eq!(report["end"], json!("completed"), "{output}");
    let done: u64 = report["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            assert_eq!(w["exit"], json!({"exited": 0}), "{output}");
            w["tasks_done"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(done, 500, "{output}");
    assert_no_orphans(&worker_pids(&report), Duration::ZERO);
}

#[test]
fn the_example_worker_is_ten_lines_of_stdlib() {
    let source = std::fs::read_to_string(manifest_dir().join("examples/python/worker.py"))
        .expect("examples/python/worker.py");
    assert_eq!(source.lines().count(), 10, "keep it ten lines");
    let spec = std::fs::read_to_string(manifest_dir().join("child/PROTOCOL.md"))
        .expect("child/PROTOCOL.md");
    assert!(
        spec.contains(&source),
        "child/PROTOCOL.md must show examples/python/worker.py verbatim"
    );
}

#[test]
fn a_stdout_line_that_is_not_protocol_is_a_warning_not_a_failure() {
    let chatty = worker_script(
        r#"
print("hello from a chatty worker", flush=True)
def answer(message):
    if message["id"] == 10:
        print("debug: got task 10", flush=True)
    return {"type": "result", "id": message["id"], "output": None}
"#,
    );
    let output = Procpool::new([
        "run",
        "noop",
        "--tasks",
        "100",
        "--procs",
        "2",
        "--child",
        "python3 chatty.py",
        "--json",
    ])
    .write("chatty.py", &chatty)
    .run(0);
    let report = output.json();
    assert_eq!(report["tasks_ok"], json!(100), "{output}");
    for slot in ["[w0]", "[w1]"] {
        let line = format!(
            "{slot} procpool: warning: stdout line is not a protocol v1 message (expected value at line 1 column 1): \"hello from a chatty worker\""
        );
        assert!(output.stderr.contains(&line), "no {line:?}\n{output}");
    }
    assert!(
        output.stderr.contains(": \"debug: got task 10\""),
        "{output}"
    );
}

#[test]
fn task_errors_are_counted_exactly_and_exit_1() {
    let unlucky = worker_script(
        r#"
def answer(message):
    if message["id"] % 10 == 3:
        return {"type": "error", "id": message["id"], "message": "unlucky %d" % message["id"]}
    return {"type": "result", "id": message["id"], "output": None}
"#,
    );
    let output = Procpool::new([
        "run",
        "noop",
        "--tasks",
        "500",
        "--procs",
        "2",
        "--child",
        "python3 unlucky.py",
        "--json",
    ])
    .write("unlucky.py", &unlucky)
    .run(1);
    let report = output.json();
    assert_eq!(report["end"], json!("completed"), "{output}");
    assert_eq!(report["tasks_error"], json!(50), "{output}");
    assert_eq!(report["tasks_ok"], json!(450), "{output}");
    assert_eq!(report["tasks_failed"], json!(0), "{output}");
    assert_eq!(
        report["retries"],
        json!(0),
        "an error is not a crash\n{output}"
    );
    let failures = report["failures"].as_array().unwrap();
    let mut ids: Vec<u64> = failures.iter().map(|f| f["id"].as_u64().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..50).map(|i| i * 10 + 3).collect::<Vec<_>>());
    assert_eq!(
        failures[0]["message"],
        json!(format!("unlucky {}", failures[0]["id"]))
    );
    assert!(
        output.stderr.contains("procpool: task 3 failed: unlucky 3"),
        "{output}"
    );
    // Errors leave the workers fine: they stopped cleanly.
    for worker in report["workers"].as_array().unwrap() {
        assert_eq!(worker["exit"], json!({"exited": 0}), "{output}");
    }
}

#[test]
fn a_worker_that_exits_at_once_fails_the_run_with_a_clear_message() {
    let output = Procpool::new([
        "run",
        "noop",
        "--tasks",
        "10",
        "--procs",
        "2",
        "--child",
        "python3 -c 'import sys; sys.exit(3)'",
        "--json",
    ])
    .timeout(Duration::from_secs(20))
    .run(1);
    let report = output.json();
    let reason = report["end"]["aborted"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("workers die before sending `ready`")
            && reason.contains("exited with code 3"),
        "{output}"
    );
    assert!(
        output
            .stderr
            .contains("procpool: error: workers die before sending `ready`"),
        "{output}"
    );
    assert_eq!(report["tasks_ok"], json!(0), "{output}");
    assert_eq!(report["tasks_not_run"], json!(10), "{output}");
}

#[test]
fn a_task_that_crashes_every_worker_is_quarantined_and_the_rest_succeed() {
    let poison = worker_script(
        r#"
def answer(message):
    if message["id"] == 7:
        os.kill(os.getpid(), signal.SIGSEGV)
    return {"type": "result", "id": message["id"], "output": message["attempt"]}
"#,
    );
    let output = Procpool::new([
        "run",
        "noop",
        "--tasks",
        "100",
        "--procs",
        "2",
        "--max-attempts",
        "3",
        "--child",
        "python3 poison.py",
        "--json",
    ])
    .write("poison.py", &poison)
    .run(1);
    let report = output.json();
    assert_eq!(report["end"], json!("completed"), "{output}");
    assert_eq!(report["tasks_ok"], json!(99), "{output}");
    assert_eq!(report["tasks_failed"], json!(1), "{output}");
    assert_eq!(report["tasks_error"], json!(0), "{output}");
    let failure = &report["failures"][0];
    assert_eq!(failure["id"], json!(7), "{output}");
    assert_eq!(failure["attempts"], json!(3), "{output}");
    let crashes = failure["crashes"].as_array().unwrap();
    assert_eq!(crashes.len(), 3, "{output}");
    for crash in crashes {
        assert_eq!(
            crash["status"],
            json!({"signaled": {"signal": "SIGSEGV", "core_dumped": false}}),
            "{output}"
        );
    }
    // Three different processes died of it. (Restarts are 2 or 3: the last dead slot
    // may not be replaced before the run ends.)
    let mut pids: Vec<i64> = crashes.iter().map(|c| c["pid"].as_i64().unwrap()).collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 3, "{output}");
    // Task 7 is the oldest the worker holds (retries go first); innocent tasks sent
    // ahead with it are retried too, which `tasks_ok == 99` checked above.
    assert!(
        output
            .stderr
            .contains("killed by SIGSEGV while running task 7 (attempt 1/3)"),
        "{output}"
    );
    assert!(
        output
            .stderr
            .contains("procpool: task 7 quarantined after 3 crashes in 3 attempts"),
        "{output}"
    );
}

#[test]
fn a_task_past_its_deadline_has_its_worker_killed() {
    let sleepy = worker_script(
        r#"
def answer(message):
    if message.get("deadline_ms") != 500:
        return {"type": "error", "id": message["id"], "message": "no deadline_ms: %r" % message}
    if message["id"] == 5:
        time.sleep(60)
    return {"type": "result", "id": message["id"], "output": None}
"#,
    );
    let output = Procpool::new([
        "run",
        "noop",
        "--tasks",
        "20",
        "--procs",
        "2",
        "--task-timeout",
        "0.5",
        "--max-attempts",
        "2",
        "--child",
        "python3 sleepy.py",
        "--json",
    ])
    .write("sleepy.py", &sleepy)
    .run(1);
    let report: Value = output.json();
    assert_eq!(report["tasks_ok"], json!(19), "{output}");
    assert_eq!(report["tasks_failed"], json!(1), "{output}");
    let failure = &report["failures"][0];
    assert_eq!(failure["id"], json!(5), "{output}");
    for crash in failure["crashes"].as_array().unwrap() {
        assert_eq!(
            crash["killed_by_procpool"],
            json!("task_timeout"),
            "{output}"
        );
    }
    assert!(
        output
            .stderr
            .contains("by procpool: its task ran past the deadline"),
        "{output}"
    );
    assert_no_orphans(&worker_pids(&report), Duration::ZERO);
}

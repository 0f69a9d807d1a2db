//! `procpool check-worker`: the project's own workers pass it, and workers that break
//! the protocol fail it with the check that caught them.

mod util;

use std::path::PathBuf;
use std::process::Command;

use util::{manifest_dir, protocol_worker, python_example, threaded_worker, Output, Procpool};

fn check(command: &str, expected_code: i32) -> Output {
    Procpool::new(["check-worker", command]).run(expected_code)
}

fn assert_passes(command: &str) -> Output {
    let output = check(command, 0);
    assert!(
        output.stdout.contains("5 of 5 required checks passed") && !output.stdout.contains("FAIL"),
        "{output}"
    );
    output
}

/// `examples/rust_worker.rs`, built if `cargo test` did not build it already.
fn rust_example() -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let path = deps
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/rust_worker");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--example", "rust_worker"])
            .current_dir(manifest_dir())
            .status()
            .expect("running cargo");
        assert!(status.success(), "building the rust_worker example");
    }
    path
}

/// The optional check of `started`, as printed for a worker that sends it every time.
const ANNOUNCES_ALL: &str = "[pass] announces each task with `started` (optional): all 10 tasks";

#[test]
fn the_python_sdk_workers_pass() {
    let output = assert_passes(&python_example("procpool_worker.py"));
    assert!(output.stdout.contains(ANNOUNCES_ALL), "{output}");
    let output = assert_passes(&python_example("worker.py"));
    assert!(
        output
            .stdout
            .contains("[skip] announces each task with `started` (optional): never sends it"),
        "{output}"
    );
    // Every check input is a bad path: error answers, which pass too.
    let output = assert_passes(&python_example("count_words.py"));
    assert!(
        output
            .stdout
            .contains("[pass] reports a failing input as an error answer"),
        "{output}"
    );
}

#[test]
fn the_shell_worker_passes() {
    assert_passes(
        &manifest_dir()
            .join("examples/shell/worker.sh")
            .display()
            .to_string(),
    );
}

#[test]
fn the_rust_example_and_the_builtin_worker_pass() {
    let output = assert_passes(&rust_example().display().to_string());
    assert!(output.stdout.contains(ANNOUNCES_ALL), "{output}");
    let output = Procpool::new([
        "check-worker",
        env!("CARGO_BIN_EXE_procpool"),
        "worker",
        "noop",
    ])
    .run(0);
    assert!(
        output.stdout.contains("5 of 5 required checks passed"),
        "{output}"
    );
    assert!(output.stdout.contains(ANNOUNCES_ALL), "{output}");
}

#[test]
fn a_concurrent_worker_that_sends_started_passes() {
    // Answers out of order, each task announced as its thread begins it.
    let worker = threaded_worker(
        "send({'type': 'started', 'id': m['id']})\n\
         time.sleep(0.01 * (m['id'] % 3))\n\
         send({'type': 'result', 'id': m['id'], 'output': m['input']})\n",
    );
    let output = Procpool::new(["check-worker", "python3 w.py"])
        .write("w.py", &worker)
        .run(0);
    assert!(
        output.stdout.contains("5 of 5 required checks passed") && !output.stdout.contains("FAIL"),
        "{output}"
    );
    assert!(output.stdout.contains(ANNOUNCES_ALL), "{output}");
    assert!(output.stdout.contains("out of order"), "{output}");
}

#[test]
fn a_worker_whose_ready_sits_in_its_buffer_gets_the_flush_hint() {
    // print() to a pipe is block-buffered in Python: `ready` never leaves the process.
    let worker = "import sys, time\nprint('{\"type\": \"ready\"}')\ntime.sleep(30)\n";
    let output = Procpool::new(["check-worker", "--timeout", "1", "python3 w.py"])
        .write("w.py", worker)
        .env_remove("PYTHONUNBUFFERED")
        .run(1);
    assert!(
        output
            .stdout
            .contains("no ready within 1s; is the worker flushing stdout"),
        "{output}"
    );
}

#[test]
fn a_started_that_breaks_the_protocol_fails_the_check() {
    // Each worker answers every task, with one kind of bad `started` beside it.
    let cases = [
        (
            "send({'type': 'started', 'id': m['id'] + 1000})\nsend({'type': 'result', 'id': m['id']})\n",
            "[FAIL] answers a task exactly once (result or error): sent `started` for task id(s) [1000] it was never given",
        ),
        (
            "send({'type': 'result', 'id': m['id']})\nsend({'type': 'started', 'id': m['id']})\n",
            "[FAIL] answers a task exactly once (result or error): sent `started` for task(s) [0] after answering them",
        ),
        (
            "for _ in range(2): send({'type': 'started', 'id': m['id']})\nsend({'type': 'result', 'id': m['id']})\n",
            "[FAIL] answers a task exactly once (result or error): sent `started` for task(s) [0] more than once",
        ),
    ];
    for (body, expected) in cases {
        let output = Procpool::new(["check-worker", "--timeout", "2", "python3 w.py"])
            .write("w.py", protocol_worker(body))
            .run(1);
        assert!(
            output.stdout.contains(expected),
            "expected {expected:?}\n{output}"
        );
        // The same problem fails the batch and the EOF check too, and nothing else.
        assert!(
            output.stdout.contains("2 of 5 required checks passed"),
            "{output}"
        );
    }
}

#[test]
fn stderr_is_forwarded_and_stray_stdout_is_only_a_warning() {
    let output = Procpool::new(["check-worker", "python3 w.py"])
        .write(
            "w.py",
            "import json, sys\n\
             print('a stray line', flush=True)\nprint('hello log', file=sys.stderr, flush=True)\n\
             print(json.dumps({'type': 'ready'}), flush=True)\n\
             for line in sys.stdin:\n    m = json.loads(line)\n    if m['type'] == 'stop': break\n\
             \x20   print(json.dumps({'type': 'result', 'id': m['id'], 'output': None}), flush=True)\n",
        )
        .run(0);
    assert!(output.stderr.contains("[worker] hello log"), "{output}");
    assert!(
        output
            .stdout
            .contains("[warn] stdout carries only protocol messages"),
        "{output}"
    );
}

#[test]
fn broken_workers_fail_with_the_check_that_caught_them() {
    let cases = [
        // Never ready.
        ("import time\ntime.sleep(30)\n", "[FAIL] starts and sends ready"),
        // Answers twice.
        (
            "import json, sys\nprint('{\"type\":\"ready\"}', flush=True)\nfor line in sys.stdin:\n    m = json.loads(line)\n    if m['type'] == 'stop': break\n    for _ in range(2): print(json.dumps({'type': 'result', 'id': m['id']}), flush=True)\n",
            "more than once",
        ),
        // Ignores stop (exits only on EOF).
        (
            "import json, sys\nprint('{\"type\":\"ready\"}', flush=True)\nfor line in sys.stdin:\n    m = json.loads(line)\n    if m['type'] == 'task': print(json.dumps({'type': 'result', 'id': m['id']}), flush=True)\n",
            "[FAIL] exits 0 after stop: still running",
        ),
        // Exits 1 at the end.
        (
            "import json, sys\nprint('{\"type\":\"ready\"}', flush=True)\nfor line in sys.stdin:\n    m = json.loads(line)\n    if m['type'] == 'stop': sys.exit(1)\n    print(json.dumps({'type': 'result', 'id': m['id']}), flush=True)\nsys.exit(1)\n",
            "[FAIL] exits 0 on EOF (stdin closed): exited with code 1",
        ),
    ];
    for (script, expected) in cases {
        let output = Procpool::new([
            "check-worker",
            "--timeout",
            "1",
            "--grace",
            "1",
            "python3 w.py",
        ])
        .write("w.py", script)
        .run(1);
        assert!(
            output.stdout.contains(expected),
            "expected {expected:?}\n{output}"
        );
    }
    let output = Procpool::new(["check-worker", "./w.py"])
        .write("w.py", "print(1)\n")
        .run(1);
    assert!(output.stdout.contains("is not executable"), "{output}");
}

//! Workers that break the protocol on purpose, each a tiny script written into the
//! run's temp dir: the pool says clearly what happened and keeps going where it can.

mod util;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use util::{protocol_worker as worker, result_lines, Procpool};

const ANSWER: &str = r#"send({"type": "result", "id": m["id"], "output": m["input"]})"#;

fn tasks_run(script: &str, input: &str, extra: &[&str]) -> Procpool {
    Procpool::tasks(
        script,
        input,
        &[&["--procs", "2", "--ordered"], extra].concat(),
    )
}

#[test]
fn text_on_stdout_is_forwarded_as_a_log_and_the_run_is_ok() {
    let script = worker(&format!(
        "print('hello from a stray print', flush=True)\n{ANSWER}"
    ));
    let output = tasks_run(&script, "1\n2\n3\n", &[]).run(0);
    assert_eq!(result_lines(&output.stdout).len(), 3, "{output}");
    assert!(
        output
            .stderr
            .contains("stdout line is not a protocol v1 message")
            && output.stderr.contains("hello from a stray print"),
        "{output}"
    );
}

#[test]
fn a_100_mb_line_arrives_whole_in_linear_time_and_memory() {
    const SIZE: usize = 100_000_000;
    let script = worker(&format!(
        "if m['input'] == 'big':\n    sys.stdout.write(json.dumps({{'type': 'result', 'id': m['id'], 'output': 'x' * {SIZE}}}) + '\\n')\n    sys.stdout.flush()\n    continue\n{ANSWER}"
    ));
    let results = tempfile::tempdir().unwrap();
    let out_path = results.path().join("out.jsonl");
    let started = Instant::now();
    let running = tasks_run(
        &script,
        "1\nbig\n2\n",
        &["--output", out_path.to_str().unwrap(), "--json"],
    )
    .spawn();
    let (output, peak_kib) = running.wait_with_peak_rss(0);
    let took = started.elapsed();
    let text = std::fs::read_to_string(&out_path).expect("the output file");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{output}");
    let big: Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(big["output"].as_str().map(str::len), Some(SIZE), "{output}");
    eprintln!(
        "a {SIZE}-byte line: {took:.2?}, supervisor peak RSS {} MiB",
        peak_kib / 1024
    );
    // The line is held a few times over (read buffer, parsed value, encoded output
    // line), never once per read: linear, not quadratic.
    assert!(peak_kib < 6 * SIZE as u64 / 1024, "peak RSS {peak_kib} KiB");
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[test]
fn a_worker_that_closes_stdout_and_keeps_running_is_killed_and_its_task_failed() {
    let script = worker(&format!(
        "if m['input'] == 'close':\n    os.close(1)\n    time.sleep(60)\n{ANSWER}"
    ));
    let output = tasks_run(&script, "1\nclose\n2\n", &["--max-attempts", "2"]).run(1);
    let lines = result_lines(&output.stdout);
    assert_eq!(lines.len(), 3, "{output}");
    assert_eq!(lines[0]["output"], json!(1), "{output}");
    assert_eq!(lines[2]["output"], json!(2), "{output}");
    let error = lines[1]["error"].as_str().expect("an error line");
    assert!(error.contains("closed its stdout"), "{error}");
    assert!(
        output.stderr.contains(
            "killed by SIGKILL (sent by procpool: it closed its stdout but kept running)"
        ),
        "{output}"
    );
}

#[test]
fn a_worker_that_never_sends_ready_is_killed_after_the_ready_timeout() {
    let started = Instant::now();
    let output = Procpool::new([
        "run",
        "noop",
        "--tasks",
        "3",
        "--procs",
        "1",
        "--child",
        "python3 w.py",
        "--ready-timeout",
        "0.3",
    ])
    .write("w.py", "import time\ntime.sleep(60)\n")
    .run(1);
    assert!(
        output
            .stderr
            .contains("(sent by procpool: it never sent ready)")
            && output.stderr.contains("workers die before sending `ready`"),
        "{output}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "{output}");
}

#[test]
fn an_answer_to_a_task_never_given_is_dropped_with_a_warning() {
    let script = worker(&format!(
        "send({{'type': 'result', 'id': 987654, 'output': 'stray'}})\n{ANSWER}"
    ));
    let output = tasks_run(&script, "1\n2\n", &[]).run(0);
    assert_eq!(result_lines(&output.stdout).len(), 2, "{output}");
    assert!(
        output
            .stderr
            .contains("dropped an answer to a task it was never given (task 987654)"),
        "{output}"
    );
}

#[test]
fn a_second_answer_to_a_task_is_dropped_with_a_warning() {
    let script = worker(&format!("{ANSWER}\n{ANSWER}"));
    let output = tasks_run(&script, "1\n2\n3\n", &[]).run(0);
    let lines = result_lines(&output.stdout);
    assert_eq!(lines.len(), 3, "exactly one line per task\n{output}");
    assert!(
        output.stderr.contains("dropped a late or duplicate answer"),
        "{output}"
    );
}

#[test]
fn exiting_0_while_holding_a_task_is_a_crash_and_the_task_is_retried() {
    let script = worker(&format!(
        "if m['input'] == 'quit' and m['attempt'] == 1:\n    sys.exit(0)\n{ANSWER}"
    ));
    let results = tempfile::tempdir().unwrap();
    let out_path = results.path().join("out.jsonl");
    let output = tasks_run(
        &script,
        "1\nquit\n2\n",
        &["--output", out_path.to_str().unwrap(), "--json"],
    )
    .run(0);
    let report = output.json();
    assert_eq!(report["tasks_ok"], json!(3), "{output}");
    assert!(report["retries"].as_u64().unwrap() >= 1, "{output}");
    let restarts: u64 = report["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["restarts"].as_u64().unwrap())
        .sum();
    // The slot restarts unless the other worker finished everything first.
    assert!(restarts <= 1, "{output}");
    assert!(
        output
            .stderr
            .contains("exited with code 0 while running task 1 (attempt 1/3)"),
        "{output}"
    );
    let text = std::fs::read_to_string(&out_path).unwrap();
    assert_eq!(result_lines(&text)[1]["output"], json!("quit"), "{text}");
}

#[test]
fn a_worker_file_that_is_not_executable_is_a_clear_error() {
    let started = Instant::now();
    let output = Procpool::new(["run", "noop", "--tasks", "3", "--child", "./w.py"])
        .write("w.py", worker(ANSWER))
        .run(1);
    assert!(
        output.stderr.contains("./w.py is not executable") && output.stderr.contains("chmod +x"),
        "{output}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "{output}");
}

#[test]
fn a_missing_interpreter_is_a_clear_error_without_a_restart_storm() {
    // The kernel cannot exec it: the pool does not start.
    let run = Procpool::new(["run", "noop", "--tasks", "3", "--child", "./w.py"]).write(
        "w.py",
        format!("#!/nonexistent/python9\n{}", worker(ANSWER)),
    );
    let path = run.dir().join("w.py");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = run.run(1);
    assert!(
        output
            .stderr
            .contains("the interpreter on its #! line, /nonexistent/python9, does not"),
        "{output}"
    );
    assert!(!output.stderr.contains("restarting"), "{output}");

    // `env` runs but cannot find it: three deaths before ready, then a clear stop.
    let run = Procpool::new([
        "run", "noop", "--tasks", "3", "--procs", "1", "--child", "./w.py",
    ])
    .write(
        "w.py",
        format!("#!/usr/bin/env python9-missing\n{}", worker(ANSWER)),
    );
    let path = run.dir().join("w.py");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = run.run(1);
    assert!(
        output.stderr.contains("python9-missing")
            && output.stderr.contains("workers die before sending `ready`")
            && output.stderr.contains("3 times in a row"),
        "{output}"
    );
    assert_eq!(
        output
            .stderr
            .matches("exited with code 127 before sending ready")
            .count(),
        3,
        "{output}"
    );
}

#[test]
fn a_crashing_workers_own_children_die_with_it() {
    // The worker starts a long `sleep` of its own, then crashes: PR_SET_PDEATHSIG does
    // not reach grandchildren, so the pool must kill the worker's process group. The
    // run works in a directory of the test's, to find leftovers there afterwards.
    let script = worker(
        "import subprocess\nsubprocess.Popen(['sleep', '300'])\nif m['attempt'] == 1:\n    os._exit(3)\nsend({'type': 'result', 'id': m['id'], 'output': m['input']})",
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("w.py"), &script).unwrap();
    std::fs::write(dir.path().join("in.txt"), "1\n2\n").unwrap();
    let output = Procpool::new([
        "run",
        "tasks",
        "--child",
        "python3 w.py",
        "--procs",
        "2",
        "--input",
        "in.txt",
        "--max-attempts",
        "5",
    ])
    .in_dir(dir.path())
    .run(0);
    assert_eq!(result_lines(&output.stdout).len(), 2, "{output}");
    util::assert_none_left_in(dir.path(), Duration::from_secs(3));
}

#[test]
fn a_recycled_worker_that_ignores_stop_is_killed_after_the_grace() {
    // It answers, but after `stop` (and EOF) it lingers: the slot must not hang.
    let script = format!("{}\ntime.sleep(300)\n", worker(ANSWER));
    let started = Instant::now();
    let output = Procpool::tasks(
        &script,
        "1\n2\n3\n4\n5\n6\n",
        &[
            "--procs",
            "1",
            "--max-tasks-per-child",
            "2",
            "--grace",
            "0.5",
        ],
    )
    .run(0);
    assert_eq!(result_lines(&output.stdout).len(), 6, "{output}");
    assert!(started.elapsed() < Duration::from_secs(20), "{output}");
}

//! No input, worker or pipe can hang or bloat the supervisor: each line has a bound
//! (`--max-line` for task input and worker stdout, 64 KiB for worker stderr), a worker
//! that closes its stdin is replaced, a stderr nobody reads never stalls the pool, and
//! text from outside is escaped and cut in messages. Peak supervisor memory is the
//! report's own `supervisor_peak_rss_kib` (the kernel's `VmHWM` for it).

mod util;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use util::{protocol_worker as worker, result_lines, Procpool};

const ANSWER: &str = r#"send({"type": "result", "id": m["id"], "output": m["input"]})"#;
const MIB: u64 = 1024;

fn peak_rss_kib(report: &Value) -> u64 {
    report["supervisor_peak_rss_kib"]
        .as_u64()
        .expect("the report has the supervisor's peak RSS")
}

/// The first worker to get task `flood` runs `action` (once per run, by a marker file).
fn flood_once(action: &str) -> String {
    worker(&format!(
        "if m['input'] == 'flood' and not os.path.exists('flooded'):\n    open('flooded', 'w').close()\n{}\n{ANSWER}",
        action
            .lines()
            .map(|line| format!("    {line}"))
            .collect::<Vec<_>>()
            .join("\n")
    ))
}

#[test]
fn an_input_without_newlines_stops_the_run_at_the_line_bound() {
    let output = Procpool::new([
        "run",
        "tasks",
        "--child",
        "python3 w.py",
        "--input",
        "/dev/zero",
        "--max-line",
        "16M",
        "--json",
        "--output",
        "out.jsonl",
        "--procs",
        "1",
    ])
    .write("w.py", worker(ANSWER))
    .run(1);
    assert!(
        output.stderr.contains(
            "reading /dev/zero: line 1 is longer than the 16 MiB line bound; is the input one \
             JSON value per line? (raise the bound with --max-line)"
        ),
        "{output}"
    );
    let peak = peak_rss_kib(&output.json());
    eprintln!("--input /dev/zero, --max-line 16M: supervisor peak RSS {peak} KiB");
    assert!(peak < 48 * MIB, "peak RSS {peak} KiB for a 16 MiB bound");
}

#[test]
fn a_stdout_line_past_the_bound_kills_the_worker_and_its_task_is_retried() {
    let flood = "sys.stdout.write('y' * (40 << 20))\nsys.stdout.flush()\ntime.sleep(60)";
    let output = Procpool::tasks(
        &flood_once(flood),
        "1\nflood\n2\n",
        &[
            "--max-line",
            "8M",
            "--procs",
            "1",
            "--json",
            "--output",
            "out.jsonl",
        ],
    )
    .run(0);
    assert!(
        output
            .stderr
            .contains("a stdout line longer than the 8 MiB line bound; killing this worker")
            && output
                .stderr
                .contains("(sent by procpool: it wrote a stdout line longer than the line bound)"),
        "{output}"
    );
    let report = output.json();
    assert_eq!(report["tasks_ok"], json!(3), "{output}");
    let peak = peak_rss_kib(&report);
    eprintln!("a 40 MiB stdout line, --max-line 8M: supervisor peak RSS {peak} KiB");
    assert!(peak < 40 * MIB, "peak RSS {peak} KiB for an 8 MiB bound");
}

#[test]
fn a_long_stderr_line_is_cut_and_marked_and_control_characters_are_escaped() {
    let flood = "sys.stderr.write('\\x1b[2J' + 'e' * (30 << 20) + '\\n')\nsys.stderr.flush()";
    let output = Procpool::tasks(
        &flood_once(flood),
        "flood\n",
        &["--procs", "1", "--json", "--output", "out.jsonl"],
    )
    .run(0);
    let line = output
        .stderr
        .lines()
        .find(|line| line.contains("eeee"))
        .unwrap_or_else(|| panic!("the cut line\n{output}"));
    assert!(
        line.starts_with("[w0] \\u{1b}[2Jeeee")
            && line.ends_with("eee [procpool: cut, the line went on past 64 KiB]"),
        "{}…{}",
        &line[..40],
        &line[line.len() - 60..]
    );
    assert!(line.len() < 64 * 1024 + 100, "{} bytes", line.len());
    assert!(!output.stderr.contains('\x1b'), "an escape reached stderr");
    let peak = peak_rss_kib(&output.json());
    eprintln!("a 30 MiB stderr line: supervisor peak RSS {peak} KiB");
    assert!(peak < 24 * MIB, "peak RSS {peak} KiB");
}

#[test]
fn a_worker_that_closes_its_stdin_is_replaced_and_its_tasks_retried_uncharged() {
    // Closes stdin on its first task and stays alive: writes to it fail with EPIPE.
    let script = flood_once("os.close(0)\ntime.sleep(60)");
    let started = Instant::now();
    let output = Procpool::tasks(
        &script,
        "flood\n1\n2\n3\n",
        &["--procs", "1", "--max-attempts", "1", "--ordered"],
    )
    .run(0);
    let lines = result_lines(&output.stdout);
    let outputs: Vec<&Value> = lines.iter().map(|line| &line["output"]).collect();
    assert_eq!(
        outputs,
        [&json!("flood"), &json!(1), &json!(2), &json!(3)],
        "{output}"
    );
    assert!(
        output
            .stderr
            .contains("(sent by procpool: it closed its stdin but kept running)"),
        "{output}"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "{output}");
}

#[test]
fn a_150_mb_line_goes_through_an_echo_worker_in_linear_time_and_memory() {
    const SIZE: usize = 150_000_000;
    let input = format!("\"{}\"\n", "x".repeat(SIZE));
    let started = Instant::now();
    let output = Procpool::tasks(
        &worker(ANSWER),
        &input,
        &["--procs", "1", "--json", "--output", "out.jsonl"],
    )
    .timeout(Duration::from_secs(120))
    .run(0);
    let took = started.elapsed();
    let peak = peak_rss_kib(&output.json());
    eprintln!(
        "a {SIZE}-byte line through an echo worker: {took:.2?}, supervisor peak RSS {peak} KiB"
    );
    // Held three times at most (the shared input, the answer line, its parsed value);
    // the quadratic outbox took minutes here, and seven copies.
    assert!(
        peak < 3 * SIZE as u64 / 1024 + 32 * MIB,
        "peak RSS {peak} KiB"
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

#[test]
fn a_stderr_nobody_reads_never_stalls_the_pool() {
    // Each task logs 64 KiB: the pipe (64 KiB) is full after the first.
    let chatty = worker(&format!(
        "for _ in range(64):\n    print('log ' * 255, file=sys.stderr, flush=True)\n{ANSWER}"
    ));
    let input: String = (0..200).map(|n| format!("{n}\n")).collect();
    let (running, _unread) = Procpool::tasks(&chatty, &input, &["--procs", "2"])
        .timeout(Duration::from_secs(60))
        .spawn_with_unread_stderr();
    let output = running.wait(0);
    assert_eq!(result_lines(&output.stdout).len(), 200, "{output}");
}

#[test]
fn sigterm_acts_at_once_while_stderr_is_full() {
    let chatty = worker("while True:\n    print('log ' * 255, file=sys.stderr, flush=True)");
    let (running, _unread) = Procpool::tasks(&chatty, "1\n2\n", &["--procs", "2", "--grace", "1"])
        .timeout(Duration::from_secs(30))
        .spawn_with_unread_stderr();
    std::thread::sleep(Duration::from_millis(1500));
    let signalled = Instant::now();
    running.signal(Signal::SIGTERM);
    running.wait(130);
    // Grace for the tasks, then the last log lines' patience for a reader.
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "took {:?}",
        signalled.elapsed()
    );
}

#[test]
fn a_hostile_npy_header_is_quoted_and_cut_in_the_error() {
    let mut dict = String::from("{'descr': '\x1b[2J\x1b]0;pwned\x07");
    dict.push_str(&"A".repeat(1 << 20));
    dict.push_str("', 'fortran_order': False, 'shape': (3,), }\n");
    let mut file = b"\x93NUMPY\x02\x00".to_vec();
    file.extend_from_slice(&(dict.len() as u32).to_le_bytes());
    file.extend_from_slice(dict.as_bytes());
    let run = Procpool::new(["run", "colmeans", "--file", "bad.npy"]);
    std::fs::write(run.dir().join("bad.npy"), &file).unwrap();
    let output = run.run(2);
    assert!(output.stderr.contains("\\u{1b}[2J"), "{output}");
    assert!(!output.stderr.contains('\x1b') && !output.stderr.contains('\x07'));
    assert!(
        output.stderr.len() < 2000,
        "{} bytes of error",
        output.stderr.len()
    );
}

#[test]
fn a_report_on_a_closed_stdout_exits_141_like_a_shell_tool() {
    let examples = util::manifest_dir().join("examples/python/worker.py");
    let worker = format!("python3 {}", examples.display());
    for args in [
        vec!["run", "noop", "--tasks", "10"],
        vec!["run", "noop", "--tasks", "10", "--json"],
        vec!["check-worker", worker.as_str()],
    ] {
        let (reader, writer) = nix::unistd::pipe().expect("a pipe");
        drop(reader);
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_procpool"))
            .args(&args)
            .stdout(std::process::Stdio::from(writer))
            .stderr(std::process::Stdio::null())
            .status()
            .expect("running procpool");
        assert_eq!(status.code(), Some(141), "{args:?}: {status}");
    }
}

//! `procpool run tasks` end to end with the Python SDK: one output line per input
//! line, completion order or `--ordered`, non-JSON lines as strings, errors and
//! crashes as error lines, stdin/stdout by default, and a large input streamed in
//! bounded memory.

mod util;

use std::collections::BTreeSet;
use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use util::{manifest_dir, python_example, result_lines, Procpool};

/// A worker script on the SDK: `body` defines `handle(input)`.
fn sdk_worker(body: &str) -> String {
    format!(
        "import os, sys, time\nsys.path.insert(0, {:?})\nfrom procpool_worker import serve\n{body}\nserve(handle)\n",
        manifest_dir().join("examples/python").display().to_string()
    )
}

fn ids(lines: &[Value]) -> Vec<u64> {
    lines
        .iter()
        .map(|line| line["id"].as_u64().expect("id"))
        .collect()
}

#[test]
fn results_come_in_completion_order_or_in_input_order_with_ordered() {
    // Task 0 sleeps; the others are instant, so they overtake it on the other worker.
    let worker = sdk_worker("def handle(x):\n    time.sleep(x)\n    return x\n");
    let input = "0.8\n0\n0\n0\n0\n0\n";
    let args = ["--procs", "2", "--prefetch", "1", "--quiet"];
    let output = Procpool::tasks(&worker, input, &args).run(0);
    let lines = result_lines(&output.stdout);
    assert_eq!(lines.len(), 6, "{output}");
    assert_eq!(
        *ids(&lines).last().unwrap(),
        0,
        "the slow task finishes last\n{output}"
    );
    assert_eq!(
        lines.last().unwrap(),
        &json!({"id": 0, "input": 0.8, "output": 0.8})
    );

    let output = Procpool::tasks(&worker, input, &[&args[..], &["--ordered"]].concat()).run(0);
    let lines = result_lines(&output.stdout);
    assert_eq!(ids(&lines), vec![0, 1, 2, 3, 4, 5], "{output}");
    assert!(output.stderr.contains("tasks: 6 ok"), "{output}");
}

#[test]
fn lines_that_are_not_json_are_strings_and_blank_lines_are_skipped() {
    let output = Procpool::new([
        "run",
        "tasks",
        "--child",
        &python_example("procpool_worker.py"),
        "--procs",
        "2",
        "--input",
        "in.txt",
        "--ordered",
    ])
    .write(
        "in.txt",
        "42\nhello world\n\n   \n{\"a\": [1, null]}\n\"quoted\"\r\nnot {json\ntrue\n",
    )
    .run(0);
    let lines = result_lines(&output.stdout);
    let inputs: Vec<&Value> = lines.iter().map(|l| &l["input"]).collect();
    assert_eq!(
        inputs,
        [
            &json!(42),
            &json!("hello world"),
            &json!({"a": [1, null]}),
            &json!("quoted"),
            &json!("not {json"),
            &json!(true)
        ],
        "{output}"
    );
    for line in &lines {
        assert_eq!(line["input"], line["output"], "the echo worker\n{output}");
    }
    assert_eq!(ids(&lines), vec![0, 1, 2, 3, 4, 5], "{output}");
}

#[test]
fn a_line_that_would_change_on_the_way_stops_the_run_naming_it() {
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let cases: [(&[u8], &str); 6] = [
        (b"{\"a\": [1, 2", "line 3 starts like JSON but is not (EOF while parsing"),
        (b"caf\xe9 au lait", "line 3 is not valid UTF-8 (at byte 3)"),
        (deep.as_bytes(), "line 3 starts like JSON but is not (recursion limit exceeded"),
        (b"{\"n\": 123456789012345678901234567890}", "line 3 holds the number 123456789012345678901234567890, which has no exact 64-bit form"),
        (b"[-9223372036854775809]", "line 3 holds the number -9223372036854775809"),
        (b"1e400", "line 3 holds the number 1e400"),
    ];
    for (line, problem) in cases {
        // Numbers at the edges of 64 bits, in strings, and in text pass as they are.
        let mut input = b"order 123456789012345678901234567890 shipped\n\
            [18446744073709551615, -9223372036854775808, 1.5e308, \"1e400\"]\n"
            .to_vec();
        input.extend_from_slice(line);
        input.extend_from_slice(b"\n3\n");
        let output = Procpool::new([
            "run",
            "tasks",
            "--child",
            &python_example("procpool_worker.py"),
            "--procs",
            "1",
            "--input",
            "in.txt",
        ])
        .write("in.txt", input)
        .run(1);
        assert!(output.stderr.contains(problem), "{problem}\n{output}");
        // The lines before it ran; nothing after it was read.
        let mut lines = result_lines(&output.stdout);
        lines.sort_by_key(|line| line["id"].as_u64());
        assert_eq!(lines.len(), 2, "{output}");
        assert_eq!(
            lines[0]["output"], "order 123456789012345678901234567890 shipped",
            "{output}"
        );
        assert_eq!(
            lines[1]["output"],
            json!([18446744073709551615u64, i64::MIN, 1.5e308, "1e400"]),
            "{output}"
        );
    }
}

#[test]
fn the_sdk_refuses_nan_and_infinity_as_the_tasks_error() {
    let worker = sdk_worker("def handle(x):\n    return float(x)\n");
    let output = Procpool::tasks(&worker, "\"nan\"\n\"inf\"\n2\n", &["--ordered"]).run(1);
    let lines = result_lines(&output.stdout);
    for line in &lines[..2] {
        let error = line["error"].as_str().unwrap_or_default();
        assert!(error.contains("not JSON compliant"), "{line}\n{output}");
    }
    assert_eq!(lines[2]["output"], json!(2.0));
}

#[test]
fn a_task_error_is_an_error_line_and_the_run_exits_1() {
    let worker = sdk_worker(
        "def handle(x):\n    if x < 0:\n        raise ValueError('negative: %d' % x)\n    return x * 10\n",
    );
    let output = Procpool::tasks(&worker, "1\n-2\n3\n", &["--procs", "2", "--ordered"]).run(1);
    let lines = result_lines(&output.stdout);
    assert_eq!(
        lines,
        vec![
            json!({"id": 0, "input": 1, "output": 10}),
            json!({"id": 1, "input": -2, "error": "ValueError: negative: -2"}),
            json!({"id": 2, "input": 3, "output": 30}),
        ],
        "{output}"
    );
    assert!(
        output.stderr.contains("tasks: 2 ok, 1 error, 0 failed"),
        "{output}"
    );
}

#[test]
fn crashes_mid_run_still_give_exactly_one_line_per_input() {
    // "boom" kills its worker every time (quarantined after 3 attempts); "once" kills
    // the first worker that runs it only (retried, then fine).
    let worker = sdk_worker(
        "def handle(x):\n    if x == 'boom':\n        os._exit(3)\n    if x == 'once' and not os.path.exists('crashed'):\n        open('crashed', 'w').close()\n        os._exit(4)\n    return x\n",
    );
    let mut input = String::new();
    for i in 0..40 {
        input.push_str(&match i {
            10 => "boom\n".to_string(),
            25 => "once\n".to_string(),
            _ => format!("{i}\n"),
        });
    }
    let results = tempfile::tempdir().unwrap();
    let out_path = results.path().join("out.jsonl");
    let output = Procpool::tasks(
        &worker,
        &input,
        &[
            "--procs",
            "2",
            "--output",
            out_path.to_str().unwrap(),
            "--json",
        ],
    )
    .run(1);
    // The results went to the file; stdout holds the report alone.
    let report = output.json();
    assert_eq!(report["tasks_ok"], json!(39), "{output}");
    assert_eq!(report["tasks_failed"], json!(1), "{output}");
    assert_eq!(report["result"]["tasks"], json!(40), "{output}");
    let text = std::fs::read_to_string(&out_path).expect("the output file");
    let lines = result_lines(&text);
    assert_eq!(lines.len(), 40, "{text}\n{output}");
    let mut seen = ids(&lines);
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..40).collect::<Vec<u64>>(),
        "one line per input\n{text}"
    );
    let boom = lines
        .iter()
        .find(|l| l["input"] == json!("boom"))
        .expect("boom");
    let error = boom["error"].as_str().expect("an error line");
    assert!(
        error.contains("quarantined") && error.contains("exited with code 3"),
        "{error}"
    );
    let once = lines
        .iter()
        .find(|l| l["input"] == json!("once"))
        .expect("once");
    assert_eq!(
        once["output"],
        json!("once"),
        "retried after one crash\n{output}"
    );
    assert!(output.stderr.contains("exited with code 4"), "{output}");
}

#[test]
fn stdin_and_stdout_by_default_with_the_summary_and_report_on_stderr() {
    let child = python_example("procpool_worker.py");
    let output = Procpool::new(["run", "tasks", "--child", &child, "--procs", "2"])
        .run_with_stdin(b"1\n2\n3\n", 0);
    let lines = result_lines(&output.stdout);
    let inputs: BTreeSet<i64> = lines
        .iter()
        .map(|l| l["output"].as_i64().unwrap())
        .collect();
    assert_eq!(inputs, BTreeSet::from([1, 2, 3]), "{output}");
    assert!(output.stderr.contains("tasks: 3 ok"), "{output}");

    let output = Procpool::new(["run", "tasks", "--child", &child, "--json"])
        .run_with_stdin(b"\"a\"\n\"b\"\n", 0);
    assert_eq!(
        result_lines(&output.stdout).len(),
        2,
        "only results on stdout\n{output}"
    );
    let report: Value = serde_json::from_str(output.stderr.lines().last().unwrap())
        .unwrap_or_else(|err| panic!("the last stderr line is the report ({err})\n{output}"));
    assert_eq!(report["workload"], json!("tasks"), "{output}");
    assert_eq!(report["result"]["ok"], json!(2), "{output}");
}

#[test]
fn tasks_without_child_is_a_usage_error() {
    let output = Procpool::new(["run", "tasks"]).run_with_stdin(b"1\n", 2);
    assert!(output.stderr.contains("needs --child"), "{output}");
    let output =
        Procpool::new(["run", "tasks", "--child", "true", "--input", "missing.txt"]).run(2);
    assert!(output.stderr.contains("missing.txt"), "{output}");
    let output = Procpool::new(["run", "tasks", "--child", "true", "--input", "."]).run(2);
    assert!(
        output.stderr.contains("--input . is a directory"),
        "{output}"
    );
}

#[test]
fn a_large_input_streams_in_bounded_memory() {
    const LINES: usize = 200_000;
    let mut input = String::with_capacity(LINES * 40);
    for i in 0..LINES {
        input.push_str(&format!("{{\"n\": {i}, \"pad\": \"{:020}\"}}\n", i));
    }
    let results = tempfile::tempdir().unwrap();
    let out_path = results.path().join("out.jsonl");
    let run = Procpool::new([
        "run",
        "tasks",
        "--child",
        &python_example("procpool_worker.py"),
        "--procs",
        "2",
        "--input",
        "in.jsonl",
        "--output",
        out_path.to_str().unwrap(),
        "--ordered",
        "--json",
    ])
    .timeout(Duration::from_secs(120))
    .write("in.jsonl", &input);
    let started = Instant::now();
    let running = run.spawn();
    let (output, peak_kib) = running.wait_with_peak_rss(0);
    let took = started.elapsed();
    let report = output.json();
    assert_eq!(report["tasks_ok"], json!(LINES), "{output}");
    let text = std::fs::read_to_string(&out_path).expect("the output file");
    let mut count = 0;
    for (i, line) in text.lines().enumerate() {
        let line: Value = serde_json::from_str(line).unwrap();
        assert_eq!(line["id"], json!(i));
        assert_eq!(line["output"]["n"], json!(i));
        count += 1;
    }
    assert_eq!(count, LINES);
    eprintln!("{LINES} lines in {took:.2?}, supervisor peak RSS {peak_kib} KiB");
    // The input file alone is ~8 MB; holding it (or the results) whole would show.
    assert!(peak_kib < 40 * 1024, "supervisor peak RSS {peak_kib} KiB");
    assert!(took < Duration::from_secs(90), "took {took:?}");
}

/// A `run tasks` fed through a pipe the test holds open, its results going to a file
/// the test reads while the run goes on.
struct Trickle {
    running: util::Running,
    stdin: std::process::ChildStdin,
    out: std::path::PathBuf,
    _out_dir: tempfile::TempDir,
}

impl Trickle {
    fn start(args: &[&str]) -> Trickle {
        let child = python_example("procpool_worker.py");
        let out_dir = tempfile::tempdir().unwrap();
        let out = out_dir.path().join("out.txt");
        let mut all = vec!["run", "tasks", "--child", &child];
        all.extend(["--output", out.to_str().unwrap()]);
        all.extend(args);
        let (running, stdin) = Procpool::new(all).spawn_with_stdin_pipe();
        Trickle {
            running,
            stdin,
            out,
            _out_dir: out_dir,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).unwrap();
        self.stdin.flush().unwrap();
    }

    fn results(&self) -> Vec<Value> {
        result_lines(&std::fs::read_to_string(&self.out).unwrap_or_default())
    }

    /// Whether `count` results are written within 20 s.
    fn written(&self, count: usize) -> bool {
        util::wait_until(Duration::from_secs(20), || self.results().len() == count)
    }
}

/// Input that trickles in (a terminal, `tail -f`): each line runs and its result is
/// written while the producer is still silent, not when the next line comes.
#[test]
fn results_are_written_while_the_input_waits_for_more() {
    let mut run = Trickle::start(&["--procs", "2", "--quiet"]);
    for (count, line) in [(1, "\"first\"\n"), (2, "\"second\"\n")] {
        run.send(line.as_bytes());
        assert!(
            run.written(count),
            "no result {count} while stdin stays open"
        );
    }
    // A line that arrives in two writes, the last without a newline, is one task.
    run.send(b"\"thi");
    std::thread::sleep(Duration::from_millis(100));
    run.send(b"rd\"");
    let Trickle {
        running,
        stdin,
        out,
        _out_dir,
    } = run;
    drop(stdin);
    running.wait(0);
    let text = std::fs::read_to_string(out).unwrap();
    let outputs: Vec<Value> = result_lines(&text)
        .iter()
        .map(|line| line["output"].clone())
        .collect();
    assert_eq!(outputs, [json!("first"), json!("second"), json!("third")]);
}

/// Ctrl-C is acted on at once even while the input is silent.
#[test]
fn ctrl_c_ends_a_run_whose_input_is_silent() {
    let mut run = Trickle::start(&[]);
    run.send(b"1\n");
    assert!(run.written(1), "the one task never answered");
    let asked = Instant::now();
    run.running.signal(nix::sys::signal::Signal::SIGINT);
    let output = run.running.wait(130);
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "took {:?}\n{output}",
        asked.elapsed()
    );
    // Results go to the file, so the summary is on stdout.
    assert!(output.stdout.contains("tasks: 1 ok"), "{output}");
}

/// A read error on the input mid-run (here a TCP connection reset) ends the run with
/// exit 1 and the error, after the tasks already running have finished and written
/// their results.
#[test]
fn a_read_error_on_the_input_lets_running_tasks_finish() {
    use nix::sys::socket::{setsockopt, sockopt::Linger};
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let reader = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut writer, _) = listener.accept().unwrap();
    let worker = sdk_worker("def handle(x):\n    time.sleep(1.5)\n    return x\n");
    let running = Procpool::new(["run", "tasks", "--child", "python3 w.py", "--procs", "2"])
        .write("w.py", &worker)
        .spawn_with_stdin(std::os::fd::OwnedFd::from(reader).into());
    writer.write_all(b"1\n2\n").unwrap();
    running.busy_workers(2);
    std::thread::sleep(Duration::from_millis(300));
    // Linger 0: closing sends a reset, and the reader's next read fails.
    let reset = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(&writer, Linger, &reset).unwrap();
    drop(writer);
    let output = running.wait(1);
    let mut outputs: Vec<i64> = result_lines(&output.stdout)
        .iter()
        .map(|line| line["output"].as_i64().unwrap())
        .collect();
    outputs.sort_unstable();
    assert_eq!(outputs, [1, 2], "{output}");
    assert!(output.stderr.contains("reading stdin"), "{output}");
    assert!(output.stderr.contains("tasks: 2 ok"), "{output}");
}

/// stdin is reopened non-blocking when it is a pipe: a pipe whose writer is already
/// gone must still be read to its end, not wait for a writer.
#[test]
fn a_pipe_whose_writer_is_gone_is_read_to_its_end() {
    let (read, write) = nix::unistd::pipe().unwrap();
    nix::unistd::write(&write, b"1\n2\n3\n").unwrap();
    drop(write);
    let child = python_example("procpool_worker.py");
    let output = Procpool::new(["run", "tasks", "--child", &child, "--procs", "2"])
        .spawn_with_stdin(read.into())
        .wait(0);
    assert_eq!(result_lines(&output.stdout).len(), 3, "{output}");
}

#[test]
fn progress_prints_plain_lines_where_there_is_no_live_table() {
    let worker = sdk_worker("def handle(x):\n    time.sleep(0.5)\n    return x\n");
    let input: String = (0..10).map(|i| format!("{i}\n")).collect();
    let output = Procpool::tasks(&worker, &input, &["--procs", "1", "--progress"]).run(0);
    let progress: Vec<&str> = output
        .stderr
        .lines()
        .filter(|line| line.starts_with("procpool: ") && line.contains("/10 tasks ("))
        .collect();
    // 5 s of work, a line every 2 s, the total counted from the file; no escape
    // sequences of a table.
    assert!(!progress.is_empty(), "{output}");
    assert!(
        progress[0].contains("/s, elapsed") && progress[0].contains("ETA"),
        "{output}"
    );
    assert!(!output.stderr.contains('\x1b'), "{output}");
    assert_eq!(result_lines(&output.stdout).len(), 10, "{output}");
}

#[test]
fn results_on_the_same_terminal_as_stderr_get_no_live_table() {
    use std::os::fd::AsFd;
    let pty = nix::pty::openpty(None, None).expect("a pseudo-terminal");
    let terminal = || std::process::Stdio::from(pty.slave.as_fd().try_clone_to_owned().unwrap());
    let worker = sdk_worker("def handle(x):\n    time.sleep(0.3)\n    return x\n");
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("w.py"), worker).expect("writing the worker");
    let mut run = std::process::Command::new(env!("CARGO_BIN_EXE_procpool"))
        .args(["run", "tasks", "--child", "python3 w.py", "--procs", "1"])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(terminal())
        .stderr(terminal())
        .spawn()
        .expect("starting procpool");
    run.stdin
        .take()
        .expect("piped")
        .write_all(b"1\n2\n3\n4\n")
        .expect("writing the input");
    assert!(run.wait().expect("waiting").success());
    drop(pty.slave);
    let mut screen = Vec::new();
    let mut master = std::fs::File::from(pty.master);
    // The master reads EIO once the slave side is closed: that is the end.
    let _ = std::io::Read::read_to_end(&mut master, &mut screen);
    let screen = String::from_utf8_lossy(&screen);
    assert!(
        !screen.contains('\x1b'),
        "a table was drawn over the results:\n{screen}"
    );
    assert_eq!(screen.matches("\"output\"").count(), 4, "{screen}");
}

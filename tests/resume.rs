//! `run tasks --resume` and `--joblog`: a run killed at any point (`kill -9` of the
//! supervisor, Ctrl-C) is run again with the same command and `--resume` until it
//! completes; the output then holds every input exactly once, as a clean run does.

mod util;

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use util::{manifest_dir, result_lines, Procpool};

const INPUTS: u64 = 2_000;

fn worker() -> String {
    format!(
        "import sys, time\nsys.path.insert(0, {:?})\nfrom procpool_worker import serve\n\
         def handle(x):\n    time.sleep(0.002)\n    return x * 3\nserve(handle)\n",
        manifest_dir().join("examples/python").display().to_string()
    )
}

fn input() -> String {
    (0..INPUTS).map(|i| format!("{i}\n")).collect()
}

/// `run tasks --input in.txt --output out.jsonl --resume ARGS` in `dir`.
fn resumed(dir: &std::path::Path, args: &[&str]) -> Procpool {
    let mut all = vec![
        "run",
        "tasks",
        "--child",
        "python3 w.py",
        "--input",
        "in.txt",
        "--output",
        "out.jsonl",
        "--resume",
        "--joblog",
        "log.jsonl",
        "--procs",
        "2",
        "--quiet",
    ];
    all.extend_from_slice(args);
    Procpool::new(all).in_dir(dir)
}

/// Output lines by id; panics on an id seen twice.
fn by_id(text: &str) -> BTreeMap<u64, Value> {
    let mut lines = BTreeMap::new();
    for line in result_lines(text) {
        let id = line["id"].as_u64().expect("an id");
        assert!(lines.insert(id, line).is_none(), "id {id} written twice");
    }
    lines
}

fn assert_complete(dir: &std::path::Path) -> String {
    let text = std::fs::read_to_string(dir.join("out.jsonl")).expect("the output");
    let lines = by_id(&text);
    assert_eq!(lines.len() as u64, INPUTS, "every input once");
    for (id, line) in &lines {
        assert_eq!(line["input"], Value::from(*id));
        assert_eq!(line["output"], Value::from(id * 3), "{line}");
    }
    let stray: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(stray.is_empty(), "temporary files left: {stray:?}");
    text
}

#[test]
fn a_run_killed_again_and_again_completes_with_every_input_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("w.py"), worker()).unwrap();
    std::fs::write(dir.path().join("in.txt"), input()).unwrap();
    let mut kills = 0;
    for round in 0..40u64 {
        let mut run = resumed(dir.path(), &[]).spawn();
        // Kill points spread over a run of about 2 s; splitmix-like spread per round.
        let wait = 150 + (round.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) % 600;
        std::thread::sleep(Duration::from_millis(wait));
        if run.is_running() {
            run.signal(Signal::SIGKILL);
            let _ = run.finish();
            kills += 1;
            continue;
        }
        let output = run.finish();
        assert_eq!(output.code, Some(0), "{output}");
        break;
    }
    assert!(
        kills > 0,
        "no run was killed: the test did not test resuming"
    );
    let text = assert_complete(dir.path());
    eprintln!("completed after {kills} kills");
    // The job log has an `ok` line for every input (and more, for re-runs of inputs
    // whose result was lost with a kill).
    let log = std::fs::read_to_string(dir.path().join("log.jsonl")).unwrap();
    let ok: std::collections::BTreeSet<u64> = result_lines(&log)
        .iter()
        .filter(|entry| entry["outcome"] == "ok")
        .map(|entry| entry["task"].as_u64().unwrap())
        .collect();
    assert_eq!(ok.len() as u64, INPUTS, "{}", &log[..log.len().min(2000)]);
    assert!(!text.is_empty());
}

#[test]
fn an_interrupted_ordered_run_resumes_in_input_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("w.py"), worker()).unwrap();
    std::fs::write(dir.path().join("in.txt"), input()).unwrap();
    let run = resumed(dir.path(), &["--ordered"])
        .own_process_group()
        .spawn();
    std::thread::sleep(Duration::from_millis(700));
    run.signal(Signal::SIGINT);
    let interrupted = run.finish();
    assert_eq!(interrupted.code, Some(130), "{interrupted}");
    let log = std::fs::read_to_string(dir.path().join("log.jsonl")).unwrap();
    assert!(
        log.contains("\"outcome\":\"not_run\""),
        "the inputs not run are logged"
    );
    let partial = by_id(&std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap());
    assert!((partial.len() as u64) < INPUTS, "the run was cut short");
    let output = resumed(dir.path(), &["--ordered"]).run(0);
    assert!(
        output.stdout.contains("inputs had results already"),
        "{output}"
    );
    let text = assert_complete(dir.path());
    let ids: Vec<u64> = result_lines(&text)
        .iter()
        .map(|line| line["id"].as_u64().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "in input order"
    );
}

#[test]
fn resume_needs_an_output_file() {
    let output = Procpool::new(["run", "tasks", "--child", "true", "--resume"]).run(2);
    assert!(
        output.stderr.contains("--resume needs --output FILE"),
        "{output}"
    );
}

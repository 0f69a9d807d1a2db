//! Charging a crash to the right task (child/PROTOCOL.md, "Charging a crash"): a worker
//! that runs tasks concurrently and sends `started` gets exactly its poison tasks
//! quarantined, never a task that ran beside one; a worker that never sends `started`
//! is charged by the oldest task it had not answered, as before.

mod util;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use util::{result_lines, threaded_worker, Output, Procpool};

/// Four threads; each sends `started` as its task begins. A poison input kills the
/// whole process at once (SIGSEGV, or `os._exit(3)`), while the tasks started beside
/// it are still sleeping; innocent inputs sleep up to 1.5 ms and echo themselves. The
/// SIGSEGV goes to the poison's own thread: `os.kill(os.getpid(), ...)` may be taken
/// by another thread, and the poison's would sometimes answer before the process died.
const CONCURRENT_WORKER: &str = r#"
send({"type": "started", "id": m["id"]})
x = m["input"]
if x == "poison-segv":
    signal.pthread_kill(threading.get_ident(), signal.SIGSEGV)
if x == "poison-exit":
    os._exit(3)
time.sleep(0.0005 * (m["id"] % 4))
send({"type": "result", "id": m["id"], "output": x})
"#;

/// The JSON report of a `run tasks --json` whose results went to stdout: the last line
/// of stderr.
fn stderr_report(output: &Output) -> Value {
    let last = output.stderr.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|err| panic!("the last stderr line is the report ({err})\n{output}"))
}

/// The ids of the tasks the report lists as failed (quarantined), in order.
fn failed_ids(report: &Value, output: &Output) -> Vec<u64> {
    let mut ids: Vec<u64> = report["failures"]
        .as_array()
        .unwrap_or_else(|| panic!("report.failures is an array\n{output}"))
        .iter()
        .map(|failure| failure["id"].as_u64().expect("failure.id"))
        .collect();
    ids.sort_unstable();
    ids
}

#[test]
fn only_the_poison_tasks_of_a_concurrent_worker_are_quarantined() {
    let poison = [(7, "poison-segv"), (19, "poison-exit"), (31, "poison-segv")];
    let inputs: Vec<Value> = (0..40u64)
        .map(|i| match poison.iter().find(|(at, _)| *at == i) {
            Some((_, kind)) => json!(kind),
            None => json!(i),
        })
        .collect();
    let input: String = inputs.iter().map(|value| format!("{value}\n")).collect();
    let poison_ids: Vec<u64> = poison.iter().map(|(at, _)| *at).collect();
    let worker = threaded_worker(CONCURRENT_WORKER);
    // Several runs: which innocent tasks are in flight when a poison one strikes
    // differs from run to run, and none of them may ever be blamed.
    for run in 0..3 {
        let output = Procpool::tasks(
            &worker,
            &input,
            &["--procs", "2", "--max-restarts", "100", "--json"],
        )
        .timeout(Duration::from_secs(30))
        .run(1);
        let report = stderr_report(&output);
        let context = format!("run {run}\n{output}");
        assert_eq!(report["end"], json!("completed"), "{context}");
        assert_eq!(
            failed_ids(&report, &output),
            poison_ids,
            "exactly the poison tasks are quarantined, no innocent one\n{context}"
        );
        for failure in report["failures"].as_array().unwrap() {
            let message = failure["message"].as_str().unwrap_or_default();
            assert!(message.contains("quarantined"), "{message}\n{context}");
        }
        assert_eq!(report["tasks_failed"], json!(3), "{context}");
        assert_eq!(report["tasks_ok"], json!(37), "{context}");
        assert_eq!(report["tasks_error"], json!(0), "{context}");
        let lines = result_lines(&output.stdout);
        assert_eq!(lines.len(), 40, "one line per input\n{context}");
        for line in &lines {
            let id = line["id"].as_u64().expect("a result line has an id");
            if poison_ids.contains(&id) {
                assert!(line["error"].is_string(), "{line}\n{context}");
            } else {
                assert_eq!(line["output"], inputs[id as usize], "{line}\n{context}");
            }
        }
    }
}

#[test]
fn a_worker_without_started_is_charged_by_the_oldest_task_it_holds() {
    // One worker that never sends `started` and answers "hold" only after it has read
    // the next task: when "poison" (sent right after "hold") kills it, "hold" is the
    // oldest task not answered, and takes the blame. The fast tasks before them make
    // the pool send several tasks at once; those sent behind "poison" go back free.
    let worker = r#"import json, os, resource, sys
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
def send(message): print(json.dumps(message), flush=True)
def answer(m): send({"type": "result", "id": m["id"], "output": m["input"]})
held = None
send({"type": "ready"})
for line in sys.stdin:
    m = json.loads(line)
    if m["type"] != "task":
        break
    if m["input"] == "poison":
        os._exit(3)
    if held is not None:
        answer(held)
        held = None
    if m["input"] == "hold":
        held = m
    else:
        answer(m)
if held is not None:
    answer(held)
"#;
    let mut input: String = (0..30).map(|i| format!("{i}\n")).collect();
    input.push_str("hold\npoison\n");
    input.extend((32..40).map(|i| format!("{i}\n")));
    let output = Procpool::tasks(
        worker,
        &input,
        &["--procs", "1", "--max-restarts", "100", "--json"],
    )
    .timeout(Duration::from_secs(30))
    .run(1);
    let report = stderr_report(&output);
    assert_eq!(report["end"], json!("completed"), "{output}");
    // "hold" (30) died with three workers that "poison" (31) killed; then "poison",
    // the oldest at last, is charged three times itself.
    assert_eq!(failed_ids(&report, &output), vec![30, 31], "{output}");
    for failure in report["failures"].as_array().unwrap() {
        let crashes = failure["crashes"].as_array().expect("failure.crashes");
        assert_eq!(crashes.len(), 3, "{failure}\n{output}");
        for crash in crashes {
            assert_eq!(crash["status"], json!({"exited": 3}), "{output}");
        }
        let pids: BTreeSet<i64> = crashes
            .iter()
            .map(|crash| crash["pid"].as_i64().expect("crash.pid"))
            .collect();
        assert_eq!(pids.len(), 3, "three different workers died\n{output}");
    }
    assert_eq!(report["tasks_ok"], json!(38), "{output}");
    let lines = result_lines(&output.stdout);
    assert_eq!(lines.len(), 40, "{output}");
}

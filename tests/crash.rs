//! Crash isolation with real crashes: every K-th task segfaults, aborts, panics,
//! exits, is SIGKILLed, runs out of memory, hangs or answers with an error, and the
//! report must say exactly which tasks failed and exactly how their workers ended.
//! Also the restart cap, workers that cannot start, kills from outside, and
//! `--max-tasks-per-child`.

mod util;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use util::{assert_no_orphans, assert_none_left_in, worker_pids, Procpool};

const EVERY: u64 = 5;

fn signaled(signal: &str) -> Value {
    json!({"signaled": {"signal": signal, "core_dumped": false}})
}

/// Every pid a report names: the last process of each slot and every crashed one.
fn all_pids(report: &Value) -> Vec<i32> {
    let mut pids = worker_pids(report);
    for failure in report["failures"].as_array().unwrap() {
        for crash in failure["crashes"].as_array().unwrap() {
            pids.push(crash["pid"].as_i64().unwrap() as i32);
        }
    }
    pids
}

fn total_restarts(report: &Value) -> u64 {
    report["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["restarts"].as_u64().unwrap())
        .sum()
}

/// `procpool run crash --mode MODE --every 5 --tasks TASKS` on two workers: exit 1,
/// exactly tasks 5, 10, … failed, each after three crashes that all ended `status`,
/// (killed by procpool for `killed_by`), and the death lines on stderr say `died`.
fn every_kth_task_crashes(
    mode: &str,
    tasks: u64,
    status: Value,
    killed_by: Option<&str>,
    died: &str,
    extra: &[&str],
) {
    for start in ["spawn", "fork"] {
        let tasks_arg = tasks.to_string();
        let mut args = vec![
            "run",
            "crash",
            "--mode",
            mode,
            "--every",
            "5",
            "--tasks",
            &tasks_arg,
            "--task-ms",
            "5",
            "--procs",
            "2",
            "--start",
            start,
            "--max-restarts",
            "1000",
            "--json",
        ];
        args.extend_from_slice(extra);
        let output = Procpool::new(&args).env_remove("RUST_BACKTRACE").run(1);
        let report = output.json();
        let planned = tasks / EVERY;
        let context = format!("{mode} {start}\n{output}");
        assert_eq!(report["end"], json!("completed"), "{context}");
        assert_eq!(
            report["result"],
            json!({"ok": tasks - planned, "errors": 0, "failed": planned,
                   "planned_failures": planned, "mode": mode}),
            "{context}"
        );
        assert_eq!(report["tasks_ok"], json!(tasks - planned), "{context}");
        assert_eq!(report["tasks_failed"], json!(planned), "{context}");
        assert_eq!(report["tasks_error"], json!(0), "{context}");
        assert_eq!(report["tasks_not_run"], json!(0), "{context}");
        let failures = report["failures"].as_array().unwrap();
        let mut ids: Vec<u64> = failures.iter().map(|f| f["id"].as_u64().unwrap()).collect();
        ids.sort_unstable();
        let expected: Vec<u64> = (1..=planned).map(|k| k * EVERY - 1).collect();
        assert_eq!(ids, expected, "{context}");
        for failure in failures {
            assert_eq!(failure["attempts"], json!(3), "{context}");
            let crashes = failure["crashes"].as_array().unwrap();
            assert_eq!(crashes.len(), 3, "{context}");
            for crash in crashes {
                assert_eq!(crash["status"], status, "{context}");
                // No crash here is the OOM killer's, whatever the kernel lets us read.
                assert!(
                    crash
                        .get("oom")
                        .is_none_or(|oom| oom.get("not_oom").is_some()),
                    "{context}"
                );
                assert_eq!(
                    crash.get("killed_by_procpool"),
                    killed_by.map(|why| json!(why)).as_ref(),
                    "{context}"
                );
            }
        }
        let task = " while running task 4 (attempt 1/3)";
        assert!(
            output
                .stderr
                .lines()
                .any(|l| l.contains(died) && l.contains(task)),
            "no line with {died:?}{task:?}\n{context}"
        );
        assert!(total_restarts(&report) >= 3 * planned - 2, "{context}");
        assert_no_orphans(&all_pids(&report), Duration::ZERO);
    }
}

#[test]
fn segv_every_fifth_task() {
    let died = "killed by SIGSEGV";
    every_kth_task_crashes("segv", 20, signaled("SIGSEGV"), None, died, &[]);
}

#[test]
fn abort_every_fifth_task() {
    let died = "killed by SIGABRT";
    every_kth_task_crashes("abort", 20, signaled("SIGABRT"), None, died, &[]);
}

#[test]
fn panic_every_fifth_task() {
    let died = "exited with code 101";
    every_kth_task_crashes("panic", 20, json!({"exited": 101}), None, died, &[]);
}

#[test]
fn exit_every_fifth_task() {
    let died = "exited with code 3";
    every_kth_task_crashes("exit", 20, json!({"exited": 3}), None, died, &[]);
}

#[test]
fn sigkill_every_fifth_task_is_not_blamed_on_procpool() {
    // Then "or the OOM killer)" where the kernel says nothing, or what it was asked.
    let died = "killed by SIGKILL (not sent by procpool: another process";
    every_kth_task_crashes("kill", 20, signaled("SIGKILL"), None, died, &[]);
}

#[test]
fn out_of_memory_every_fifth_task() {
    // The allocator fails under the worker's address-space cap and aborts.
    let died = "killed by SIGABRT";
    every_kth_task_crashes("oom", 20, signaled("SIGABRT"), None, died, &[]);
}

#[test]
fn hang_every_fifth_task_is_killed_at_the_task_timeout() {
    let died = "killed by SIGKILL (sent by procpool: its task ran past the deadline)";
    let status = signaled("SIGKILL");
    let extra = ["--task-timeout", "0.4"];
    every_kth_task_crashes("hang", 10, status, Some("task_timeout"), died, &extra);
}

#[test]
fn error_every_fifth_task_costs_no_worker() {
    for start in ["spawn", "fork"] {
        let output = Procpool::new([
            "run",
            "crash",
            "--mode",
            "error",
            "--every",
            "5",
            "--tasks",
            "20",
            "--task-ms",
            "5",
            "--procs",
            "2",
            "--start",
            start,
            "--json",
        ])
        .run(1);
        let report = output.json();
        assert_eq!(
            report["result"],
            json!({"ok": 16, "errors": 4, "failed": 0, "planned_failures": 4, "mode": "error"}),
            "{output}"
        );
        assert_eq!(report["tasks_error"], json!(4), "{output}");
        assert_eq!(report["tasks_failed"], json!(0), "{output}");
        let failures: Vec<(u64, u64, String)> = report["failures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                assert_eq!(f["crashes"], json!([]), "{output}");
                let id = f["id"].as_u64().unwrap();
                (
                    id,
                    f["attempts"].as_u64().unwrap(),
                    f["message"].as_str().unwrap().into(),
                )
            })
            .collect();
        let expected: Vec<(u64, u64, String)> = [4, 9, 14, 19]
            .iter()
            .map(|&id| (id, 1, format!("task {id} fails, as asked")))
            .collect();
        assert_eq!(failures, expected, "{output}");
        assert_eq!(total_restarts(&report), 0, "{output}");
        assert!(
            output
                .stderr
                .contains("task 9 failed: task 9 fails, as asked"),
            "{output}"
        );
    }
}

/// Restarts count progress: ten poison tasks cost thirty deaths, more than the
/// default intensity of ten, but answers come in between, so the pool never gives up.
#[test]
fn crashes_between_answers_never_exhaust_the_restart_budget() {
    for (tasks, every) in [(40, 4), (100, 10)] {
        let (tasks_arg, every_arg) = (tasks.to_string(), every.to_string());
        let output = Procpool::new([
            "run", "crash", "--mode", "segv", "--every", &every_arg, "--tasks", &tasks_arg,
            "--procs", "2", "--json",
        ])
        .run(1);
        let report = output.json();
        let poison = tasks / every;
        assert_eq!(report["end"], json!("completed"), "{output}");
        assert_eq!(report["tasks_ok"], json!(tasks - poison), "{output}");
        assert_eq!(report["tasks_failed"], json!(poison), "{output}");
        assert_eq!(report["tasks_not_run"], json!(0), "{output}");
        assert!(total_restarts(&report) >= 3 * poison - 2, "{output}");
    }
}

/// Restarts with no task answered in between: past `--max-restarts` the pool gives up
/// at once, and every task is still accounted for.
#[test]
fn past_the_restart_cap_the_run_aborts_and_accounts_for_every_task() {
    let started = Instant::now();
    let run = Procpool::new([
        "run",
        "crash",
        "--mode",
        "segv",
        "--every",
        "1",
        "--tasks",
        "100",
        "--task-ms",
        "5",
        "--procs",
        "2",
        "--max-restarts",
        "3",
        "--json",
    ]);
    let dir = run.dir().to_path_buf();
    let output = run.run(1);
    let report = output.json();
    assert!(
        output
            .stderr
            .contains("procpool: error: more than 3 worker restarts within 10s with no task answered (last: worker")
            && output.stderr.contains("Raise --max-restarts"),
        "{output}"
    );
    let reason = report["end"]["aborted"].as_str().expect("end is aborted");
    assert!(
        reason.starts_with("more than 3 worker restarts"),
        "{output}"
    );
    assert_eq!(report["result"], Value::Null, "{output}");
    let count = |field: &str| report[field].as_u64().unwrap();
    assert_eq!(
        count("tasks_ok") + count("tasks_failed") + count("tasks_error") + count("tasks_not_run"),
        count("tasks_total"),
        "every task is accounted for\n{output}"
    );
    assert_eq!(count("tasks_total"), 100, "{output}");
    assert!(count("tasks_not_run") > 0, "{output}");
    assert!(total_restarts(&report) <= 3, "{output}");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "took {elapsed:?}\n{output}"
    );
    assert_no_orphans(&all_pids(&report), Duration::ZERO);
    assert_none_left_in(&dir, Duration::ZERO);
}

#[test]
fn a_worker_that_exits_at_once_stops_the_run_quickly() {
    for (child, code) in [("sh -c 'exit 3'", 3), ("false", 1)] {
        let started = Instant::now();
        let output = Procpool::new([
            "run", "noop", "--tasks", "10", "--procs", "2", "--json", "--child", child,
        ])
        .timeout(Duration::from_secs(10))
        .run(1);
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_secs(3),
            "took {elapsed:?}\n{output}"
        );
        let report = output.json();
        let reason = report["end"]["aborted"].as_str().expect("end is aborted");
        assert!(
            reason.starts_with("workers die before sending `ready`")
                && reason.contains(&format!("exited with code {code}")),
            "{output}"
        );
        assert!(
            output
                .stderr
                .contains("check the worker command and its stderr above"),
            "{output}"
        );
        assert!(total_restarts(&report) <= 4, "no restart storm\n{output}");
        let deaths = output.stderr.matches("before sending ready").count();
        assert!(deaths <= 6, "{deaths} deaths\n{output}");
        assert_eq!(report["tasks_not_run"], json!(10), "{output}");
    }
}

/// `procpool run noop --child CHILD` fails before any task with one line on stderr.
fn cannot_start(files: &[(&str, &str)], child: &str, message: &str) {
    let mut procpool = Procpool::new(["run", "noop", "--procs", "2", "--child", child]);
    for (name, contents) in files {
        procpool = procpool.write_executable(name, contents);
    }
    let started = Instant::now();
    let output = procpool.timeout(Duration::from_secs(10)).run(1);
    assert!(started.elapsed() < Duration::from_secs(3), "{output}");
    assert_eq!(output.stderr.lines().count(), 1, "one line\n{output}");
    assert!(output.stderr.contains(message), "no {message:?}\n{output}");
    assert_eq!(output.stdout, "", "{output}");
}

#[test]
fn a_missing_executable_is_one_line() {
    cannot_start(
        &[],
        "./no-such-worker",
        "procpool: error: starting the worker pool: cannot start worker 0 (`./no-such-worker`): No such file or directory",
    );
}

#[test]
fn a_script_whose_interpreter_is_missing_is_one_line_naming_it() {
    cannot_start(
        &[("worker.py", "#!/no/such/python3\nprint('never')\n")],
        "./worker.py",
        "cannot start worker 0 (`./worker.py`): No such file or directory (os error 2): ./worker.py exists, but the interpreter on its #! line, /no/such/python3, does not",
    );
}

#[test]
fn workers_killed_from_outside_again_and_again_still_count_every_prime() {
    for start in ["spawn", "fork"] {
        let run = Procpool::new([
            "run", "primes", "--limit", "2e9", "--range", "1e7", "--procs", "2", "--start", start,
            "--json",
        ])
        .spawn();
        let mut killed = Vec::new();
        for _round in 0..2 {
            // Every worker the supervisor has right now, found through /proc.
            for victim in run.new_busy_workers(2, &killed) {
                kill(Pid::from_raw(victim), Signal::SIGKILL).expect("killing a worker");
                killed.push(victim);
            }
        }
        let output = run.wait(0);
        let report = output.json();
        assert_eq!(report["result"]["count"], json!(98_222_287), "{output}");
        assert_eq!(report["end"], json!("completed"), "{output}");
        assert_eq!(report["tasks_ok"], report["tasks_total"], "{output}");
        assert_eq!(report["tasks_failed"], json!(0), "{output}");
        assert!(total_restarts(&report) >= 2, "{output}");
        for victim in &killed {
            let line = format!("(pid {victim}) killed by SIGKILL");
            assert!(output.stderr.contains(&line), "no {line:?}\n{output}");
        }
        assert_no_orphans(&killed, Duration::ZERO);
        assert_no_orphans(&worker_pids(&report), Duration::ZERO);
    }
}

#[test]
fn max_tasks_per_child_recycles_workers_without_calling_it_a_crash() {
    for start in ["spawn", "fork"] {
        let output = Procpool::new([
            "run",
            "primes",
            "--limit",
            "1e7",
            "--range",
            "1e5",
            "--procs",
            "2",
            "--start",
            start,
            "--max-tasks-per-child",
            "5",
            "--json",
        ])
        .run(0);
        let report = output.json();
        assert_eq!(report["result"]["count"], json!(664_579), "{output}");
        assert_eq!(report["tasks_ok"], json!(100), "{output}");
        assert_eq!(report["tasks_failed"], json!(0), "{output}");
        assert_eq!(report["retries"], json!(0), "{output}");
        for worker in report["workers"].as_array().unwrap() {
            assert_eq!(worker["restarts"], json!(0), "not a crash\n{output}");
            let done = worker["tasks_done"].as_u64().unwrap();
            // One process per five answers; the last may end with the run instead.
            let recycled = worker["recycled"].as_u64().unwrap();
            assert!(
                (done.div_ceil(5) - 1..=done / 5).contains(&recycled),
                "{done} tasks, {recycled} recycled\n{output}"
            );
            assert_eq!(worker["exit"], json!({"exited": 0}), "{output}");
        }
        assert!(
            !output.stderr.contains("procpool:"),
            "no death lines\n{output}"
        );
    }
}

/// A Python worker that logs its pid with every task it answers.
const PID_WORKER: &str = r#"import json, os, sys
print(json.dumps({"type": "ready"}), flush=True)
for line in sys.stdin:
    msg = json.loads(line)
    if msg["type"] == "stop":
        break
    print(f"pid {os.getpid()} answers", file=sys.stderr, flush=True)
    print(json.dumps({"type": "result", "id": msg["id"], "output": None}), flush=True)
"#;

#[test]
fn max_tasks_per_child_means_no_process_answers_more() {
    let output = Procpool::new([
        "run",
        "noop",
        "--tasks",
        "40",
        "--procs",
        "2",
        "--max-tasks-per-child",
        "5",
        "--json",
        "--child",
        "python3 worker.py",
    ])
    .write("worker.py", PID_WORKER)
    .run(0);
    let mut answers: BTreeMap<i32, u32> = BTreeMap::new();
    for line in output.stderr.lines() {
        if let Some(pid) = line.split("pid ").nth(1).and_then(|r| r.split(' ').next()) {
            *answers.entry(pid.parse().unwrap()).or_default() += 1;
        }
    }
    assert_eq!(answers.values().sum::<u32>(), 40, "{output}");
    assert!(
        answers.values().all(|&n| n <= 5),
        "answers per pid: {answers:?}\n{output}"
    );
    // Only the last process of each slot may have answered fewer.
    let short = answers.values().filter(|&&n| n < 5).count();
    assert!(short <= 2, "answers per pid: {answers:?}\n{output}");
    assert_eq!(output.json()["tasks_ok"], json!(40), "{output}");
}

#[test]
fn a_hang_without_a_task_timeout_is_refused_before_it_starts() {
    let output = Procpool::new(["run", "crash", "--mode", "hang", "--tasks", "20"]).run(2);
    assert!(
        output.stderr.contains("--mode hang needs --task-timeout"),
        "{output}"
    );
    let output = Procpool::new([
        "run",
        "crash",
        "--mode",
        "hang",
        "--tasks",
        "4",
        "--every",
        "2",
        "--task-timeout",
        "0.2",
        "--max-attempts",
        "1",
    ])
    .run(1);
    assert!(
        output
            .stdout
            .contains("2 failed (2 planned to fail, --mode hang)"),
        "{output}"
    );
}

//! Ending a run from outside while it is busy or in trouble: nothing may outlive the
//! supervisor, and the grace period means what it says. (The calm cases — SIGKILL of
//! the supervisor, SIGINT/SIGTERM drain, a second SIGINT — are in lifecycle.rs.)

mod util;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use util::{assert_no_orphans, assert_none_left_in, wait_until, worker_pids, Procpool};

/// A run where every other task segfaults its worker: slots are always dying,
/// backing off and restarting.
fn crash_storm(start: &str) -> Procpool {
    Procpool::new([
        "run",
        "crash",
        "--mode",
        "segv",
        "--every",
        "2",
        "--tasks",
        "100000",
        "--task-ms",
        "20",
        "--procs",
        "2",
        "--start",
        start,
        "--max-restarts",
        "100000",
        "--max-attempts",
        "1000",
        "--json",
    ])
}

#[test]
fn sigkill_of_the_supervisor_during_a_crash_storm_leaves_no_worker() {
    for start in ["spawn", "fork"] {
        let run = crash_storm(start).spawn();
        let dir = run.dir().to_path_buf();
        // Mid-storm: at least a few workers have come and gone.
        std::thread::sleep(Duration::from_millis(600));
        run.signal(Signal::SIGKILL);
        // Workers, including one caught between fork and PR_SET_PDEATHSIG, all go.
        assert_none_left_in(&dir, Duration::from_secs(2));
        let output = run.finish();
        assert_eq!(output.code, None, "killed by a signal\n{output}");
    }
}

#[test]
fn sigint_during_a_crash_storm_exits_130_with_every_task_accounted_for() {
    for start in ["spawn", "fork"] {
        let run = crash_storm(start).spawn();
        let dir = run.dir().to_path_buf();
        std::thread::sleep(Duration::from_millis(600));
        run.signal(Signal::SIGINT);
        let output = run.wait(130);
        let report = output.json();
        assert_eq!(report["end"], json!("interrupted"), "{output}");
        let count = |field: &str| report[field].as_u64().unwrap();
        assert!(count("tasks_ok") > 0, "{output}");
        assert_eq!(
            count("tasks_ok")
                + count("tasks_failed")
                + count("tasks_error")
                + count("tasks_not_run"),
            count("tasks_total"),
            "{output}"
        );
        assert!(output.stderr.contains("killed by SIGSEGV"), "{output}");
        assert_no_orphans(&worker_pids(&report), Duration::ZERO);
        assert_none_left_in(&dir, Duration::ZERO);
    }
}

#[test]
fn a_hung_task_is_killed_when_the_grace_after_sigint_runs_out() {
    // Every task hangs, and --task-timeout (which `--mode hang` requires) is
    // far beyond the test: only the grace can end the run.
    let run = Procpool::new([
        "run",
        "crash",
        "--mode",
        "hang",
        "--every",
        "1",
        "--tasks",
        "4",
        "--task-ms",
        "0",
        "--procs",
        "2",
        "--grace",
        "0.5",
        "--task-timeout",
        "600",
        "--json",
    ])
    .spawn();
    let dir = run.dir().to_path_buf();
    // Both workers started and took their first task.
    let supervisor = run.pid();
    assert!(wait_until(Duration::from_secs(10), || {
        util::processes()
            .iter()
            .filter(|p| p.ppid == supervisor && p.is_live())
            .count()
            == 2
    }));
    std::thread::sleep(Duration::from_millis(300));
    run.signal(Signal::SIGINT);
    let signalled = Instant::now();
    let output = run.wait(130);
    let elapsed = signalled.elapsed();
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_millis(1500),
        "ended {elapsed:?} after SIGINT with --grace 0.5\n{output}"
    );
    let report = output.json();
    assert_eq!(report["end"], json!("interrupted"), "{output}");
    assert_eq!(report["tasks_ok"], json!(0), "{output}");
    assert_eq!(report["tasks_not_run"], json!(4), "{output}");
    for worker in report["workers"].as_array().unwrap() {
        assert_eq!(
            worker["exit"],
            json!({"signaled": {"signal": "SIGKILL", "core_dumped": false}}),
            "{output}"
        );
        assert_eq!(worker["restarts"], json!(0), "{output}");
    }
    assert_none_left_in(&dir, Duration::ZERO);
}

#[test]
fn past_the_restart_cap_busy_workers_are_killed_at_once() {
    // Long tasks and a long grace: if aborting waited for tasks or for the grace, this
    // would take 30 s or more.
    let run = Procpool::new([
        "run",
        "crash",
        "--mode",
        "segv",
        "--every",
        "2",
        "--tasks",
        "40",
        "--task-ms",
        "300",
        "--procs",
        "2",
        "--max-restarts",
        "2",
        "--grace",
        "30",
        "--json",
    ]);
    let dir = run.dir().to_path_buf();
    let started = Instant::now();
    let output = run.run(1);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}\n{output}",
        started.elapsed()
    );
    let report = output.json();
    assert!(report["end"]["aborted"].is_string(), "{output}");
    assert_eq!(report["result"], Value::Null, "{output}");
    assert!(
        output.stderr.contains("more than 2 worker restarts"),
        "{output}"
    );
    assert_no_orphans(&worker_pids(&report), Duration::ZERO);
    assert_none_left_in(&dir, Duration::ZERO);
}

//! Worker lifecycle against real processes and real signals: nothing outlives a run,
//! Ctrl-C and SIGTERM drain, a second Ctrl-C kills, a killed worker is replaced and its
//! task retried, and usage mistakes exit 2 before anything starts.

mod util;

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use util::{assert_no_orphans, worker_pids, Procpool};

fn workers(report: &Value) -> &Vec<Value> {
    report["workers"].as_array().expect("report.workers")
}

#[test]
fn a_finished_run_leaves_no_process_behind() {
    for start in ["spawn", "fork"] {
        let output = Procpool::new([
            "run", "primes", "--limit", "1e7", "--procs", "4", "--start", start, "--json",
        ])
        .run(0);
        let pids = worker_pids(&output.json());
        assert_eq!(pids.len(), 4, "{output}");
        assert!(pids.iter().all(|&pid| pid > 0), "{output}");
        // Reaped before the supervisor exited: gone now, not in a second.
        assert_no_orphans(&pids, Duration::ZERO);
    }
}

#[test]
fn sigkill_of_the_supervisor_takes_every_worker_down() {
    for start in ["spawn", "fork"] {
        // Long enough to be mid-run whatever the machine: tasks of 1e10 numbers.
        let run = Procpool::new([
            "run", "primes", "--limit", "1e12", "--range", "1e10", "--procs", "3", "--start", start,
        ])
        .spawn();
        let pids = run.busy_workers(3);
        run.signal(Signal::SIGKILL);
        // PR_SET_PDEATHSIG=SIGKILL: the kernel kills them as soon as their parent dies.
        assert_no_orphans(&pids, Duration::from_secs(2));
        let output = run.finish();
        assert_eq!(output.code, None, "killed by a signal\n{output}");
    }
}

/// The first SIGINT or SIGTERM: dispatch stops, tasks in flight finish, exit 130.
fn interrupt_drains(signal: Signal) {
    // Short tasks (1e7 numbers), a long grace: every task in flight gets to finish.
    let run = Procpool::new([
        "run", "primes", "--limit", "1e11", "--range", "1e7", "--procs", "2", "--grace", "30",
        "--json",
    ])
    .spawn();
    let pids = run.busy_workers(2);
    run.signal(signal);
    let output = run.wait(130);
    let report = output.json();
    assert_eq!(report["end"], json!("interrupted"), "{output}");
    assert_eq!(report["result"], Value::Null, "{output}");
    let total = report["tasks_total"].as_u64().unwrap();
    let ok = report["tasks_ok"].as_u64().unwrap();
    let not_run = report["tasks_not_run"].as_u64().unwrap();
    assert!(ok > 0, "some tasks ran before the signal\n{output}");
    assert!(not_run > 0, "the signal came mid-run\n{output}");
    // Every task ends exactly once: what was in flight finished, the rest never ran.
    assert_eq!(ok + not_run, total, "{output}");
    assert_eq!(report["tasks_error"], json!(0), "{output}");
    assert_eq!(report["tasks_failed"], json!(0), "{output}");
    assert_eq!(report["failures"], json!([]), "{output}");
    for worker in workers(&report) {
        // Stopped with `stop` after draining, not killed.
        assert_eq!(worker["exit"], json!({"exited": 0}), "{output}");
        assert_eq!(worker["restarts"], json!(0), "{output}");
    }
    assert!(
        output
            .stderr
            .contains("interrupted; letting running tasks finish"),
        "{output}"
    );
    assert_no_orphans(&pids, Duration::ZERO);
    assert_no_orphans(&worker_pids(&report), Duration::ZERO);
}

#[test]
fn sigint_lets_tasks_in_flight_finish_and_exits_130() {
    interrupt_drains(Signal::SIGINT);
}

#[test]
fn sigterm_behaves_like_the_first_sigint() {
    interrupt_drains(Signal::SIGTERM);
}

#[test]
fn ctrl_c_at_a_terminal_reaches_the_supervisor_alone() {
    // A terminal sends SIGINT to the whole foreground process group. Workers lead
    // groups of their own, so they keep running their tasks and stop cleanly.
    let run = Procpool::new([
        "run", "primes", "--limit", "1e11", "--range", "1e7", "--procs", "2", "--grace", "30",
        "--json",
    ])
    .own_process_group()
    .spawn();
    run.busy_workers(2);
    killpg(Pid::from_raw(run.pid()), Signal::SIGINT).expect("signalling the job's group");
    let output = run.wait(130);
    let report = output.json();
    assert_eq!(report["end"], json!("interrupted"), "{output}");
    for worker in workers(&report) {
        assert_eq!(worker["exit"], json!({"exited": 0}), "{output}");
    }
    assert_no_orphans(&worker_pids(&report), Duration::ZERO);
}

#[test]
fn a_second_sigint_kills_the_workers_now() {
    // Tasks of 1e11 numbers run for minutes; the grace is longer still. Only the
    // second SIGINT can make this run end quickly.
    let run = Procpool::new([
        "run", "primes", "--limit", "1e13", "--range", "1e11", "--procs", "2", "--grace", "120",
        "--json",
    ])
    .spawn();
    let pids = run.busy_workers(2);
    run.signal(Signal::SIGINT);
    std::thread::sleep(Duration::from_millis(200));
    run.signal(Signal::SIGINT);
    let second = Instant::now();
    let output = run.wait(130);
    assert!(
        second.elapsed() < Duration::from_secs(5),
        "took {:?} after the second SIGINT\n{output}",
        second.elapsed()
    );
    let report = output.json();
    assert_eq!(report["end"], json!("interrupted"), "{output}");
    assert_eq!(report["tasks_ok"], json!(0), "{output}");
    assert_eq!(report["tasks_not_run"], report["tasks_total"], "{output}");
    for worker in workers(&report) {
        assert_eq!(
            worker["exit"],
            json!({"signaled": {"signal": "SIGKILL", "core_dumped": false}}),
            "{output}"
        );
    }
    assert!(output.stderr.contains("killing workers now"), "{output}");
    assert_no_orphans(&pids, Duration::ZERO);
}

#[test]
fn a_worker_killed_from_outside_is_replaced_and_its_tasks_retried() {
    for start in ["spawn", "fork"] {
        // 200 tasks of 1e7 numbers: the kill lands while the victim holds a task.
        let run = Procpool::new([
            "run", "primes", "--limit", "2e9", "--range", "1e7", "--procs", "2", "--start", start,
            "--json",
        ])
        .spawn();
        let victim = run.busy_workers(2)[0];
        kill(Pid::from_raw(victim), Signal::SIGKILL).expect("killing a worker");
        let output = run.wait(0);
        let report = output.json();
        assert_eq!(report["result"]["count"], json!(98_222_287), "{output}");
        assert_eq!(report["end"], json!("completed"), "{output}");
        assert_eq!(report["tasks_ok"], report["tasks_total"], "{output}");
        assert_eq!(report["tasks_failed"], json!(0), "{output}");
        assert!(report["retries"].as_u64().unwrap() >= 1, "{output}");
        let restarts: u64 = workers(&report)
            .iter()
            .map(|w| w["restarts"].as_u64().unwrap())
            .sum();
        assert_eq!(restarts, 1, "{output}");
        assert!(
            !worker_pids(&report).contains(&victim),
            "the victim's slot has a new process\n{output}"
        );
        // The exact signal, and that procpool did not send it.
        let line = format!("(pid {victim}) killed by SIGKILL");
        assert!(output.stderr.contains(&line), "no {line:?}\n{output}");
        // The built-in worker says `started`: killed between two tasks, or before it
        // read the first, it was running none, and its tasks go back uncharged.
        assert!(
            output.stderr.contains("while running task")
                || output.stderr.contains("before starting a task"),
            "{output}"
        );
        assert_no_orphans(&worker_pids(&report), Duration::ZERO);
    }
}

/// Runs `procpool args...`, expects exit 2 with `message` on stderr and nothing run.
fn usage_error(args: &[&str], message: &str) {
    let output = Procpool::new(args).timeout(Duration::from_secs(10)).run(2);
    assert!(
        output.stderr.contains(message),
        "{args:?}: no {message:?}\n{output}"
    );
    assert_eq!(output.stdout, "", "{args:?}\n{output}");
}

#[test]
fn zero_procs_is_a_usage_error() {
    usage_error(
        &["run", "noop", "--procs", "0"],
        "invalid value '0' for '--procs <PROCS>'",
    );
}

#[test]
fn an_unknown_workload_is_a_usage_error() {
    usage_error(
        &["run", "frobnicate"],
        "unrecognized subcommand 'frobnicate'",
    );
}

#[test]
fn fork_with_a_child_command_is_a_usage_error() {
    usage_error(
        &["run", "noop", "--start", "fork", "--child", "x"],
        "--start fork runs built-in workers; drop it to use --child",
    );
}

#[test]
fn a_child_command_that_does_not_exist_fails_at_once() {
    let output = Procpool::new(["run", "noop", "--child", "./no-such-worker"])
        .timeout(Duration::from_secs(10))
        .run(1);
    assert!(
        output
            .stderr
            .contains("cannot start worker 0 (`./no-such-worker`): No such file or directory"),
        "{output}"
    );
}

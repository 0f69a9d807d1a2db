//! Nothing a worker starts outlives the run: not a daemon that left the worker's
//! process group with `setsid()`, not an ordinary subprocess when the supervisor itself
//! is SIGKILLed or loses its terminal; and under memory pressure the kernel picks a
//! worker, never the supervisor. Each case is checked in `/proc`.

mod util;

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use util::{assert_none_left_in, protocol_worker, result_lines, Procpool};

/// Task body: start a daemon the classic way (fork, setsid, fork, exit), which sleeps
/// in the run's directory and writes its pid to `daemon.pid`.
const START_DAEMON: &str = r#"if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open("daemon.pid.tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename("daemon.pid.tmp", "daemon.pid")
        os.execvp("sleep", ["sleep", "300"])
    os._exit(0)
os.wait()
while not os.path.exists("daemon.pid"):
    time.sleep(0.01)
"#;

#[test]
fn a_daemon_started_by_a_worker_is_gone_when_the_run_ends() {
    let body = format!(
        "{START_DAEMON}send({{\"type\": \"result\", \"id\": m[\"id\"], \"output\": int(open(\"daemon.pid\").read())}})"
    );
    let run = Procpool::tasks(&protocol_worker(&body), "1\n", &["--procs", "1"]);
    let dir = run.dir().to_path_buf();
    let output = run.run(0);
    let daemon = result_lines(&output.stdout)[0]["output"]
        .as_i64()
        .unwrap_or_else(|| panic!("no daemon pid\n{output}")) as i32;
    // Killed and reaped before the supervisor exited: gone now, not in a second.
    assert!(
        !util::is_alive(daemon),
        "the daemon {daemon} outlived the run"
    );
    assert_none_left_in(&dir, Duration::ZERO);
}

#[test]
fn a_daemon_dies_with_the_worker_that_started_it_while_the_run_goes_on() {
    // Task "daemon" starts one and its worker then dies; task "watch", on the other
    // worker, waits for the daemon to be gone and says how long it took.
    let body = format!(
        r#"if m["input"] == "daemon":
    if m["attempt"] == 1:
{daemon}        os._exit(3)
    send({{"type": "result", "id": m["id"], "output": "retried"}})
else:
    while not os.path.exists("daemon.pid"):
        time.sleep(0.01)
    pid = open("daemon.pid").read()
    waited = 0.0
    def alive():
        try:
            return open(f"/proc/{{pid}}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False
    while alive() and waited < 20:
        time.sleep(0.05)
        waited += 0.05
    send({{"type": "result", "id": m["id"], "output": {{"gone": not alive()}}}})"#,
        daemon = START_DAEMON
            .lines()
            .map(|line| format!("        {line}\n"))
            .collect::<String>()
    );
    let run = Procpool::tasks(
        &protocol_worker(&body),
        "\"daemon\"\n\"watch\"\n",
        &["--procs", "2"],
    );
    let dir = run.dir().to_path_buf();
    let output = run.run(0);
    let lines = result_lines(&output.stdout);
    let watch = lines
        .iter()
        .find(|line| line["input"] == json!("watch"))
        .unwrap_or_else(|| panic!("no watch result\n{output}"));
    assert_eq!(watch["output"], json!({"gone": true}), "{output}");
    assert!(output.stderr.contains("exited with code 3"), "{output}");
    assert_none_left_in(&dir, Duration::ZERO);
}

/// A run whose every task starts an ordinary `sleep 300` in the worker's own process
/// group and waits for it.
fn subprocess_run() -> Procpool {
    let body = r#"subprocess.run(["sleep", "300"])
send({"type": "result", "id": m["id"], "output": 1})"#;
    let script = protocol_worker(body).replace("import json,", "import subprocess, json,");
    Procpool::tasks(&script, "1\n2\n", &["--procs", "2", "--grace", "0.5"])
}

/// Waits until both workers' `sleep` children run.
fn wait_for_sleeps(run: &util::Running) {
    let dir = run.dir().to_path_buf();
    assert!(
        util::wait_until(Duration::from_secs(20), || {
            util::live_processes_in(&dir)
                .iter()
                .filter(|p| {
                    std::fs::read_to_string(format!("/proc/{}/comm", p.pid))
                        .is_ok_and(|comm| comm.trim() == "sleep")
                })
                .count()
                == 2
        }),
        "the workers' subprocesses never started"
    );
}

#[test]
fn sigkill_of_the_supervisor_takes_the_workers_subprocesses_down() {
    let run = subprocess_run().spawn();
    wait_for_sleeps(&run);
    let dir = run.dir().to_path_buf();
    run.signal(Signal::SIGKILL);
    // PDEATHSIG takes the workers; the guardian takes their process groups.
    assert_none_left_in(&dir, Duration::from_secs(2));
    let output = run.finish();
    assert_eq!(output.code, None, "killed by a signal\n{output}");
}

#[test]
fn sighup_ends_the_run_like_sigterm_and_leaves_nothing() {
    let run = subprocess_run().spawn();
    wait_for_sleeps(&run);
    let dir = run.dir().to_path_buf();
    run.signal(Signal::SIGHUP);
    let output = run.wait(130);
    assert!(
        output
            .stderr
            .contains("interrupted; letting running tasks finish"),
        "{output}"
    );
    assert_none_left_in(&dir, Duration::ZERO);
}

fn oom_score_adj(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
        .expect("reading oom_score_adj")
        .trim()
        .to_string()
}

#[test]
fn the_oom_killer_is_pointed_at_workers_not_at_the_supervisor() {
    let own = oom_score_adj(std::process::id() as i32);
    for start in ["spawn", "fork"] {
        let run = Procpool::new([
            "run", "primes", "--limit", "1e12", "--range", "1e10", "--procs", "2", "--start", start,
        ])
        .spawn();
        for worker in run.busy_workers(2) {
            assert_eq!(oom_score_adj(worker), "1000", "{start}");
        }
        assert_eq!(
            oom_score_adj(run.pid()),
            own,
            "{start}: the supervisor keeps its own"
        );
    }
}

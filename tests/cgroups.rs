//! What cgroups give a run, where the machine lets procpool and these tests make them
//! (root, or a delegated cgroup v2 subtree; `util::cgroup` says when a test skips):
//!
//! - the pool's own cgroups: a leaf per worker, killed whole when its worker dies, so
//!   a subprocess that moved to a process group of its own dies with it; the pool's
//!   cgroup killed by the guardian when the supervisor is SIGKILLed, so a daemon that
//!   left group and session dies too; nothing left in the hierarchy after;
//! - a worker killed by the OOM killer under a memory limit is reported as such, and
//!   the pool (whose supervisor the kernel spares) goes on;
//! - a restart refused by a process limit (EAGAIN, here a pids cgroup) is retried, and
//!   the run completes once the limit allows; past the restart budget it stops, saying
//!   which limit to look at.

mod util;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use util::cgroup::{or_skip, own_v2_dir, TestCgroup};
use util::{assert_none_left_in, protocol_worker, result_lines, Procpool};

/// Whether procpool makes its cgroups on this machine: the pool's cgroup that a tiny
/// run reports.
fn pool_cgroups(test: &str) -> bool {
    let output = Procpool::new(["run", "noop", "--tasks", "1", "--procs", "1", "--json"]).run(0);
    let made = match &output.json()["cgroup"] {
        Value::String(dir) => Ok(dir.clone()),
        _ => Err("procpool made no cgroup for its pool here (not root, or no cgroup v2)".into()),
    };
    or_skip(made, test).is_some()
}

/// The pool's cgroup named in the `--json` report of a `run tasks` (on stderr, since
/// the results are on stdout).
fn pool_cgroup_of(output: &util::Output) -> PathBuf {
    let report: Value = serde_json::from_str(
        output
            .stderr
            .lines()
            .find(|line| line.starts_with('{'))
            .unwrap_or_else(|| panic!("no --json report\n{output}")),
    )
    .unwrap();
    PathBuf::from(report["cgroup"].as_str().expect("a pool cgroup"))
}

/// Waits until `pid` is gone (or a zombie), for at most 20 s.
fn gone(pid: i32) -> bool {
    util::wait_until(Duration::from_secs(20), || !util::is_alive(pid))
}

#[test]
fn each_worker_runs_in_a_leaf_of_the_pools_cgroup_which_is_gone_after_the_run() {
    if !pool_cgroups("each_worker_runs_in_a_leaf") {
        return;
    }
    let body = r#"send({"type": "result", "id": m["id"], "output": [l for l in open("/proc/self/cgroup").read().splitlines() if l.startswith("0::")][0][3:]})"#;
    let output = Procpool::tasks(
        &protocol_worker(body),
        "1\n2\n",
        &["--procs", "2", "--json"],
    )
    .run(0);
    let pool = pool_cgroup_of(&output);
    let name = pool.file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.starts_with("procpool-"), "{name}");
    assert!(!pool.exists(), "{} is left after the run", pool.display());
    for line in result_lines(&output.stdout) {
        let path = line["output"].as_str().unwrap().to_string();
        let leaf = path.rsplit('/').next().unwrap();
        let parent = path.rsplit('/').nth(1).unwrap();
        assert_eq!(parent, name, "{path}");
        assert!(leaf.starts_with('w'), "{path}");
    }

    let output = Procpool::tasks(
        &protocol_worker(body),
        "1\n",
        &["--procs", "1", "--json", "--no-cgroup"],
    )
    .run(0);
    assert!(output.stderr.contains(r#""cgroup":null"#), "{output}");
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    assert_eq!(result_lines(&output.stdout)[0]["output"], json!(own));
}

#[test]
fn a_subprocess_in_a_process_group_of_its_own_dies_with_its_worker() {
    if !pool_cgroups("a_subprocess_in_a_process_group_of_its_own") {
        return;
    }
    // Attempt 1 starts `sleep` in a new process group (same session: neither the
    // worker's group kill nor the subreaper's sweep finds it) and dies; attempt 2
    // reports whether that sleep is gone.
    let body = r#"if m["attempt"] == 1:
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        os.execvp("sleep", ["sleep", "300"])
    open("grouped.pid", "w").write(str(pid))
    time.sleep(0.2)
    os._exit(3)
send({"type": "result", "id": m["id"], "output": int(open("grouped.pid").read())})"#;
    let run = Procpool::tasks(&protocol_worker(body), "1\n", &["--procs", "1"]);
    let dir = run.dir().to_path_buf();
    let output = run.run(0);
    let grouped = result_lines(&output.stdout)[0]["output"].as_i64().unwrap() as i32;
    assert!(
        gone(grouped),
        "the sleep {grouped} outlived its worker\n{output}"
    );
    assert!(output.stderr.contains("exited with code 3"), "{output}");
    assert_none_left_in(&dir, Duration::ZERO);
}

#[test]
fn a_cgroup_a_worker_made_in_its_own_goes_with_it() {
    if !pool_cgroups("a_cgroup_a_worker_made_in_its_own") {
        return;
    }
    // Attempt 1 moves a `sleep` into a cgroup of its own below the worker's and dies;
    // attempt 2 reports the sleep's pid. The input is the cgroup2 mount point.
    let body = r#"if m["attempt"] == 1:
    own = [l for l in open("/proc/self/cgroup").read().splitlines() if l.startswith("0::")][0][3:]
    below = m["input"] + own + "/mine"
    os.mkdir(below)
    pid = os.fork()
    if pid == 0:
        os.execvp("sleep", ["sleep", "300"])
    open(below + "/cgroup.procs", "w").write(str(pid))
    open("nested.pid", "w").write(str(pid))
    os._exit(3)
send({"type": "result", "id": m["id"], "output": int(open("nested.pid").read())})"#;
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap()
        .to_string();
    let dir = own_v2_dir().unwrap().display().to_string();
    let mount = dir.strip_suffix(own.trim_end_matches('/')).unwrap_or(&dir);
    let input = format!("{}\n", json!(mount.trim_end_matches('/')));
    let run = Procpool::tasks(&protocol_worker(body), &input, &["--procs", "1", "--json"]);
    let output = run.run(0);
    let nested = result_lines(&output.stdout)[0]["output"].as_i64().unwrap() as i32;
    assert!(
        gone(nested),
        "the sleep {nested} outlived its worker\n{output}"
    );
    let pool = pool_cgroup_of(&output);
    assert!(!pool.exists(), "{} is left after the run", pool.display());
}

#[test]
fn sigkill_of_the_supervisor_takes_a_daemon_that_left_group_and_session() {
    if !pool_cgroups("sigkill_of_the_supervisor_takes_a_daemon") {
        return;
    }
    let body = r#"if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open("daemon.pid.tmp", "w").write(str(os.getpid()))
        os.rename("daemon.pid.tmp", "daemon.pid")
        os.execvp("sleep", ["sleep", "300"])
    os._exit(0)
os.wait()
time.sleep(300)"#;
    let run = Procpool::tasks(&protocol_worker(body), "1\n", &["--procs", "1"]).spawn();
    let dir = run.dir().to_path_buf();
    let pid_file = dir.join("daemon.pid");
    assert!(
        util::wait_until(Duration::from_secs(20), || pid_file.exists()),
        "the daemon never started"
    );
    let daemon: i32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    let pool = own_v2_dir()
        .expect("a cgroup v2 directory")
        .join(format!("procpool-{}-0", run.pid()));
    assert!(pool.exists(), "no pool cgroup at {}", pool.display());
    run.signal(Signal::SIGKILL);
    // PDEATHSIG takes the worker; the guardian kills the pool's cgroup, daemon and all.
    assert!(gone(daemon), "the daemon {daemon} outlived the supervisor");
    assert_none_left_in(&dir, Duration::from_secs(2));
    assert!(
        util::wait_until(Duration::from_secs(5), || !pool.exists()),
        "the guardian left {}",
        pool.display()
    );
    let output = run.finish();
    assert_eq!(output.code, None, "killed by a signal\n{output}");
}

#[test]
fn a_worker_killed_by_the_oom_killer_is_named_so_and_the_pool_goes_on() {
    let Some(memory) = or_skip(TestCgroup::memory(256 << 20), "oom_killer") else {
        return;
    };
    // Each task holds its input in MiB: 1024 cannot fit under the 256 MiB limit.
    let body = r#"held = b"x" * (m["input"] << 20)
send({"type": "result", "id": m["id"], "output": len(held) >> 20})"#;
    let output = Procpool::tasks(
        &protocol_worker(body),
        "16\n1024\n32\n",
        &["--procs", "1", "--max-attempts", "1"],
    )
    .after_shell(&memory.join_script())
    .run(1);
    let lines = result_lines(&output.stdout);
    let by_id = |id: u64| {
        lines
            .iter()
            .find(|line| line["id"] == id)
            .unwrap_or_else(|| panic!("no line for task {id}\n{output}"))
    };
    assert_eq!(by_id(0)["output"], 16, "{output}");
    assert_eq!(by_id(2)["output"], 32, "{output}");
    let error = by_id(1)["error"].as_str().unwrap_or_default();
    println!("{error}");
    assert!(
        error.contains("killed by SIGKILL from the OOM killer"),
        "{output}"
    );
    assert!(
        output.stderr.contains("1 failed"),
        "the supervisor lived to report\n{output}"
    );
}

/// `pids.events`' count of forks refused at `pids.max`.
fn refused_forks(pids: &TestCgroup) -> u64 {
    pids.read("pids.events")
        .lines()
        .find_map(|line| line.strip_prefix("max "))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0)
}

/// A `run tasks` of two workers fed through a pipe, inside `pids`, whose limit is then
/// lowered below what runs, and one worker SIGKILLed: its restart meets EAGAIN.
/// Returns the run and its stdin once a fork has been refused.
fn restart_at_the_process_limit(
    pids: &TestCgroup,
    max_restarts: &str,
) -> (util::Running, std::process::ChildStdin) {
    let body = r#"send({"type": "result", "id": m["id"], "output": m["input"] * 2})"#;
    let (run, stdin) = Procpool::new([
        "run",
        "tasks",
        "--child",
        "python3 w.py",
        "--procs",
        "2",
        "--max-restarts",
        max_restarts,
    ])
    // Each worker leaves `started.PID` once it runs Python (the `python3` on PATH may
    // be a launcher that forks on the way), so the limit meets the restart only.
    .write(
        "w.py",
        format!(
            "import os\nopen(f'started.{{os.getpid()}}', 'w').close()\n{}",
            protocol_worker(body)
        ),
    )
    .after_shell(&pids.join_script())
    .spawn_with_stdin_pipe();
    let mut workers = Vec::new();
    let started = util::wait_until(Duration::from_secs(20), || {
        workers = std::fs::read_dir(run.dir())
            .unwrap()
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                name.strip_prefix("started.")?.parse::<i32>().ok()
            })
            .collect();
        workers.len() == 2
    });
    assert!(started, "the two workers never started ({workers:?})");
    // The supervisor, its guardian and two workers; after the kill, three: no room.
    let running: u64 = pids.read("pids.current").parse().unwrap();
    pids.write("pids.max", &(running - 1).to_string()).unwrap();
    kill(Pid::from_raw(workers[0]), Signal::SIGKILL).unwrap();
    assert!(
        util::wait_until(Duration::from_secs(20), || refused_forks(pids) > 0),
        "no fork was refused ({} running, pids.max {})",
        pids.read("pids.current"),
        pids.read("pids.max")
    );
    (run, stdin)
}

#[test]
fn a_restart_refused_at_a_process_limit_is_retried_until_the_limit_allows() {
    let Some(pids) = or_skip(TestCgroup::pids(1000), "restart_refused_retried") else {
        return;
    };
    let (run, mut stdin) = restart_at_the_process_limit(&pids, "50");
    pids.write("pids.max", "max").unwrap();
    stdin.write_all(b"1\n2\n3\n4\n").unwrap();
    drop(stdin);
    let output = run.wait(0);
    let mut doubled: Vec<i64> = result_lines(&output.stdout)
        .iter()
        .map(|line| line["output"].as_i64().unwrap())
        .collect();
    doubled.sort_unstable();
    assert_eq!(doubled, [2, 4, 6, 8], "{output}");
    assert!(
        output.stderr.contains("cannot start worker")
            && output.stderr.contains("a limit on processes is reached")
            && output.stderr.contains("retrying in"),
        "{output}"
    );
}

#[test]
fn a_restart_that_a_process_limit_never_allows_stops_the_run_naming_the_limit() {
    let Some(pids) = or_skip(TestCgroup::pids(1000), "restart_never_allowed") else {
        return;
    };
    let (run, stdin) = restart_at_the_process_limit(&pids, "2");
    let output = run.wait(1);
    drop(stdin);
    assert!(
        output.stderr.contains("pids.max"),
        "the error names the limit\n{output}"
    );
    assert!(refused_forks(&pids) >= 2, "{output}");
}

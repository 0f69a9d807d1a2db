//! Many machines through Redis: nodes (separate `procpool node` processes on this
//! machine) serve a queue that `run --broker` fills. Each test uses a queue of its
//! own on the Redis named by `PROCPOOL_REDIS_URL` (`.ci/run` starts a private one);
//! without it the tests that need Redis skip, unless `PROCPOOL_REQUIRE_REDIS=1`.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

mod util;
use util::{protocol_worker, result_lines, wait_until, Procpool, Running};

/// The Redis to test against, or `None` (the test then passes, saying it skipped).
fn redis_url(test: &str) -> Option<String> {
    match std::env::var("PROCPOOL_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("PROCPOOL_REQUIRE_REDIS").as_deref() != Ok("1"),
                "{test}: Redis is required (PROCPOOL_REQUIRE_REDIS=1) but PROCPOOL_REDIS_URL is unset"
            );
            println!("SKIPPED {test}: PROCPOOL_REDIS_URL is unset");
            None
        }
    }
}

/// A queue name no other test (or earlier run) uses.
fn fresh_queue(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_nanos();
    format!("{test}-{}-{nanos}", std::process::id())
}

/// The worker the `run tasks` tests' nodes run: doubles a number after `SLEEP`
/// seconds; the input "poison" kills the node it runs on (its supervisor), as a
/// task that brings a whole machine down would.
const WORKER: &str = r#"if m["input"] == "poison":
    os.kill(os.getppid(), 9)
    time.sleep(60)
time.sleep(float(os.environ.get("SLEEP", "0")))
send({"type": "result", "id": m["id"], "output": m["input"] * 2})"#;

/// `procpool node` on `queue`, with `args` after the pool options.
fn node(url: &str, queue: &str, args: &[&str]) -> Running {
    Procpool::new(
        ["node", "--broker", url, "--queue", queue]
            .iter()
            .chain(args),
    )
    .timeout(Duration::from_secs(120))
    .spawn()
}

fn child_node(url: &str, queue: &str, sleep: &str, args: &[&str]) -> Running {
    let node = Procpool::new(
        [
            "node",
            "--broker",
            url,
            "--queue",
            queue,
            "--child",
            "python3 w.py",
        ]
        .iter()
        .chain(args),
    )
    .write("w.py", protocol_worker(WORKER))
    .env("SLEEP", sleep)
    .timeout(Duration::from_secs(120));
    node.spawn()
}

/// `run tasks` through the queue with `input` as its input lines (no --child: the
/// nodes have it).
fn submit(input: &str, args: &[&str]) -> Procpool {
    Procpool::new(["run", "tasks", "--input", "in.txt"].iter().chain(args)).write("in.txt", input)
}

/// SIGTERM drains a node: it exits 0.
fn stop(node: Running) -> util::Output {
    node.signal(Signal::SIGTERM);
    node.wait(0)
}

fn status(url: &str, queue: &str) -> Value {
    Procpool::new(["status", "--broker", url, "--queue", queue, "--json"])
        .run(0)
        .json()
}

/// Waits until at least `count` tasks of `queue` are in flight (taken by nodes).
fn wait_for_in_flight(url: &str, queue: &str, count: u64) {
    let taken = wait_until(Duration::from_secs(20), || {
        status(url, queue)["in_flight"].as_u64() >= Some(count)
    });
    assert!(
        taken,
        "{count} tasks of queue {queue} never were in flight at once"
    );
}

fn numbers(count: usize) -> String {
    (0..count).map(|i| format!("{i}\n")).collect()
}

/// Each input's output, checking that no input came back twice.
fn outputs_by_input(stdout: &str) -> Vec<(i64, i64)> {
    let mut pairs: Vec<(i64, i64)> = result_lines(stdout)
        .iter()
        .map(|line| {
            let input = line["input"].as_i64().expect("a numeric input");
            (input, line["output"].as_i64().unwrap_or(-1))
        })
        .collect();
    pairs.sort_unstable();
    pairs
}

fn doubled(count: usize) -> Vec<(i64, i64)> {
    (0..count as i64).map(|i| (i, 2 * i)).collect()
}

#[test]
fn primes_through_three_nodes_match_the_local_count_with_each_task_counted_once() {
    let Some(url) = redis_url("primes_through_three_nodes") else {
        return;
    };
    let queue = fresh_queue("primes");
    let nodes: Vec<Running> = (0..3)
        .map(|_| node(&url, &queue, &["--procs", "1"]))
        .collect();
    let local = Procpool::new(["run", "primes", "--limit", "3e7", "--procs", "2", "--json"])
        .run(0)
        .json();
    let remote = Procpool::new([
        "run", "primes", "--limit", "3e7", "--json", "--broker", &url, "--queue", &queue,
    ])
    .run(0)
    .json();
    assert_eq!(
        remote["result"]["count"], local["result"]["count"],
        "{remote}"
    );
    assert_eq!(remote["tasks_ok"], remote["tasks_total"], "{remote}");
    assert_eq!(remote["duplicates_dropped"], 0, "{remote}");
    let shown = status(&url, &queue);
    let alive = shown["nodes"]
        .as_array()
        .expect("status lists nodes")
        .iter()
        .filter(|node| node["alive"] == true)
        .count();
    assert_eq!(alive, 3, "{shown}");
    assert_eq!(shown["waiting"], 0, "{shown}");
    assert_eq!(shown["in_flight"], 0, "{shown}");
    assert_eq!(shown["workload"], "primes", "{shown}");
    // Every node drained on SIGTERM and left the queue's list of nodes.
    for node in nodes {
        stop(node);
    }
    assert_eq!(status(&url, &queue)["nodes"], serde_json::json!([]));
    // A queue runs one workload: another is refused, naming it.
    let other = Procpool::new(["run", "noop", "--broker", &url, "--queue", &queue]).run(2);
    assert!(
        other.stderr.contains("queue") && other.stderr.contains("runs workload primes"),
        "{other}"
    );
}

#[test]
fn run_tasks_streams_through_the_queue_as_it_does_locally_ordered_included() {
    let Some(url) = redis_url("run_tasks_streams") else {
        return;
    };
    let queue = fresh_queue("tasks");
    let nodes: Vec<Running> = (0..2)
        .map(|_| child_node(&url, &queue, "0", &["--procs", "2"]))
        .collect();
    let output = submit(
        &numbers(300),
        &["--ordered", "--broker", &url, "--queue", &queue],
    )
    .run(0);
    let lines = result_lines(&output.stdout);
    let inputs: Vec<i64> = lines.iter().map(|l| l["input"].as_i64().unwrap()).collect();
    assert_eq!(
        inputs,
        (0..300).collect::<Vec<_>>(),
        "in input order\n{output}"
    );
    assert_eq!(outputs_by_input(&output.stdout), doubled(300));
    for node in nodes {
        stop(node);
    }
}

#[test]
fn a_node_killed_mid_run_has_its_tasks_done_elsewhere_within_the_lease() {
    let Some(url) = redis_url("a_node_killed_mid_run") else {
        return;
    };
    let queue = fresh_queue("killed");
    let victim = child_node(&url, &queue, "0.1", &["--procs", "2", "--lease", "1"]);
    let survivor = child_node(&url, &queue, "0.1", &["--procs", "2", "--lease", "1"]);
    let run = submit(&numbers(60), &["--broker", &url, "--queue", &queue]).spawn();
    // Once the victim holds tasks, kill it outright (its workers follow by PDEATHSIG).
    wait_for_in_flight(&url, &queue, 3);
    std::thread::sleep(Duration::from_millis(300));
    let killed_at = Instant::now();
    victim.signal(Signal::SIGKILL);
    let output = run.wait(0);
    // 60 tasks of 0.1 s on 2 workers take 3 s at most once the lease (1 s) is out.
    assert!(killed_at.elapsed() < Duration::from_secs(8), "{output}");
    assert_eq!(outputs_by_input(&output.stdout), doubled(60), "{output}");
    drop(victim);
    stop(survivor);
}

#[test]
fn a_node_stopped_past_its_lease_loses_its_tasks_and_nothing_is_counted_twice() {
    let Some(url) = redis_url("a_node_stopped_past_its_lease") else {
        return;
    };
    let queue = fresh_queue("stopped");
    let sleeper = child_node(&url, &queue, "0.5", &["--procs", "2", "--lease", "1"]);
    let wait_for_held = wait_until(Duration::from_secs(20), || {
        let shown = status(&url, &queue);
        shown["nodes"]
            .as_array()
            .is_some_and(|nodes| !nodes.is_empty())
    });
    assert!(wait_for_held, "the node never showed up");
    let run = submit(
        &numbers(20),
        &["--broker", &url, "--queue", &queue, "--json"],
    )
    .spawn();
    wait_for_in_flight(&url, &queue, 1);
    // Frozen past its lease: another node takes its tasks over; thawed, its late
    // ends are stale and dropped.
    sleeper.signal(Signal::SIGSTOP);
    let helper = child_node(&url, &queue, "0", &["--procs", "2", "--lease", "1"]);
    std::thread::sleep(Duration::from_secs(3));
    sleeper.signal(Signal::SIGCONT);
    let output = run.wait(0);
    assert_eq!(outputs_by_input(&output.stdout), doubled(20), "{output}");
    let report: Value = output
        .stderr
        .lines()
        .find_map(|line| serde_json::from_str(line).ok())
        .expect("the --json report on stderr");
    assert_eq!(report["tasks_ok"], 20, "{report}");
    let sleeper = stop(sleeper);
    assert!(
        sleeper.stderr.contains("lost the lease") || sleeper.stderr.contains("dropped"),
        "the thawed node noticed it lost its tasks\n{sleeper}"
    );
    stop(helper);
}

#[test]
fn a_poison_task_that_kills_its_nodes_is_dead_lettered_and_the_run_goes_on() {
    let Some(url) = redis_url("a_poison_task") else {
        return;
    };
    let queue = fresh_queue("poison");
    let options = ["--procs", "1", "--lease", "1", "--max-attempts", "2"];
    let mut nodes: Vec<Running> = (0..3)
        .map(|_| child_node(&url, &queue, "0", &options))
        .collect();
    let mut input = numbers(10);
    input.push_str("\"poison\"\n");
    let output = submit(&input, &["--broker", &url, "--queue", &queue])
        .timeout(Duration::from_secs(60))
        .run(1);
    assert!(
        output.stderr.contains("dead-lettered after 2 deliveries"),
        "{output}"
    );
    assert!(output.stdout.contains("dead-lettered"), "{output}");
    assert_eq!(status(&url, &queue)["dead_lettered"], 1);
    // It killed each node that ran it (two, or one when a node slowed past its lease
    // lost the task before starting it); a node still serving dead-lettered it.
    let survivors: Vec<Running> = nodes
        .drain(..)
        .filter_map(|mut n| n.is_running().then_some(n))
        .collect();
    assert!(
        (1..=2).contains(&survivors.len()),
        "{} nodes alive",
        survivors.len()
    );
    for node in survivors {
        stop(node);
    }
}

#[test]
fn ctrl_c_on_the_submitter_withdraws_its_waiting_tasks() {
    let Some(url) = redis_url("ctrl_c_on_the_submitter") else {
        return;
    };
    let queue = fresh_queue("interrupted");
    let slow = child_node(&url, &queue, "0.2", &["--procs", "1"]);
    let run = submit(&numbers(200), &["--broker", &url, "--queue", &queue]).spawn();
    wait_for_in_flight(&url, &queue, 1);
    run.signal(Signal::SIGINT);
    let output = run.wait(130);
    assert!(output.stderr.contains("not run"), "{output}");
    // Only what the node held is left, and it goes once finished.
    let drained = wait_until(Duration::from_secs(10), || {
        let shown = status(&url, &queue);
        shown["waiting"] == 0 && shown["in_flight"] == 0
    });
    assert!(drained, "{}", status(&url, &queue));
    stop(slow);
}

#[test]
fn a_node_drains_on_sigterm_finishing_what_it_holds() {
    let Some(url) = redis_url("a_node_drains_on_sigterm") else {
        return;
    };
    let queue = fresh_queue("drain");
    let node = child_node(&url, &queue, "1", &["--procs", "2", "--prefetch", "1"]);
    let run = submit(&numbers(4), &["--broker", &url, "--queue", &queue]).spawn();
    wait_for_in_flight(&url, &queue, 2);
    let drained = stop(node);
    assert!(drained.stderr.contains("draining"), "{drained}");
    // Its two tasks ended and were acknowledged; a new node does the other two.
    let fresh = child_node(&url, &queue, "0", &["--procs", "2"]);
    let output = run.wait(0);
    assert_eq!(outputs_by_input(&output.stdout), doubled(4), "{output}");
    stop(fresh);
}

#[test]
fn broker_mistakes_are_usage_errors_with_what_to_do() {
    // No Redis needed: each is refused before or at connecting.
    let matmul = Procpool::new([
        "run",
        "matmul",
        "--n",
        "64",
        "--broker",
        "redis://127.0.0.1:1",
        "--queue",
        "q",
    ])
    .run(2);
    assert!(
        matmul.stderr.contains("cannot use --broker") && matmul.stderr.contains("shared memory"),
        "{matmul}"
    );
    let unreachable = Procpool::new([
        "run",
        "primes",
        "--broker",
        "redis://:secret@127.0.0.1:1",
        "--queue",
        "q",
    ])
    .run(2);
    assert!(
        unreachable
            .stderr
            .contains("cannot reach Redis at redis://:***@127.0.0.1:1"),
        "{unreachable}"
    );
    assert!(!unreachable.stderr.contains("secret"), "{unreachable}");
    let no_queue = Procpool::new(["run", "primes", "--broker", "redis://127.0.0.1:1"]).run(2);
    assert!(
        no_queue.stderr.contains("--broker needs --queue"),
        "{no_queue}"
    );
    let bad_queue =
        Procpool::new(["node", "--broker", "redis://127.0.0.1:1", "--queue", "a b"]).run(2);
    assert!(
        bad_queue.stderr.contains("is not a queue name"),
        "{bad_queue}"
    );
    let no_broker = Procpool::new(["node"]).env_remove("PROCPOOL_BROKER").run(2);
    assert!(no_broker.stderr.contains("needs --broker"), "{no_broker}");
    // PROCPOOL_BROKER is the URL for --queue; alone, it leaves a run local.
    let unreachable = "redis://127.0.0.1:1";
    Procpool::new(["run", "noop", "--tasks", "10"])
        .env("PROCPOOL_BROKER", unreachable)
        .run(0);
    let via_env = Procpool::new(["run", "noop", "--queue", "q"])
        .env("PROCPOOL_BROKER", unreachable)
        .run(2);
    assert!(
        via_env
            .stderr
            .contains("cannot reach Redis at redis://127.0.0.1:1"),
        "{via_env}"
    );
}

/// A Redis of the test's own, for tests that stop it: on a free loopback port,
/// killed when dropped.
struct PrivateRedis {
    server: Child,
    port: u16,
    dir: tempfile::TempDir,
    aof: bool,
}

impl PrivateRedis {
    /// `None` (the test skips) when there is no `redis-server`, unless Redis is
    /// required.
    fn start(test: &str, aof: bool) -> Option<PrivateRedis> {
        if !redis_server_available(test) {
            return None;
        }
        let port = free_port();
        let dir = tempfile::tempdir().expect("a temp dir");
        let server = spawn_redis(dir.path(), port, aof);
        let redis = PrivateRedis {
            server,
            port,
            dir,
            aof,
        };
        redis.wait_until_up();
        Some(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn wait_until_up(&self) {
        let up = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
        assert!(up, "redis-server on port {} never came up", self.port);
    }

    /// Kills the server outright (SIGKILL: no shutdown save).
    fn kill(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }

    /// Starts it again on the same port and data directory.
    fn restart(&mut self) {
        self.server = spawn_redis(self.dir.path(), self.port, self.aof);
        self.wait_until_up();
    }

    /// The server's peak memory, in bytes.
    fn peak_memory(&self) -> u64 {
        let info = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "info", "memory"])
            .output()
            .expect("running redis-cli");
        String::from_utf8_lossy(&info.stdout)
            .lines()
            .find_map(|line| line.strip_prefix("used_memory_peak:"))
            .and_then(|peak| peak.trim().parse().ok())
            .expect("used_memory_peak in INFO")
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether `redis-server` is on PATH; when not, the test skips unless Redis is
/// required.
fn redis_server_available(test: &str) -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        assert!(
            std::env::var("PROCPOOL_REQUIRE_REDIS").as_deref() != Ok("1"),
            "{test}: Redis is required (PROCPOOL_REQUIRE_REDIS=1) but redis-server is not on PATH"
        );
        println!("SKIPPED {test}: no redis-server on PATH");
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

fn spawn_redis(dir: &Path, port: u16, aof: bool) -> Child {
    let appendonly = if aof { "yes" } else { "no" };
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", appendonly, "--appendfsync", "always"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("starting redis-server")
}

/// A run of 100 tasks on one node through a private Redis (with its append-only log
/// or without) that is killed and started again once tasks are in flight. `None` when
/// the test skips; else the run's output and the node's once SIGTERM drained it.
fn run_across_a_redis_restart(test: &str, aof: bool) -> Option<(util::Output, util::Output)> {
    let mut redis = PrivateRedis::start(test, aof)?;
    let url = redis.url();
    let queue = "restarted";
    let node = child_node(&url, queue, "0.05", &["--procs", "2", "--lease", "1"]);
    let run = submit(&numbers(100), &["--broker", &url, "--queue", queue]).spawn();
    wait_for_in_flight(&url, queue, 1);
    redis.kill();
    std::thread::sleep(Duration::from_secs(1));
    redis.restart();
    let output = run.wait(0);
    assert_eq!(outputs_by_input(&output.stdout), doubled(100), "{output}");
    Some((output, stop(node)))
}

#[test]
fn a_redis_restarted_mid_run_with_its_log_loses_nothing() {
    let Some((output, _)) = run_across_a_redis_restart("a_redis_restarted_mid_run", true) else {
        return;
    };
    assert!(output.stderr.contains("lost Redis"), "{output}");
    assert!(output.stderr.contains("is back"), "{output}");
}

#[test]
fn a_redis_gone_for_good_fails_the_run_and_the_nodes_with_a_clear_message() {
    let Some(mut redis) = PrivateRedis::start("a_redis_gone_for_good", false) else {
        return;
    };
    let url = redis.url();
    let queue = "gone";
    let node = child_node(
        &url,
        queue,
        "0.1",
        &["--procs", "1", "--broker-timeout", "2"],
    );
    let run = submit(
        &numbers(100),
        &["--broker", &url, "--queue", queue, "--broker-timeout", "2"],
    )
    .spawn();
    wait_for_in_flight(&url, queue, 1);
    redis.kill();
    let output = run.wait(1);
    assert!(
        output.stderr.contains("unreachable for 2s") && output.stderr.contains("--broker-timeout"),
        "{output}"
    );
    let node = node.wait(1);
    assert!(node.stderr.contains("--broker-timeout"), "{node}");
}

#[test]
fn a_million_tiny_tasks_pass_through_a_bounded_redis() {
    let Some(redis) = PrivateRedis::start("a_million_tiny_tasks", false) else {
        return;
    };
    let url = redis.url();
    let node = node(&url, "million", &["--procs", "2"]);
    let output = Procpool::new([
        "run", "noop", "--tasks", "1000000", "--json", "--broker", &url, "--queue", "million",
    ])
    .timeout(Duration::from_secs(300))
    .run(0);
    let report = output.json();
    assert_eq!(report["tasks_ok"], 1_000_000, "{report}");
    // At most --max-pending (4096) tasks and the unread ends are in Redis at a time:
    // a few MB, where the whole input would take hundreds.
    let peak = redis.peak_memory();
    assert!(peak < 32 << 20, "Redis peaked at {peak} bytes");
    stop(node);
}

#[test]
fn a_submitter_killed_outright_resumes_with_each_input_once() {
    let Some(url) = redis_url("a_submitter_killed_outright_resumes") else {
        return;
    };
    let queue = fresh_queue("resumed");
    let node = child_node(&url, &queue, "0.01", &["--procs", "2"]);
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("in.txt"), numbers(300)).expect("writing the input");
    let args = [
        "--broker",
        &url,
        "--queue",
        &queue,
        "--output",
        "out.jsonl",
        "--resume",
    ];
    let written = || {
        std::fs::read_to_string(dir.path().join("out.jsonl")).map_or(0, |text| text.lines().count())
    };
    // Killed twice at different points, then left to finish.
    for at_least in [50, 150] {
        let run = submit("", &args).in_dir(dir.path()).spawn();
        assert!(wait_until(Duration::from_secs(30), || written() >= at_least));
        run.signal(Signal::SIGKILL);
        drop(run);
    }
    let output = submit("", &args).in_dir(dir.path()).run(0);
    assert!(output.stdout.contains("had results already"), "{output}");
    let text = std::fs::read_to_string(dir.path().join("out.jsonl")).expect("the output");
    assert_eq!(outputs_by_input(&text), doubled(300), "{output}");
    stop(node);
}

/// Makes a CA and a certificate for 127.0.0.1 signed by it, in `dir`, with the
/// openssl command: `None` if there is none (the test skips unless Redis is required).
fn test_certificates(test: &str, dir: &Path) -> Option<()> {
    let openssl = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if !openssl(&["version"]) {
        assert!(
            std::env::var("PROCPOOL_REQUIRE_REDIS").as_deref() != Ok("1"),
            "{test}: the TLS test needs the openssl command"
        );
        println!("SKIPPED {test}: no openssl command");
        return None;
    }
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").expect("writing");
    let made = openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=procpool test CA",
    ]) && openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]) && openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "1",
        "-extfile",
        "server.ext",
    ]);
    assert!(made, "openssl could not make the test certificates");
    Some(())
}

#[test]
fn rediss_runs_through_tls_trusting_the_given_ca_and_refuses_an_unknown_one() {
    let test = "rediss_runs_through_tls";
    let dir = tempfile::tempdir().expect("a temp dir");
    if !redis_server_available(test) || test_certificates(test, dir.path()).is_none() {
        return;
    }
    let port = free_port();
    let mut server = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            "server.crt",
            "--tls-key-file",
            "server.key",
        ])
        .args([
            "--tls-ca-cert-file",
            "ca.crt",
            "--tls-auth-clients",
            "no",
            "--save",
            "",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("starting redis-server with TLS");
    let up = wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "redis-server with TLS never came up");
    let url = format!("rediss://127.0.0.1:{port}/0");
    let ca = dir.path().join("ca.crt");
    let ca = ca.to_str().expect("a UTF-8 path");
    let node = node(&url, "tls", &["--procs", "2", "--broker-ca", ca]);
    let remote = Procpool::new([
        "run",
        "primes",
        "--limit",
        "1e7",
        "--json",
        "--broker",
        &url,
        "--queue",
        "tls",
        "--broker-ca",
        ca,
    ])
    .run(0)
    .json();
    assert_eq!(remote["result"]["count"], 664_579, "{remote}");
    // The system's roots do not know the test CA: refused, saying why.
    let untrusted = Procpool::new(["status", "--broker", &url, "--queue", "tls"]).run(2);
    assert!(untrusted.stderr.contains("certificate"), "{untrusted}");
    stop(node);
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn a_redis_restarted_without_its_data_gets_the_unfinished_tasks_again() {
    let test = "a_redis_restarted_without_its_data";
    let Some((output, node)) = run_across_a_redis_restart(test, false) else {
        return;
    };
    assert!(
        output.stderr.contains("Redis lost this run's state"),
        "{output}"
    );
    assert!(node.stderr.contains("making it again"), "{node}");
}

//! `procpool serve` end to end: a test plays the client on the control channel (the
//! serve's stdin and stdout), with a Python worker that can crash, hang or sleep on
//! request, and checks that every submission ends exactly once, as the contract in
//! child/PROTOCOL.md says.

mod util;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use util::is_alive;

/// A worker that echoes its input, except: `"die"` kills the worker, `"hang"` starts a
/// `sleep` child (its pid logged) and waits on it, `{"sleep": s}` sleeps, and
/// `{"write": i}` stores `i + 0.5` at index `i` of the shared array `a`.
const WORKER: &str = r#"
import json, mmap, os, signal, struct, subprocess, sys, time
def send(message): print(json.dumps(message), flush=True)
def array_view():
    spec = json.loads(os.environ["PROCPOOL_ARRAYS"])["a"]
    fd = os.open(spec["path"], os.O_RDWR)
    view = mmap.mmap(fd, 0)
    header_len = struct.unpack_from("<H", view, 8)[0]
    return view, 10 + header_len
send({"type": "ready"})
for line in sys.stdin:
    message = json.loads(line)
    if message["type"] == "stop":
        break
    if message["type"] != "task":
        continue
    x = message["input"]
    if x == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if x == "hang":
        child = subprocess.Popen(["sleep", "300"])
        print(f"sleep {child.pid}", file=sys.stderr, flush=True)
        child.wait()
    if isinstance(x, dict) and "sleep" in x:
        print(f"sleeping {os.getpid()}", file=sys.stderr, flush=True)
        time.sleep(x["sleep"])
    if isinstance(x, dict) and "write" in x:
        view, data = array_view()
        struct.pack_into("<d", view, data + 8 * x["write"], x["write"] + 0.5)
    send({"type": "result", "id": message["id"], "output": x})
"#;

/// How long a test waits for one message before calling it a hang.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// One serve process and the test's end of its channel.
struct Client {
    serve: Child,
    requests: Option<ChildStdin>,
    messages: Receiver<Value>,
    /// Every message received so far, in order.
    seen: Vec<Value>,
    _dir: tempfile::TempDir,
}

impl Client {
    /// `procpool serve --child "python3 w.py" ARGS` in a fresh directory.
    fn start(args: &[&str]) -> Client {
        Client::start_in_shell("", args)
    }

    /// As [`start`](Client::start), after `shell` (redirections that open descriptors
    /// serve inherits, say) in the `sh` that execs serve.
    fn start_in_shell(shell: &str, args: &[&str]) -> Client {
        let dir = tempfile::Builder::new()
            .prefix("procpool-serve-")
            .tempdir()
            .expect("a temp dir");
        std::fs::write(dir.path().join("w.py"), WORKER).expect("writing the worker");
        let mut serve = Command::new("sh")
            .arg("-c")
            .arg(format!("{shell}\nexec \"$0\" serve \"$@\""))
            .arg(env!("CARGO_BIN_EXE_procpool"))
            .args(["--child", "python3 w.py"])
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting procpool serve");
        let stdout = serve.stdout.take().expect("piped");
        let (sender, messages) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let line = line.expect("serve's stdout is UTF-8");
                let message = serde_json::from_str(&line).unwrap_or_else(|err| {
                    panic!("serve wrote a line that is not JSON ({err}): {line}")
                });
                if sender.send(message).is_err() {
                    break;
                }
            }
        });
        let mut client = Client {
            requests: serve.stdin.take(),
            serve,
            messages,
            seen: Vec::new(),
            _dir: dir,
        };
        let hello = client.expect("hello");
        assert_eq!(hello["version"], env!("CARGO_PKG_VERSION"));
        client
    }

    fn send(&mut self, request: Value) {
        let requests = self.requests.as_mut().expect("the channel is open");
        writeln!(requests, "{request}").expect("writing a request");
        requests.flush().expect("flushing a request");
    }

    fn submit(&mut self, id: u64, input: Value) {
        self.send(json!({"type": "submit", "id": id, "input": input}));
    }

    /// The next message, whatever it is; panics on a hang or a closed channel.
    fn next(&mut self) -> Value {
        let message = match self.messages.recv_timeout(MESSAGE_TIMEOUT) {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) => {
                panic!("serve said nothing more; so far: {:#?}", self.seen)
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("serve closed the channel; so far: {:#?}", self.seen)
            }
        };
        self.seen.push(message.clone());
        message
    }

    /// Reads up to the next message of type `kind`, and returns it.
    fn expect(&mut self, kind: &str) -> Value {
        loop {
            let message = self.next();
            if message["type"] == kind {
                return message;
            }
        }
    }

    /// Reads up to the next worker log line that starts with `prefix`; returns the rest.
    fn log_after(&mut self, prefix: &str) -> String {
        loop {
            let message = self.expect("log");
            if let Some(rest) = message["line"]
                .as_str()
                .and_then(|l| l.strip_prefix(prefix))
            {
                return rest.to_string();
            }
        }
    }

    /// Reads to `bye` and waits for serve to exit: its report and exit status.
    fn finish(mut self) -> (Value, ExitStatus, Vec<Value>) {
        let bye = self.expect("bye");
        let status = self.serve.wait().expect("waiting for serve");
        (bye["report"].clone(), status, self.seen)
    }
}

/// Each client id's ends, by id: every submission must end exactly once.
fn ends(messages: &[Value]) -> HashMap<u64, Vec<Value>> {
    let mut ends: HashMap<u64, Vec<Value>> = HashMap::new();
    for message in messages {
        let kind = message["type"].as_str().unwrap_or_default();
        if ["result", "error", "failed", "cancelled", "not_run"].contains(&kind) {
            let id = message["id"].as_u64().expect("an end names its id");
            ends.entry(id).or_default().push(message.clone());
        }
    }
    ends
}

fn only_end(ends: &HashMap<u64, Vec<Value>>, id: u64) -> &Value {
    match ends.get(&id).map(Vec::as_slice) {
        Some([end]) => end,
        other => panic!("task {id} must end exactly once, got {other:?}"),
    }
}

#[test]
fn results_come_back_under_the_clients_ids_and_shutdown_says_bye() {
    let mut client = Client::start(&["--procs", "2"]);
    client.submit(10, json!({"x": 1}));
    client.submit(20, json!([1, 2, 3]));
    client.send(json!({"type": "submit", "id": 30, "input": 1, "timeout_s": -1}));
    client.send(json!({"type": "submit", "id": 40, "input": 1, "max_attempts": 0}));
    client.submit(10, json!("again"));
    client.send(json!({"type": "shutdown"}));
    client.submit(50, json!("late"));
    let (report, status, seen) = client.finish();
    assert!(status.success(), "{status}");
    let ends = ends(&seen);
    assert_eq!(only_end(&ends, 10)["output"], json!({"x": 1}));
    assert_eq!(only_end(&ends, 20)["output"], json!([1, 2, 3]));
    let bad_timeout = only_end(&ends, 30);
    assert_eq!(bad_timeout["type"], "error");
    assert!(bad_timeout["message"]
        .as_str()
        .unwrap()
        .contains("timeout_s"));
    assert_eq!(only_end(&ends, 40)["type"], "error");
    assert_eq!(only_end(&ends, 50)["type"], "not_run");
    assert!(
        seen.iter().any(|m| m["type"] == "warning"
            && m["message"].as_str().unwrap().contains("already submitted")),
        "a second submit of a live id is refused: {seen:#?}"
    );
    assert_eq!(report["tasks_ok"], 2);
}

#[test]
fn a_crashing_task_fails_alone_after_its_attempts_with_each_crash() {
    let mut client = Client::start(&["--procs", "2", "--max-attempts", "3"]);
    client.send(json!({"type": "submit", "id": 1, "input": "die", "max_attempts": 2}));
    for id in 2..8 {
        client.submit(id, json!(id));
    }
    client.send(json!({"type": "shutdown"}));
    let (report, status, seen) = client.finish();
    assert!(status.success(), "{status}");
    let ends = ends(&seen);
    let failed = only_end(&ends, 1);
    assert_eq!(failed["type"], "failed");
    assert_eq!(failed["attempts"], 2, "its own limit, not the pool's 3");
    assert_eq!(failed["timed_out"], false);
    let crashes = failed["crashes"].as_array().unwrap();
    assert_eq!(crashes.len(), 2);
    assert_eq!(crashes[0]["status"]["signaled"]["signal"], "SIGKILL");
    for id in 2..8 {
        assert_eq!(only_end(&ends, id)["output"], json!(id), "{:?}", ends[&id]);
    }
    let deaths = seen.iter().filter(|m| m["type"] == "worker_died").count();
    assert_eq!(deaths, 2, "each death is told: {seen:#?}");
    assert_eq!(report["tasks_failed"], 1);
}

#[test]
fn a_task_past_its_own_timeout_fails_timed_out_and_its_child_dies_too() {
    let mut client = Client::start(&["--procs", "1"]);
    client.send(json!({
        "type": "submit", "id": 7, "input": "hang", "timeout_s": 0.5, "max_attempts": 1,
    }));
    client.submit(8, json!("after"));
    let sleep: i32 = client.log_after("sleep ").parse().expect("a pid");
    let failed = client.expect("failed");
    assert_eq!(
        (failed["id"].as_u64(), failed["timed_out"].as_bool()),
        (Some(7), Some(true))
    );
    assert_eq!(
        failed["attempts"], 1,
        "a timed-out task of one attempt is not retried"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while is_alive(sleep) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !is_alive(sleep),
        "the worker's sleep child outlived the timeout"
    );
    client.send(json!({"type": "shutdown"}));
    let (_, status, seen) = client.finish();
    assert!(status.success());
    assert_eq!(only_end(&ends(&seen), 8)["output"], "after");
}

#[test]
fn a_waiting_task_can_be_cancelled_and_a_running_one_runs_on() {
    let mut client = Client::start(&["--procs", "1", "--prefetch", "1"]);
    client.submit(1, json!({"sleep": 0.5}));
    client.submit(2, json!(2));
    client.submit(3, json!(3));
    client.log_after("sleeping ");
    client.send(json!({"type": "cancel", "id": 3}));
    client.send(json!({"type": "cancel", "id": 1}));
    client.send(json!({"type": "cancel", "id": 99}));
    client.send(json!({"type": "shutdown"}));
    let (report, status, seen) = client.finish();
    assert!(status.success());
    let ends = ends(&seen);
    assert_eq!(only_end(&ends, 3)["type"], "cancelled");
    assert_eq!(only_end(&ends, 1)["type"], "result", "it was running");
    assert_eq!(only_end(&ends, 2)["type"], "result");
    assert!(!ends.contains_key(&99));
    assert_eq!(report["tasks_not_run"], 1);
}

#[test]
fn shutdown_with_cancel_futures_runs_only_what_workers_hold() {
    let mut client = Client::start(&["--procs", "1", "--prefetch", "1"]);
    client.submit(1, json!({"sleep": 0.3}));
    for id in 2..6 {
        client.submit(id, json!(id));
    }
    client.log_after("sleeping ");
    client.send(json!({"type": "shutdown", "cancel_futures": true}));
    let (_, status, seen) = client.finish();
    assert!(status.success());
    let ends = ends(&seen);
    assert_eq!(only_end(&ends, 1)["type"], "result");
    for id in 2..6 {
        assert_eq!(only_end(&ends, id)["type"], "cancelled", "task {id}");
    }
}

#[test]
fn an_interrupt_lets_running_tasks_end_within_the_grace_and_ends_the_rest_not_run() {
    let mut client = Client::start(&["--procs", "1", "--prefetch", "1", "--grace", "0.3"]);
    client.submit(1, json!({"sleep": 30}));
    client.submit(2, json!(2));
    let worker: i32 = client.log_after("sleeping ").parse().expect("a pid");
    let sent = Instant::now();
    client.send(json!({"type": "interrupt"}));
    assert_eq!(client.expect("interrupted")["again"], false);
    let (report, status, seen) = client.finish();
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "the grace is 0.3 s"
    );
    assert_eq!(status.code(), Some(130));
    assert_eq!(report["end"], "interrupted");
    let ends = ends(&seen);
    assert_eq!(only_end(&ends, 1)["type"], "not_run");
    assert_eq!(only_end(&ends, 2)["type"], "not_run");
    assert!(
        !is_alive(worker),
        "the sleeping worker was killed after the grace"
    );
}

#[test]
fn the_channel_is_heard_during_the_grace_a_second_interrupt_or_eof_ends_it_now() {
    for second in ["interrupt", "eof"] {
        let mut client = Client::start(&["--procs", "1", "--grace", "60"]);
        client.submit(1, json!({"sleep": 60}));
        let worker: i32 = client.log_after("sleeping ").parse().expect("a pid");
        client.send(json!({"type": "interrupt"}));
        assert_eq!(client.expect("interrupted")["again"], false);
        let sent = Instant::now();
        if second == "interrupt" {
            client.send(json!({"type": "interrupt"}));
            assert_eq!(client.expect("interrupted")["again"], true);
            let (_, status, _) = client.finish();
            assert_eq!(status.code(), Some(130));
        } else {
            drop(client.requests.take());
            let status = client.serve.wait().expect("waiting for serve");
            assert_eq!(status.code(), Some(1));
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "the second {second} waited for the 60 s grace"
        );
        // Killed at once; gone as soon as the kernel has torn it down.
        assert!(
            util::wait_until(Duration::from_secs(1), || !is_alive(worker)),
            "the worker outlived the second {second}"
        );
    }
}

#[test]
fn a_closed_channel_kills_every_worker_and_serve_at_once() {
    let mut client = Client::start(&["--procs", "2", "--prefetch", "1"]);
    client.submit(1, json!({"sleep": 60}));
    client.submit(2, json!({"sleep": 60}));
    let workers: Vec<i32> = (0..2)
        .map(|_| client.log_after("sleeping ").parse().expect("a pid"))
        .collect();
    let serve = client.serve.id() as i32;
    let closed = Instant::now();
    drop(client.requests.take());
    let status = client.serve.wait().expect("waiting for serve");
    let serve_gone = closed.elapsed();
    let deadline = Instant::now() + Duration::from_secs(1);
    while workers.iter().any(|&pid| is_alive(pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let all_gone = closed.elapsed();
    eprintln!("serve {serve} exited {serve_gone:?} after EOF; workers gone after {all_gone:?}");
    assert!(!status.success(), "the client vanished: not a clean end");
    for pid in workers {
        assert!(!is_alive(pid), "worker {pid} outlived its client");
    }
    // The target; measured here about 6 ms (the sweep kills synchronously).
    assert!(all_gone < Duration::from_millis(100), "{all_gone:?}");
}

#[test]
fn an_inherited_npy_memfd_is_shared_with_every_worker() {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};
    use std::os::fd::AsRawFd;
    // As the Python package makes one: a sealed memfd holding a whole .npy image.
    let memfd = memfd_create(
        "procpool-test-array",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .expect("a memfd");
    let path = std::path::PathBuf::from(format!("/proc/self/fd/{}", memfd.as_raw_fd()));
    procpool_shm::write_npy::<f64>(&path, &[4], &[0.0; 4]).expect("writing the .npy image");
    fcntl(&memfd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK)).expect("sealing it");
    // The shell reopens it as descriptor 5 (the same memory) and execs serve.
    let shell = format!(
        "exec 5<>/proc/{}/fd/{}",
        std::process::id(),
        memfd.as_raw_fd()
    );
    let mut client = Client::start_in_shell(&shell, &["--procs", "2", "--array", "a=5"]);
    for index in 0..4 {
        client.submit(index, json!({"write": index}));
    }
    client.send(json!({"type": "shutdown"}));
    let (report, status, _) = client.finish();
    assert!(status.success());
    assert_eq!(report["tasks_ok"], 4);
    let (_, values) = procpool_shm::read_npy_f64(&path).expect("reading the array back");
    assert_eq!(values, [0.5, 1.5, 2.5, 3.5]);
}

#[test]
fn serve_refuses_a_bad_array_or_no_worker_with_a_usage_error() {
    let not_open = util::Procpool::new(["serve", "--child", "true", "--array", "a=9"]).run(2);
    assert!(
        not_open.stderr.contains("--array a=9") && not_open.stderr.contains(".npy"),
        "{}",
        not_open.stderr
    );
    // A plain file can shrink under the workers' mappings: refused.
    let unsealed = util::Procpool::new(["serve", "--child", "true", "--array", "a=5"])
        .after_shell("exec 5<>a.npy");
    procpool_shm::write_npy::<f64>(&unsealed.dir().join("a.npy"), &[2], &[1.0, 2.0])
        .expect("writing a.npy");
    let unsealed = unsealed.run(2);
    assert!(
        unsealed.stderr.contains("no F_SEAL_SHRINK seal"),
        "{}",
        unsealed.stderr
    );
    let bad = util::Procpool::new(["serve", "--child", "true", "--array", "a"]).run(2);
    assert!(bad.stderr.contains("NAME=FD"), "{}", bad.stderr);
    let no_child = util::Procpool::new(["serve"]).run(2);
    assert!(no_child.stderr.contains("--child"), "{}", no_child.stderr);
}

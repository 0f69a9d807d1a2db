//! The one helper every end-to-end test uses: run the real `procpool` binary in its
//! own temp dir, with a timeout so a hang fails the test instead of hanging CI, and
//! look at the processes it leaves behind through `/proc`.
//!
//! Modelled on ripgrep's `tests/util.rs`. Each test crate uses a different part of it.
#![allow(dead_code)]

pub mod cgroup;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// How long a run may take before the test calls it a hang. Generous: debug build,
/// two cores, tests running side by side.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The test crate's root (where `examples/` lives).
pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One `procpool` invocation, run in a fresh temp dir.
pub struct Procpool {
    dir: tempfile::TempDir,
    command: Command,
    timeout: Duration,
}

impl Procpool {
    /// `procpool <args...>`, with the temp dir as working directory.
    pub fn new<I, S>(args: I) -> Procpool
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Procpool::program(env!("CARGO_BIN_EXE_procpool"), args)
    }

    /// Another program (an example built by cargo) run the same way.
    pub fn program<I, S>(program: impl AsRef<std::ffi::OsStr>, args: I) -> Procpool
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let dir = tempfile::Builder::new()
            .prefix("procpool-test-")
            .tempdir()
            .expect("a temp dir");
        let mut command = Command::new(program);
        command.args(args).current_dir(dir.path());
        Procpool {
            dir,
            command,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The run's working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `procpool run tasks ARGS` with the Python worker `script` (as `w.py`, run by
    /// `python3 w.py`) and the input lines `input` (as `in.txt`).
    pub fn tasks(script: &str, input: &str, args: &[&str]) -> Procpool {
        let command = [
            "run",
            "tasks",
            "--child",
            "python3 w.py",
            "--input",
            "in.txt",
        ];
        Procpool::new(command.iter().chain(args))
            .write("w.py", script)
            .write("in.txt", input)
    }

    /// Writes `contents` to `name` in the run's directory (a worker script, say).
    pub fn write(self, name: &str, contents: impl AsRef<[u8]>) -> Procpool {
        std::fs::write(self.dir.path().join(name), contents).expect("writing a test file");
        self
    }

    /// Runs it as the leader of a new process group, as a shell does with a job, so
    /// a test can signal the group the way a terminal's Ctrl-C does.
    pub fn own_process_group(mut self) -> Procpool {
        std::os::unix::process::CommandExt::process_group(&mut self.command, 0);
        self
    }

    /// Writes an executable `name` (a worker script with a `#!` line, say).
    pub fn write_executable(self, name: &str, contents: &str) -> Procpool {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("writing a test file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("making a test file executable");
        self
    }

    /// Removes `name` from the run's environment (`RUST_BACKTRACE`, which makes every
    /// panic slow to print, say).
    pub fn env_remove(mut self, name: &str) -> Procpool {
        self.command.env_remove(name);
        self
    }

    /// Runs in `dir` instead of the run's own temp dir (to share files between runs).
    pub fn in_dir(mut self, dir: &Path) -> Procpool {
        self.command.current_dir(dir);
        self
    }

    /// Sets an environment variable of the run.
    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Procpool {
        self.command.env(key, value);
        self
    }

    /// Runs `script` in `sh` first, which then execs procpool (same pid): to move the
    /// run into a cgroup, say, before it starts anything.
    pub fn after_shell(mut self, script: &str) -> Procpool {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("{script}\nexec \"$0\" \"$@\""))
            .arg(self.command.get_program())
            .args(self.command.get_args())
            .current_dir(self.command.get_current_dir().unwrap_or(self.dir.path()));
        for (key, value) in self.command.get_envs() {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        self.command = command;
        self
    }

    /// Replaces the default timeout.
    pub fn timeout(mut self, timeout: Duration) -> Procpool {
        self.timeout = timeout;
        self
    }

    /// Runs to the end and asserts the exit code; panics with the output otherwise.
    pub fn run(self, expected_code: i32) -> Output {
        self.spawn().wait(expected_code)
    }

    /// Starts the run and returns at once, for tests that signal it while it runs.
    pub fn spawn(self) -> Running {
        self.spawn_with_stdin(Stdio::null())
    }

    /// Starts the run with `stdin` as its standard input.
    pub fn spawn_with_stdin(mut self, stdin: Stdio) -> Running {
        let mut child = self
            .command
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting procpool");
        let stdout = read_all(child.stdout.take().expect("piped"));
        let stderr = read_all(child.stderr.take().expect("piped"));
        Running {
            description: format!("{:?}", self.command),
            child,
            stdout: Some(stdout),
            stderr: Some(stderr),
            deadline: Instant::now() + self.timeout,
            dir: self.dir,
        }
    }
}

impl Procpool {
    /// Starts the run with its stderr on a pipe that nobody reads (the read end is
    /// returned, to be read or dropped later); stdout is read as usual.
    pub fn spawn_with_unread_stderr(mut self) -> (Running, std::os::fd::OwnedFd) {
        let (read_end, write_end) = nix::unistd::pipe().expect("a pipe");
        let mut child = self
            .command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(write_end))
            .spawn()
            .expect("starting procpool");
        let stdout = read_all(child.stdout.take().expect("piped"));
        let running = Running {
            description: format!("{:?}", self.command),
            child,
            stdout: Some(stdout),
            stderr: None,
            deadline: Instant::now() + self.timeout,
            dir: self.dir,
        };
        (running, read_end)
    }
}

fn read_all(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// A `procpool` process still running. Dropping it SIGKILLs the supervisor (its
/// workers follow by PDEATHSIG), so a failed assertion leaves nothing behind.
pub struct Running {
    description: String,
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    deadline: Instant,
    dir: tempfile::TempDir,
}

impl Running {
    /// The supervisor's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Whether the supervisor has not exited yet.
    pub fn is_running(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("waiting for procpool")
            .is_none()
    }

    /// Sends `signal` to the supervisor.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal).expect("signalling procpool");
    }

    /// The run's working directory (every worker's too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The supervisor's live child processes (its workers), once at least `count` exist
    /// and each has used some CPU, i.e. is past start-up and working on a task.
    pub fn busy_workers(&self, count: usize) -> Vec<i32> {
        self.new_busy_workers(count, &[])
    }

    /// Like [`Running::busy_workers`], ignoring the processes in `old` (workers already
    /// killed, whose replacements the caller waits for).
    pub fn new_busy_workers(&self, count: usize, old: &[i32]) -> Vec<i32> {
        let supervisor = self.pid();
        let mut workers = Vec::new();
        let found = wait_until(Duration::from_secs(20), || {
            workers = processes()
                .into_iter()
                .filter(|p| p.ppid == supervisor && p.is_live() && p.cpu_ticks > 0)
                .map(|p| p.pid)
                .filter(|pid| !old.contains(pid))
                .collect();
            workers.len() >= count
        });
        assert!(
            found,
            "{count} busy workers of pid {supervisor} never showed up (have {workers:?})"
        );
        workers
    }

    /// Waits for the exit (bounded by the timeout) and asserts its code.
    pub fn wait(self, expected_code: i32) -> Output {
        let description = self.description.clone();
        let output = self.finish();
        assert!(
            output.code == Some(expected_code),
            "{description} ended with {:?}, expected code {expected_code}\n{output}",
            output.code
        );
        output
    }

    /// Waits for the exit (bounded by the timeout), whatever it is.
    pub fn finish(mut self) -> Output {
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waiting for procpool") {
                break status;
            }
            if Instant::now() >= self.deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let output = self.output(None);
                panic!(
                    "{} did not finish in time (killed it)\n{output}",
                    self.description
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        self.output(status.code())
    }

    fn output(&mut self, code: Option<i32>) -> Output {
        let join = |handle: Option<JoinHandle<String>>| {
            handle.map_or_else(String::new, |h| h.join().expect("reader thread"))
        };
        Output {
            code,
            stdout: join(self.stdout.take()),
            stderr: join(self.stderr.take()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.stdout.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a finished run printed.
pub struct Output {
    /// The exit code; `None` if a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// stdout parsed as the one JSON object `--json` prints.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|err| panic!("stdout is not one JSON object ({err})\n{self}"))
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--- exit code: {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The pids of the workers in a `--json` report.
pub fn worker_pids(report: &Value) -> Vec<i32> {
    report["workers"]
        .as_array()
        .expect("report.workers is an array")
        .iter()
        .map(|w| w["pid"].as_i64().expect("worker.pid") as i32)
        .collect()
}

/// Whether `python3 -c "import numpy"` works. When it does not, a numpy test prints
/// SKIPPED and passes, unless `PROCPOOL_REQUIRE_NUMPY=1` says numpy must be there.
pub fn numpy_available(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import numpy"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !ok {
        assert!(
            std::env::var("PROCPOOL_REQUIRE_NUMPY").as_deref() != Ok("1"),
            "{test}: numpy is required (PROCPOOL_REQUIRE_NUMPY=1) but python3 cannot import it"
        );
        println!("SKIPPED {test}: python3 cannot import numpy");
    }
    ok
}

/// One line of `/proc/<pid>/stat`, the fields the tests need.
#[derive(Debug, Clone)]
pub struct ProcStat {
    pub pid: i32,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
}

impl ProcStat {
    /// Running or sleeping: not a zombie waiting to be reaped, not dead.
    pub fn is_live(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }

    fn parse(text: &str) -> Option<ProcStat> {
        // "pid (comm) state ppid pgrp ..." where comm may hold spaces and parentheses.
        let (head, rest) = text.rsplit_once(')')?;
        let pid = head.split_once(' ')?.0.trim().parse().ok()?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // fields[0] is field 3 of proc(5): state; utime and stime are fields 14, 15.
        Some(ProcStat {
            pid,
            state: fields.first()?.chars().next()?,
            ppid: fields.get(1)?.parse().ok()?,
            pgrp: fields.get(2)?.parse().ok()?,
            cpu_ticks: fields.get(11)?.parse::<u64>().ok()?
                + fields.get(12)?.parse::<u64>().ok()?,
        })
    }
}

/// Every process in `/proc` (those that vanish while being read are skipped).
pub fn processes() -> Vec<ProcStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            entry.file_name().to_str()?.parse::<i32>().ok()?;
            let text = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            ProcStat::parse(&text)
        })
        .collect()
}

/// `pid` itself, if it is alive (not a zombie).
pub fn is_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|text| ProcStat::parse(&text))
        .is_some_and(|p| p.is_live())
}

/// Live processes whose parent or process group is `pid`: a supervisor's workers, or
/// (workers lead their own group) a worker and anything it started.
pub fn live_processes_of(pid: i32) -> Vec<ProcStat> {
    processes()
        .into_iter()
        .filter(|p| (p.ppid == pid || p.pgrp == pid) && p.is_live())
        .collect()
}

/// Asserts that none of `pids` nor anything in their process groups or below them is
/// alive, waiting up to `within` for stragglers to die.
pub fn assert_no_orphans(pids: &[i32], within: Duration) {
    let mut left = Vec::new();
    let gone = wait_until(within, || {
        left = pids
            .iter()
            .flat_map(|&pid| {
                let mut alive = live_processes_of(pid);
                if is_alive(pid) && !alive.iter().any(|p| p.pid == pid) {
                    alive.extend(processes().into_iter().filter(|p| p.pid == pid));
                }
                alive
            })
            .collect();
        left.is_empty()
    });
    if !gone {
        // Fail, but leave no runaway process on the machine either.
        for p in &left {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
        }
        panic!("processes left alive after {within:?} (now killed): {left:?}");
    }
}

/// Live processes whose working directory is `dir`: every worker of a run started
/// there, whoever its parent is now (an orphan is re-parented to init).
pub fn live_processes_in(dir: &Path) -> Vec<ProcStat> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    processes()
        .into_iter()
        .filter(|p| p.is_live())
        .filter(|p| std::fs::read_link(format!("/proc/{}/cwd", p.pid)).is_ok_and(|cwd| cwd == dir))
        .collect()
}

/// Asserts that no process is left working in `dir` (see [`live_processes_in`]),
/// waiting up to `within` for stragglers to die.
pub fn assert_none_left_in(dir: &Path, within: Duration) {
    let mut left = Vec::new();
    if wait_until(within, || {
        left = live_processes_in(dir);
        left.is_empty()
    }) {
        return;
    }
    for p in &left {
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
    }
    panic!("processes left working in {dir:?} after {within:?} (now killed): {left:?}");
}

/// Polls `condition` every 10 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Procpool {
    /// Runs with `input` on stdin (through a file in the run's directory) and asserts
    /// the exit code, for runs that read their stdin.
    pub fn run_with_stdin(self, input: &[u8], expected_code: i32) -> Output {
        let path = self.dir.path().join("procpool-test-stdin");
        std::fs::write(&path, input).expect("writing the stdin file");
        let stdin = std::fs::File::open(&path).expect("opening the stdin file");
        self.spawn_with_stdin(stdin.into()).wait(expected_code)
    }

    /// Starts the run with a pipe on stdin and returns its write end: the test feeds
    /// the run line by line, and dropping the write end is the end of the input.
    pub fn spawn_with_stdin_pipe(self) -> (Running, std::process::ChildStdin) {
        let mut running = self.spawn_with_stdin(Stdio::piped());
        let stdin = running.child.stdin.take().expect("piped");
        (running, stdin)
    }
}

impl Running {
    /// Waits for the exit like [`Running::wait`], sampling the process's peak resident
    /// memory (`VmHWM` in `/proc/<pid>/status`, KiB) until it exits.
    pub fn wait_with_peak_rss(self, expected_code: i32) -> (Output, u64) {
        let path = format!("/proc/{}/status", self.pid());
        let mut peak = 0;
        while let Ok(status) = std::fs::read_to_string(&path) {
            let hwm = status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
            match hwm {
                Some(kib) => peak = peak.max(kib),
                None => break, // a zombie: it has exited
            }
            if Instant::now() >= self.deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (self.wait(expected_code), peak)
    }
}

/// `python3 <the example>`, as a `--child` command.
pub fn python_example(name: &str) -> String {
    format!(
        "python3 {}",
        manifest_dir().join("examples/python").join(name).display()
    )
}

/// The output lines of a `tasks` run, parsed, in the order they were written.
pub fn result_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("a result line that is not JSON ({err}): {line}"))
        })
        .collect()
}

/// A raw protocol worker (no SDK) whose per-task behaviour is `body`; `m` is the task
/// message and `send(message)` writes one line.
pub fn protocol_worker(body: &str) -> String {
    let body: String = body.lines().map(|line| format!("    {line}\n")).collect();
    format!(
        r#"import json, os, sys, time
def send(message): print(json.dumps(message), flush=True)
send({{"type": "ready"}})
for line in sys.stdin:
    m = json.loads(line)
    if m["type"] == "stop":
        break
    if m["type"] != "task":
        continue
{body}"#
    )
}

/// A raw protocol worker (no SDK) that runs up to four tasks at once, each in a thread
/// of its own: `body` is the thread's work for the task message `m`, and
/// `send(message)` writes one line (safe to call from any thread). It waits for the
/// tasks it holds before it exits on `stop` or EOF; crash tests dump no core.
pub fn threaded_worker(body: &str) -> String {
    let body: String = body.lines().map(|line| format!("    {line}\n")).collect();
    format!(
        r#"import json, os, resource, signal, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
stdout_lock = threading.Lock()
def send(message):
    with stdout_lock:
        print(json.dumps(message), flush=True)
def run(m):
{body}send({{"type": "ready"}})
threads = ThreadPoolExecutor(max_workers=4)
for line in sys.stdin:
    m = json.loads(line)
    if m["type"] == "stop":
        break
    if m["type"] == "task":
        threads.submit(run, m)
threads.shutdown(wait=True)
"#
    )
}

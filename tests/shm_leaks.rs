//! Shared arrays never leak: after a normal run, after `kill -9` of a worker and after
//! `kill -9` of the supervisor, `/dev/shm` and the kernel's `Shmem:` are back where
//! they were. Matrices of 3 × 128 MiB make any leak far larger than system noise.
//!
//! One test runs the three cases one after another, since the figures are system-wide.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// n = 4096: A, B and C take 128 MiB each.
const N: &str = "4096";
const MIB: i64 = 1024;
/// Unrelated processes may move `Shmem:` a little; a leak would move it by ≥ 128 MiB.
const TOLERANCE_KIB: i64 = 16 * MIB;
const SETTLE: Duration = Duration::from_secs(15);

/// What a leak would change: the names in /dev/shm and the kernel's shared memory.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    dev_shm: BTreeSet<String>,
    shmem_kib: i64,
}

fn snapshot() -> Snapshot {
    let dev_shm = std::fs::read_dir("/dev/shm")
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    let shmem_kib = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("Shmem:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a Shmem: line in /proc/meminfo");
    Snapshot { dev_shm, shmem_kib }
}

/// Waits (bounded) until the system is back to `before`, then asserts it is.
fn assert_back_to(before: &Snapshot, case: &str) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let now = snapshot();
        let grown = now.shmem_kib - before.shmem_kib;
        let new_names: Vec<&String> = now.dev_shm.difference(&before.dev_shm).collect();
        if grown <= TOLERANCE_KIB && new_names.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{case}: shared memory leaked: Shmem grew by {} MiB, new in /dev/shm: {new_names:?}",
            grown / MIB
        );
        sleep(Duration::from_millis(100));
    }
}

fn start(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_procpool"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("procpool starts")
}

/// The live (not zombie) children of `parent`, found by scanning /proc.
fn children(parent: u32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|(state, ppid)| ppid == parent as i32 && state != 'Z'))
        .collect()
}

/// State and parent pid from /proc/PID/stat (after the parenthesised command name).
fn stat(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = text.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.parse().ok()?))
}

fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z')
}

/// Waits until the supervisor has `count` workers and shared memory has grown by the
/// three matrices (so they are really there to leak), and returns the worker pids.
fn running_workers(supervisor: &Child, count: usize, before: &Snapshot) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let workers = children(supervisor.id());
        let grown = snapshot().shmem_kib - before.shmem_kib;
        if workers.len() == count && grown >= 3 * 128 * MIB - TOLERANCE_KIB {
            // Let them get into their tasks.
            sleep(Duration::from_millis(300));
            return workers;
        }
        assert!(
            Instant::now() < deadline,
            "workers did not start: {workers:?}, Shmem grew by {} MiB",
            grown / MIB
        );
        sleep(Duration::from_millis(20));
    }
}

fn wait_gone(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&pid| alive(pid)) {
        assert!(
            Instant::now() < deadline,
            "processes outlived the test: {pids:?}"
        );
        sleep(Duration::from_millis(20));
    }
}

fn sigkill(pid: i32) {
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill -9");
}

#[test]
fn no_shared_memory_outlives_a_run_however_it_ends() {
    let run = ["run", "matmul", "--n", N, "--procs", "2"];
    let before = snapshot();

    // 1. A normal run.
    let out = start(&run).wait_with_output().expect("procpool runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_back_to(&before, "after a normal run");

    // 2. kill -9 of a worker mid-run: the pool restarts it and finishes.
    let supervisor = start(&run);
    let workers = running_workers(&supervisor, 2, &before);
    sigkill(workers[0]);
    let out = supervisor.wait_with_output().expect("procpool runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("SIGKILL"),
        "the death was reported: {stderr}"
    );
    wait_gone(&workers);
    assert_back_to(&before, "after kill -9 of a worker");

    // 3. kill -9 of the supervisor mid-run: its workers die with it.
    let mut supervisor = start(&run);
    let workers = running_workers(&supervisor, 2, &before);
    sigkill(supervisor.id() as i32);
    supervisor.wait().expect("reaped");
    wait_gone(&workers);
    assert_back_to(&before, "after kill -9 of the supervisor");
}

//! Whether a SIGKILL that procpool did not send came from the OOM killer.
//!
//! A worker killed by SIGKILL from outside may have met `kill -9` or the OOM killer;
//! the exit status is the same. Two witnesses tell them apart, where this process may
//! read them:
//!
//! - the kernel log (`/dev/kmsg`, for root or where `dmesg_restrict` is 0), which names
//!   each victim: `Memory cgroup out of memory: Killed process 4242 (python3) …`. Read
//!   from the end it had at pool start, and only as far as is new at each death;
//! - the `oom_kill` count of the workers' memory cgroup, which the kernel raises before
//!   it sends the signal: a rise since the last look means an OOM kill in that cgroup,
//!   most likely of the worker that just died (a container's own limit, where the
//!   kernel log is seldom readable).
//!
//! Where neither says so, the report does not say OOM.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use crate::cgroup;
use crate::report::OomCheck;

/// The most kernel log records read at one death: a log flooded by something else
/// must not stall the pool.
const MOST_RECORDS: usize = 10_000;

/// The longest kernel log line kept in a report.
const LINE_MAX: usize = 200;

/// The two witnesses, as far as this process may read them.
pub(crate) struct OomWatch {
    kernel_log: Option<File>,
    /// Workers named as victims in the kernel log, not yet reaped: pid and line.
    victims: Vec<(i32, String)>,
    counter: Option<Counter>,
}

struct Counter {
    file: PathBuf,
    /// The count, less the rises not yet matched to a worker's death.
    seen: u64,
}

impl OomWatch {
    /// Opens the kernel log at its end and reads the memory cgroup's count now.
    pub(crate) fn start() -> OomWatch {
        let counter = cgroup::oom_kill_counter().and_then(|file| {
            let seen = read_count(&file)?;
            Some(Counter { file, seen })
        });
        OomWatch {
            kernel_log: open_kernel_log().ok(),
            victims: Vec::new(),
            counter,
        }
    }

    /// What the witnesses say of worker `pid`, just reaped after a SIGKILL procpool
    /// did not send; `live` are the workers not reaped yet (their victim lines are
    /// kept for their own deaths). `None` when neither can be read.
    pub(crate) fn check(&mut self, pid: i32, live: &[i32]) -> Option<OomCheck> {
        self.read_kernel_log(|victim| victim == pid || live.contains(&victim));
        let counted = self.counter.as_mut().and_then(|counter| {
            let now = read_count(&counter.file)?;
            let rose = now > counter.seen;
            if rose {
                counter.seen += 1;
            }
            Some(rose)
        });
        if let Some(at) = self.victims.iter().position(|(victim, _)| *victim == pid) {
            return Some(OomCheck::KernelLog(self.victims.swap_remove(at).1));
        }
        const COUNT: &str = "the memory cgroup's oom_kill count";
        match (counted, &self.counter) {
            (Some(true), Some(counter)) => {
                Some(OomCheck::CgroupCount(counter.file.display().to_string()))
            }
            (Some(false), _) if self.kernel_log.is_some() => {
                Some(OomCheck::NotOom(format!("the kernel log or {COUNT}")))
            }
            (Some(false), _) => Some(OomCheck::NotOom(COUNT.into())),
            _ if self.kernel_log.is_some() => Some(OomCheck::NotOom("the kernel log".into())),
            _ => None,
        }
    }

    /// Reads the records added since the last read, keeping the OOM victims whose pid
    /// `keep` accepts.
    fn read_kernel_log(&mut self, keep: impl Fn(i32) -> bool) {
        let Some(log) = &mut self.kernel_log else {
            return;
        };
        let mut record = vec![0u8; 8192];
        for _ in 0..MOST_RECORDS {
            match log.read(&mut record) {
                Ok(0) => break,
                Ok(length) => {
                    if let Some((victim, line)) = oom_victim(&record[..length]) {
                        if keep(victim) {
                            self.victims.push((victim, line));
                        }
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                // Records were overwritten before they were read: go on from the oldest.
                Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {}
                Err(_) => break,
            }
        }
    }
}

/// `/dev/kmsg`, positioned after its last record, reads never waiting. Refused where
/// this process is in a PID namespace of its own: the log's pids would not be ours.
fn open_kernel_log() -> io::Result<File> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let nested = status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))
        .is_some_and(|pids| pids.split_whitespace().count() > 1);
    if nested {
        return Err(io::Error::other("in a PID namespace of its own"));
    }
    let mut log = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")?;
    log.seek(SeekFrom::End(0))?;
    Ok(log)
}

fn read_count(file: &PathBuf) -> Option<u64> {
    cgroup::oom_kills(&std::fs::read_to_string(file).ok()?)
}

/// The pid and the line of an OOM kill in one `/dev/kmsg` record
/// (`6,1234,5678,-;Out of memory: Killed process 4242 (name) total-vm:…`), the line
/// cut before its figures.
fn oom_victim(record: &[u8]) -> Option<(i32, String)> {
    let text = String::from_utf8_lossy(record);
    let message = text.split_once(';')?.1.lines().next()?;
    let after = message.split_once("Killed process ")?.1;
    let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let pid = after[..digits].parse().ok()?;
    if !after[digits..].starts_with(" (") {
        return None;
    }
    let line = message
        .split(", total-vm")
        .next()?
        .split(" total-vm")
        .next()?;
    Some((
        pid,
        procpool_shm::untrusted::excerpt(line.as_bytes(), LINE_MAX),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_victim_of_either_oom_killer_in_a_kernel_log_record() {
        let memcg = b"3,1187,277105688,-;Memory cgroup out of memory: Killed process 6357 (python3) total-vm:540856kB, anon-rss:65152kB\n SUBSYSTEM=x\n";
        assert_eq!(
            oom_victim(memcg),
            Some((
                6357,
                "Memory cgroup out of memory: Killed process 6357 (python3)".into()
            ))
        );
        let global = b"3,9,1,-;Out of memory: Killed process 42 (a (b) c), total-vm:1kB\n";
        assert_eq!(
            oom_victim(global),
            Some((42, "Out of memory: Killed process 42 (a (b) c)".into()))
        );
        assert_eq!(
            oom_victim(b"6,1,1,-;oom_reaper: reaped process 42 (x)"),
            None
        );
        assert_eq!(oom_victim(b"6,1,1,-;Killed process 42"), None);
        assert_eq!(oom_victim(b"6,1,1,-;Killed process x (y)"), None);
        assert_eq!(oom_victim(b"no separator Killed process 4 (y)"), None);
    }

    #[test]
    fn a_rise_of_the_count_is_matched_to_one_death_each() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.events");
        std::fs::write(&file, "oom 0\noom_kill 5\n").unwrap();
        let mut watch = OomWatch {
            kernel_log: None,
            victims: Vec::new(),
            counter: Some(Counter {
                file: file.clone(),
                seen: 5,
            }),
        };
        let shown = file.display().to_string();
        let not_oom = || {
            Some(OomCheck::NotOom(
                "the memory cgroup's oom_kill count".into(),
            ))
        };
        assert_eq!(watch.check(1, &[]), not_oom());
        std::fs::write(&file, "oom 2\noom_kill 7\n").unwrap();
        assert_eq!(
            watch.check(2, &[]),
            Some(OomCheck::CgroupCount(shown.clone()))
        );
        assert_eq!(watch.check(3, &[]), Some(OomCheck::CgroupCount(shown)));
        assert_eq!(watch.check(4, &[]), not_oom());
        let mut blind = OomWatch {
            kernel_log: None,
            victims: Vec::new(),
            counter: None,
        };
        assert_eq!(blind.check(1, &[]), None);
    }

    #[test]
    fn a_victim_line_is_kept_for_its_own_worker_only() {
        let mut watch = OomWatch {
            kernel_log: None,
            victims: vec![(7, "Out of memory: Killed process 7 (w)".into())],
            counter: None,
        };
        assert_eq!(watch.check(8, &[7]), None);
        assert_eq!(
            watch.check(7, &[]),
            Some(OomCheck::KernelLog(
                "Out of memory: Killed process 7 (w)".into()
            ))
        );
        assert!(watch.victims.is_empty());
    }
}

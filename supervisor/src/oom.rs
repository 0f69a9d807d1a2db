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
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    /// The count at the last look.
    seen: u64,
    /// Rises not matched to a death yet, and when the last was seen: they are matched
    /// only to deaths within [`RISE_WINDOW`] of it, not to a `kill -9` an hour later.
    unmatched: u64,
    rose_at: Instant,
}

/// How long after a rise of the count a death may be matched to it: workers killed
/// together are reaped within it.
const RISE_WINDOW: Duration = Duration::from_secs(1);

/// The kernel counts an OOM kill before it sends the signal, but logs it after: how
/// long its line may take to show up once the count has risen.
const LOG_LAG: Duration = Duration::from_millis(2);

impl OomWatch {
    /// Opens the kernel log at its end and reads the memory cgroup's count now.
    pub(crate) fn start(now: Instant) -> OomWatch {
        let counter = cgroup::oom_kill_counter().and_then(|file| {
            let seen = read_count(&file)?;
            Some(Counter {
                file,
                seen,
                unmatched: 0,
                rose_at: now,
            })
        });
        OomWatch {
            kernel_log: open_kernel_log().ok(),
            victims: Vec::new(),
            counter,
        }
    }

    /// Worker `pid` was reaped. For a SIGKILL procpool did not send (`outside_sigkill`),
    /// what the witnesses say of it: the kernel log where it can be read (it names each
    /// victim), else the memory cgroup's count; `None` when neither can be read. `live`
    /// are the workers not reaped yet, whose victim lines are kept for their own deaths.
    pub(crate) fn reaped(
        &mut self,
        pid: i32,
        outside_sigkill: bool,
        live: &[i32],
        now: Instant,
    ) -> Option<OomCheck> {
        if !outside_sigkill {
            // A line for it would otherwise wait for a later worker with its pid.
            self.victims.retain(|(victim, _)| *victim != pid);
            return None;
        }
        let rose = self.count_rose(now);
        if self.kernel_log.is_some() {
            let keep = |victim: i32| victim == pid || live.contains(&victim);
            self.read_kernel_log(keep);
            if rose == Some(true) && !self.victims.iter().any(|(victim, _)| *victim == pid) {
                std::thread::sleep(LOG_LAG);
                self.read_kernel_log(keep);
            }
            let at = self.victims.iter().position(|(victim, _)| *victim == pid);
            return Some(match at {
                Some(at) => OomCheck::KernelLog(self.victims.swap_remove(at).1),
                None => OomCheck::NotOom("the kernel log".into()),
            });
        }
        match (rose?, &self.counter) {
            (true, Some(counter)) => {
                Some(OomCheck::CgroupCount(counter.file.display().to_string()))
            }
            _ => Some(OomCheck::NotOom(
                "the memory cgroup's oom_kill count".into(),
            )),
        }
    }

    /// Whether an OOM kill counted since the last look, and not matched to a death
    /// yet, is there to match to this one. `None` without a readable count.
    fn count_rose(&mut self, now: Instant) -> Option<bool> {
        let counter = self.counter.as_mut()?;
        let count = read_count(&counter.file)?;
        if count > counter.seen {
            counter.unmatched += count - counter.seen;
            counter.rose_at = now;
        }
        counter.seen = count;
        if now.saturating_duration_since(counter.rose_at) > RISE_WINDOW {
            counter.unmatched = 0;
        }
        let matched = counter.unmatched > 0;
        counter.unmatched = counter.unmatched.saturating_sub(1);
        Some(matched)
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

fn read_count(file: &Path) -> Option<u64> {
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

    fn counting(file: &Path, seen: u64, now: Instant) -> OomWatch {
        OomWatch {
            kernel_log: None,
            victims: Vec::new(),
            counter: Some(Counter {
                file: file.to_path_buf(),
                seen,
                unmatched: 0,
                rose_at: now,
            }),
        }
    }

    #[test]
    fn a_rise_of_the_count_is_matched_to_one_death_each_for_a_while() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.events");
        std::fs::write(&file, "oom 0\noom_kill 5\n").unwrap();
        let now = Instant::now();
        let mut watch = counting(&file, 5, now);
        let shown = file.display().to_string();
        let not_oom = || {
            Some(OomCheck::NotOom(
                "the memory cgroup's oom_kill count".into(),
            ))
        };
        assert_eq!(watch.reaped(1, true, &[], now), not_oom());
        std::fs::write(&file, "oom 2\noom_kill 7\n").unwrap();
        let counted = Some(OomCheck::CgroupCount(shown));
        assert_eq!(watch.reaped(2, true, &[], now), counted);
        assert_eq!(watch.reaped(3, true, &[], now), counted);
        assert_eq!(watch.reaped(4, true, &[], now), not_oom());
        assert_eq!(
            watch.reaped(5, false, &[], now),
            None,
            "procpool's own kill"
        );
        // Two more: one matched now, the other long unmatched, then no one's.
        std::fs::write(&file, "oom 4\noom_kill 9\n").unwrap();
        assert_eq!(watch.reaped(6, true, &[], now), counted);
        let later = now + RISE_WINDOW * 2;
        assert_eq!(watch.reaped(7, true, &[], later), not_oom());
        let mut blind = counting(&file, 0, now);
        blind.counter = None;
        assert_eq!(blind.reaped(1, true, &[], now), None);
    }

    #[test]
    fn where_the_kernel_log_is_read_it_alone_decides() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.events");
        std::fs::write(&file, "oom_kill 0\n").unwrap();
        let now = Instant::now();
        let mut watch = counting(&file, 0, now);
        // An empty log: /dev/null reads as one with no new records.
        watch.kernel_log = Some(File::open("/dev/null").unwrap());
        watch.victims = vec![(7, "Out of memory: Killed process 7 (w)".into())];
        std::fs::write(&file, "oom_kill 1\n").unwrap();
        let log_says_no = Some(OomCheck::NotOom("the kernel log".into()));
        assert_eq!(
            watch.reaped(8, true, &[7], now),
            log_says_no,
            "7's rise, not 8's"
        );
        assert_eq!(
            watch.reaped(7, true, &[], now),
            Some(OomCheck::KernelLog(
                "Out of memory: Killed process 7 (w)".into()
            ))
        );
        assert!(watch.victims.is_empty());
        watch.victims = vec![(9, "Out of memory: Killed process 9 (w)".into())];
        assert_eq!(watch.reaped(9, false, &[], now), None);
        assert!(
            watch.victims.is_empty(),
            "forgotten when procpool killed it"
        );
    }
}

//! What workers leave behind, and who cleans it up.
//!
//! Two gaps remain once every worker leads its own process group and dies with the
//! supervisor (`PR_SET_PDEATHSIG`):
//!
//! - **A daemon.** A worker's child that calls `setsid()` and forks again escapes the
//!   worker's group. So the supervisor is a child subreaper and so is every worker:
//!   while a worker lives, an orphan anywhere below it is re-parented to the worker, so
//!   its tree stays whole; when the worker dies, what it held is re-parented to the
//!   supervisor. A child of the supervisor that is not a worker and sits in a worker's
//!   process group or in a session of its own is such a leftover: [`Orphans::sweep`]
//!   kills it and reaps it (by pid, so no worker's exit status is ever taken).
//! - **The supervisor's own death.** `kill -9` or the OOM killer leave nobody to kill a
//!   worker's children. A guardian does: a tiny process forked once per pool (see
//!   `sys::start_guardian`) that is told each worker's process group and, when the
//!   supervisor is gone (EOF on its pipe), kills every group it was told of.
//!
//! Where the pool has cgroups (`cgroup.rs`), they close what the process tree leaves
//! open: a dead worker's leaf is killed whole, and the guardian kills the pool's
//! cgroup. The sweep stays for the pools without. What stays uncovered is said in the
//! README ("No orphans").

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cgroup::GuardianCgroup;
use crate::sys;

/// A process's place in the tree, from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcessEntry {
    pub pid: i32,
    pub parent: i32,
    pub group: i32,
    pub session: i32,
    pub zombie: bool,
}

impl ProcessEntry {
    /// Parses "pid (comm) state ppid pgrp session ...", where comm may hold anything.
    fn parse(stat: &str) -> Option<ProcessEntry> {
        let (head, rest) = stat.rsplit_once(')')?;
        let pid = head.split_once(' ')?.0.trim().parse().ok()?;
        let mut fields = rest.split_whitespace();
        let state = fields.next()?;
        Some(ProcessEntry {
            pid,
            zombie: state == "Z" || state == "X",
            parent: fields.next()?.parse().ok()?,
            group: fields.next()?.parse().ok()?,
            session: fields.next()?.parse().ok()?,
        })
    }
}

/// The children of process `parent`, found by reading `/proc` (the kernel's own list,
/// `/proc/<pid>/task/<tid>/children`, is not built into every kernel).
fn children_of(parent: i32) -> Vec<ProcessEntry> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            let pid: i32 = name.to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            ProcessEntry::parse(&stat).filter(|process| process.parent == parent)
        })
        .collect()
}

/// The pool's guardian and, when the pool adopts orphans, what it knows to find them.
pub(crate) struct Orphans {
    guardian: Guardian,
    /// Present when this process is a child subreaper that sweeps up leftovers.
    adopted: Option<Adopted>,
}

struct Adopted {
    own_pid: i32,
    own_session: i32,
    /// Process groups of the workers that died since the last sweep that found nothing:
    /// a leftover in one of them is killed even though it is in our session.
    dead_groups: BTreeSet<i32>,
    /// A worker died or a leftover was signalled: sweep at the next child event.
    due: bool,
}

impl Orphans {
    /// Starts the guardian (which empties and removes the pool's `cgroup` too, should
    /// this process die) and, with `adopt`, makes this process a child subreaper. The
    /// guardian is forked first, so that it is not re-parented to us.
    pub(crate) fn start(
        capacity: usize,
        adopt: bool,
        cgroup: Option<GuardianCgroup>,
    ) -> std::io::Result<Orphans> {
        let guardian = Guardian::start(capacity, cgroup)?;
        let adopted = match adopt {
            false => None,
            true => {
                sys::become_subreaper()?;
                Some(Adopted {
                    own_pid: std::process::id() as i32,
                    own_session: sys::own_session(),
                    dead_groups: BTreeSet::new(),
                    due: false,
                })
            }
        };
        Ok(Orphans { guardian, adopted })
    }

    /// Whether workers must be child subreapers too (so their trees stay whole).
    pub(crate) fn adopting(&self) -> bool {
        self.adopted.is_some()
    }

    /// A worker started: its group is the guardian's to kill should we die.
    pub(crate) fn worker_started(&mut self, pid: i32) {
        self.guardian.tell(pid);
    }

    /// A worker was reaped (its group already killed): what it left is swept up at the
    /// next [`Orphans::sweep_if_due`].
    pub(crate) fn worker_reaped(&mut self, pid: i32) {
        self.guardian.tell(-pid);
        if let Some(adopted) = &mut self.adopted {
            adopted.dead_groups.insert(pid);
            adopted.due = true;
        }
    }

    /// Sweeps if a worker died or a leftover was killed since the last sweep.
    pub(crate) fn sweep_if_due(&mut self, workers: &[i32]) {
        if self.adopted.as_ref().is_some_and(|adopted| adopted.due) {
            self.sweep(workers);
        }
    }

    /// Kills every leftover among our children (those in `workers` are not) and reaps
    /// those already dead; returns how many live ones it killed. Their own children
    /// come to us as they die, so a sweep follows each child event while any is left.
    fn sweep(&mut self, workers: &[i32]) -> usize {
        let Some(adopted) = &mut self.adopted else {
            return 0;
        };
        let mut killed = 0;
        for child in children_of(adopted.own_pid) {
            let leftover = !workers.contains(&child.pid)
                && child.pid != self.guardian.pid
                && (child.session != adopted.own_session
                    || adopted.dead_groups.contains(&child.group));
            if !leftover {
                continue;
            }
            if child.zombie {
                sys::reap_if_exited(Pid::from_raw(child.pid));
            } else {
                let _ = kill(Pid::from_raw(child.pid), Signal::SIGKILL);
                killed += 1;
            }
        }
        adopted.due = killed > 0;
        if killed == 0 {
            // Clean: a later process may reuse a dead worker's number as its group.
            adopted.dead_groups.clear();
        }
        killed
    }

    /// At shutdown, with every worker reaped: sweeps until no leftover is alive, for at
    /// most `within` (a process stuck in the kernel cannot be hurried).
    pub(crate) fn sweep_all(&mut self, within: Duration) {
        if self.adopted.is_none() || !sys::has_children() {
            return;
        }
        let deadline = Instant::now() + within;
        while self.sweep(&[]) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The supervisor's end of the guardian's pipe. Each record is a process group to kill
/// should the supervisor die (a negative one: no longer). Dropping it is the end of
/// the pool, which the guardian takes as its cue to kill what is left and exit.
struct Guardian {
    pid: i32,
    pipe: Option<File>,
}

impl Guardian {
    fn start(capacity: usize, cgroup: Option<GuardianCgroup>) -> std::io::Result<Guardian> {
        let (pid, pipe) = sys::start_guardian(capacity, cgroup)?;
        Ok(Guardian {
            pid: pid.as_raw(),
            pipe: Some(File::from(pipe)),
        })
    }

    fn tell(&mut self, record: i32) {
        // One 4-byte write is atomic on a pipe. Should the guardian be gone or stalled
        // (the pipe full), it can no longer help: stop telling it.
        if let Some(pipe) = &mut self.pipe {
            if pipe.write(&record.to_ne_bytes()).ok() != Some(4) {
                self.pipe = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_whose_name_holds_spaces_and_parentheses() {
        let entry = ProcessEntry::parse("4242 (a (b) c) S 17 4242 99 0 -1 4194560").unwrap();
        assert_eq!(
            (
                entry.pid,
                entry.parent,
                entry.group,
                entry.session,
                entry.zombie
            ),
            (4242, 17, 4242, 99, false)
        );
        assert!(ProcessEntry::parse("7 (x) Z 1 7 7").unwrap().zombie);
        assert!(ProcessEntry::parse("garbage").is_none());
    }

    #[test]
    fn finds_its_own_children_in_proc() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let found = children_of(std::process::id() as i32)
            .iter()
            .any(|entry| entry.pid == child.id() as i32 && !entry.zombie);
        let _ = child.kill();
        let _ = child.wait();
        assert!(found, "the sleep child was not listed");
    }
}

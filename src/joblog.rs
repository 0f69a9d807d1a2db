//! `--joblog FILE`: one JSON line per task as it ends, appended and flushed line by
//! line (GNU parallel's `--joblog`, machine-readable), and at the end one `not_run`
//! line for every task that was put and never ended (interrupted, the pool gave up).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, Result};
use procpool_child::TaskId;
use procpool_supervisor::{ExitStatus, TaskOutcome};
use serde::Serialize;
use serde_json::Value;

/// One task's line.
#[derive(Serialize)]
pub struct Entry<'a> {
    /// The source's name for the task (`run tasks`: the input's index, as in its
    /// output), or the pool's id.
    pub task: Value,
    /// `ok`, `error` (the worker's error, or an answer the workload rejected),
    /// `failed` (quarantined after crashes) or `not_run`.
    pub outcome: &'static str,
    /// Times it was sent to a worker (not known for a task that did not end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// The slot and process of the last attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Seconds since the epoch when the task was queued, and when it ended.
    pub queued_at: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<f64>,
    /// From queued to ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// How the last crash ended, for a task that crashed its worker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<&'a ExitStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'a str>,
}

pub struct JobLog {
    file: File,
    path: String,
    /// When each task that has not ended was queued.
    queued: HashMap<TaskId, SystemTime>,
}

impl JobLog {
    /// Opens `path` to append to (a resumed run adds to the log of the first).
    pub fn open(path: &Path) -> Result<JobLog> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("--joblog {}: cannot open it", path.display()))?;
        Ok(JobLog {
            file,
            path: path.display().to_string(),
            queued: HashMap::new(),
        })
    }

    pub fn queued(&mut self, id: TaskId) {
        self.queued.insert(id, SystemTime::now());
    }

    /// Task `id` ended with `outcome`; `rejected` is the workload's reason when it
    /// refused an output.
    pub fn ended(
        &mut self,
        task: Value,
        id: TaskId,
        attempts: u32,
        (slot, pid): (usize, i32),
        outcome: &TaskOutcome,
        rejected: Option<&str>,
    ) -> Result<()> {
        let queued = self.queued.remove(&id).unwrap_or_else(SystemTime::now);
        let ended = SystemTime::now();
        let message = rejected
            .map(str::to_string)
            .or_else(|| outcome.failure_message(attempts));
        let crashed = match outcome {
            TaskOutcome::Failed(crashes) => crashes.last(),
            _ => None,
        };
        let entry = Entry {
            task,
            outcome: match (outcome, rejected) {
                (_, Some(_)) | (TaskOutcome::Error(_), _) => "error",
                (TaskOutcome::Failed(_), _) => "failed",
                _ => "ok",
            },
            attempts: Some(attempts),
            slot: Some(crashed.map_or(slot, |crash| crash.slot)),
            pid: Some(crashed.map_or(pid, |crash| crash.pid)),
            queued_at: unix_seconds(queued),
            ended_at: Some(unix_seconds(ended)),
            seconds: Some(
                ended
                    .duration_since(queued)
                    .unwrap_or_default()
                    .as_secs_f64(),
            ),
            exit: crashed.map(|crash| &crash.status),
            message: message.as_deref(),
        };
        self.write(&entry)
    }

    /// The run is over: a `not_run` line for every task still queued, named by `label`.
    pub fn not_run(&mut self, label: impl Fn(TaskId) -> Value) -> Result<()> {
        let mut left: Vec<(TaskId, SystemTime)> = self.queued.drain().collect();
        left.sort_unstable_by_key(|(id, _)| *id);
        for (id, queued) in left {
            self.write(&Entry {
                task: label(id),
                outcome: "not_run",
                attempts: None,
                slot: None,
                pid: None,
                queued_at: unix_seconds(queued),
                ended_at: None,
                seconds: None,
                exit: None,
                message: None,
            })?;
        }
        Ok(())
    }

    fn write(&mut self, entry: &Entry<'_>) -> Result<()> {
        let mut line = serde_json::to_vec(entry)?;
        line.push(b'\n');
        // One write per line on an O_APPEND file: a kill leaves whole lines.
        self.file
            .write_all(&line)
            .with_context(|| format!("writing the job log {}", self.path))
    }
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

//! The task book: every task from `put` to its one end. Pure bookkeeping, no I/O and
//! no clock, so that each rule (attempts, crash charging, quarantine, not-run
//! accounting) is tested on its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use procpool_child::TaskId;
use serde_json::Value;

use crate::config::TaskOptions;
use crate::event::{Charge, Event, LostTask, TaskOutcome};
use crate::queue::JoinableQueue;
use crate::report::{quarantine_message, Crash, TaskFailure};

/// Tasks by fate, as the report counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub ok: u64,
    pub error: u64,
    pub failed: u64,
    pub not_run: u64,
    /// Sends beyond a task's first.
    pub retries: u64,
}

struct TaskRecord {
    /// Shared with the caller that put it (a source that echoes inputs keeps one).
    input: Arc<Value>,
    /// Times sent to a worker.
    sends: u32,
    /// Deaths counted against it: it alone was running, and not a chaos kill.
    charged: u32,
    /// Chaos kills it was running in.
    chaos_kills: u32,
    /// Every death it was running in, counted or not, oldest first.
    crashes: Vec<Crash>,
    /// A suspect of an ambiguous death: it runs with no other task beside it.
    alone: bool,
    /// Its own deadline and attempt limit, where they differ from the pool's.
    options: TaskOptions,
}

/// A task handed to a worker.
pub(crate) struct Dispatch<'a> {
    pub id: TaskId,
    pub attempt: u32,
    pub input: &'a Value,
    /// No other task may run beside it on its worker.
    pub alone: bool,
    /// Its own deadline, if it has one; otherwise the pool's applies.
    pub timeout: Option<Duration>,
}

/// What a worker's death says about one task it held.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Blame<'a> {
    /// It was the only task running: the death counts against it.
    Culprit(&'a Crash),
    /// It was running, but chaos killed the worker.
    Chaos(&'a Crash),
    /// It was one of several tasks running: retried alone, not counted.
    Suspect(&'a Crash),
    /// It waited in the worker's pipe.
    Bystander,
}

/// Every task not yet ended, the queue of those waiting for a worker, and the fates
/// of those that ended.
pub(crate) struct TaskBook {
    queue: JoinableQueue,
    records: HashMap<TaskId, TaskRecord>,
    max_attempts: u32,
    counts: Counts,
    failures: Vec<TaskFailure>,
}

impl TaskBook {
    pub(crate) fn new(max_attempts: u32) -> TaskBook {
        TaskBook {
            queue: JoinableQueue::default(),
            records: HashMap::new(),
            max_attempts,
            counts: Counts::default(),
            failures: Vec::new(),
        }
    }

    pub(crate) fn put(&mut self, input: impl Into<Arc<Value>>, options: TaskOptions) -> TaskId {
        let input = input.into();
        let id = self.queue.put();
        self.records.insert(
            id,
            TaskRecord {
                input,
                sends: 0,
                charged: 0,
                chaos_kills: 0,
                crashes: Vec::new(),
                alone: false,
                options,
            },
        );
        id
    }

    /// Whether the next waiting task must run alone; `None` when none waits.
    pub(crate) fn next_runs_alone(&self) -> Option<bool> {
        let id = self.queue.peek()?;
        Some(self.records.get(&id).is_some_and(|task| task.alone))
    }

    /// Takes the next waiting task and counts the send.
    pub(crate) fn take(&mut self) -> Option<Dispatch<'_>> {
        let id = self.queue.take()?;
        let task = self
            .records
            .get_mut(&id)
            .expect("a queued task has a record");
        task.sends += 1;
        if task.sends > 1 {
            self.counts.retries += 1;
        }
        Some(Dispatch {
            id,
            attempt: task.sends,
            input: &task.input,
            alone: task.alone,
            timeout: task.options.timeout,
        })
    }

    /// A worker answered a task it held: the task ends.
    pub(crate) fn answered(&mut self, id: TaskId, slot: usize, outcome: TaskOutcome) -> Event {
        let task = self
            .records
            .remove(&id)
            .expect("an answered task was in flight and has a record");
        match &outcome {
            TaskOutcome::Error(message) => {
                self.counts.error += 1;
                self.failures.push(TaskFailure {
                    id,
                    attempts: task.sends,
                    message: message.clone(),
                    crashes: task.crashes,
                });
            }
            _ => self.counts.ok += 1,
        }
        self.queue.task_done();
        Event::Task {
            id,
            attempts: task.sends,
            slot,
            outcome,
        }
    }

    /// A task's worker died: the death is recorded as `blame` says, and the task goes
    /// back to the front of the queue, or is quarantined once `max_attempts` deaths
    /// were counted against it (then the event says so).
    pub(crate) fn lost(
        &mut self,
        id: TaskId,
        slot: usize,
        blame: Blame<'_>,
    ) -> (LostTask, Option<Event>) {
        let task = self
            .records
            .get_mut(&id)
            .expect("a lost task was in flight and has a record");
        let charge = match blame {
            Blame::Culprit(crash) => {
                task.crashes.push(crash.clone());
                task.charged += 1;
                Charge::Counted {
                    count: task.charged,
                }
            }
            Blame::Chaos(crash) => {
                task.crashes.push(crash.clone());
                task.chaos_kills += 1;
                Charge::Chaos
            }
            Blame::Suspect(crash) => {
                task.crashes.push(crash.clone());
                task.alone = true;
                Charge::Suspect
            }
            Blame::Bystander => Charge::Waiting,
        };
        let lost = LostTask {
            id,
            attempt: task.sends,
            charge,
        };
        if task.charged < task.options.max_attempts.unwrap_or(self.max_attempts) {
            self.queue.retry(id);
            return (lost, None);
        }
        let task = self.records.remove(&id).expect("checked above");
        self.counts.failed += 1;
        self.failures.push(TaskFailure {
            id,
            attempts: task.sends,
            message: quarantine_message(&task.crashes, task.sends),
            crashes: task.crashes.clone(),
        });
        self.queue.task_done();
        let event = Event::Task {
            id,
            attempts: task.sends,
            slot,
            outcome: TaskOutcome::Failed(task.crashes),
        };
        (lost, Some(event))
    }

    /// Ends a task that was sent and will not be answered (shutdown) as not run.
    pub(crate) fn abandon(&mut self, id: TaskId) {
        if self.records.remove(&id).is_some() {
            self.counts.not_run += 1;
            self.queue.task_done();
        }
    }

    /// Ends task `id` as not run if it still waits for a worker; a task already handed
    /// to one (or ended) runs on, and `false` says so.
    pub(crate) fn cancel(&mut self, id: TaskId) -> bool {
        let waiting = self.queue.remove_waiting(id);
        if waiting {
            self.abandon(id);
        }
        waiting
    }

    /// Ends every waiting task as not run (interrupt, abort, shutdown).
    pub(crate) fn abandon_waiting(&mut self) {
        for id in self.queue.drain_waiting() {
            self.abandon(id);
        }
    }

    /// A task that survived `max_attempts` chaos kills is spared more, so that chaos
    /// faster than the tasks cannot stall a run.
    pub(crate) fn spared_by_chaos(&self, id: TaskId) -> bool {
        self.records.get(&id).is_some_and(|task| {
            task.chaos_kills >= task.options.max_attempts.unwrap_or(self.max_attempts)
        })
    }

    /// Whether `id` was ever put (to tell a late answer from an invented one).
    pub(crate) fn was_put(&self, id: TaskId) -> bool {
        id < self.queue.total()
    }

    pub(crate) fn next_id(&self) -> TaskId {
        self.queue.total()
    }

    pub(crate) fn total(&self) -> u64 {
        self.queue.total()
    }

    pub(crate) fn unfinished(&self) -> usize {
        self.queue.unfinished()
    }

    pub(crate) fn waiting(&self) -> usize {
        self.queue.waiting()
    }

    pub(crate) fn is_joined(&self) -> bool {
        self.queue.is_joined()
    }

    pub(crate) fn counts(&self) -> Counts {
        self.counts
    }

    pub(crate) fn failures(&self) -> &[TaskFailure] {
        &self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ExitStatus;
    use serde_json::json;

    fn crash() -> Crash {
        Crash {
            slot: 0,
            pid: 42,
            status: ExitStatus::Exited(1),
            killed_by_procpool: None,
            oom: None,
        }
    }

    fn send(book: &mut TaskBook) -> (TaskId, u32) {
        let dispatch = book.take().expect("a task waits");
        (dispatch.id, dispatch.attempt)
    }

    #[test]
    fn an_answer_ends_the_task_once() {
        let mut book = TaskBook::new(3);
        let id = book.put(json!(1), TaskOptions::default());
        assert_eq!(send(&mut book), (id, 1));
        let event = book.answered(id, 0, TaskOutcome::Output(json!(2)));
        assert!(matches!(event, Event::Task { attempts: 1, .. }));
        assert!(book.is_joined());
        assert_eq!(book.counts().ok, 1);
    }

    #[test]
    fn only_counted_deaths_quarantine() {
        let mut book = TaskBook::new(2);
        let id = book.put(json!(null), TaskOptions::default());
        let crash = crash();
        for blame in [
            Blame::Bystander,
            Blame::Chaos(&crash),
            Blame::Suspect(&crash),
            Blame::Culprit(&crash),
        ] {
            send(&mut book);
            let (_, ended) = book.lost(id, 0, blame);
            assert!(ended.is_none(), "{blame:?} must not quarantine yet");
        }
        let (_, sends) = send(&mut book);
        assert_eq!(sends, 5);
        let (lost, ended) = book.lost(id, 0, Blame::Culprit(&crash));
        assert_eq!(lost.charge, Charge::Counted { count: 2 });
        let Some(Event::Task {
            outcome: TaskOutcome::Failed(crashes),
            attempts: 5,
            ..
        }) = ended
        else {
            panic!("quarantined after two counted deaths: {ended:?}");
        };
        assert_eq!(crashes.len(), 4, "every death it ran in is listed");
        assert_eq!(book.counts().failed, 1);
        assert_eq!(book.counts().retries, 4);
        assert!(book.is_joined());
    }

    #[test]
    fn a_suspect_runs_alone_from_then_on() {
        let mut book = TaskBook::new(3);
        let suspect = book.put(json!(1), TaskOptions::default());
        book.put(json!(2), TaskOptions::default());
        assert_eq!(book.next_runs_alone(), Some(false));
        send(&mut book);
        book.lost(suspect, 0, Blame::Suspect(&crash()));
        assert_eq!(book.next_runs_alone(), Some(true), "retries go first");
        let dispatch = book.take().unwrap();
        assert!(dispatch.alone && dispatch.id == suspect);
        assert_eq!(book.next_runs_alone(), Some(false));
    }

    #[test]
    fn chaos_spares_a_task_after_max_attempts_kills() {
        let mut book = TaskBook::new(2);
        let id = book.put(json!(null), TaskOptions::default());
        let crash = crash();
        for _ in 0..2 {
            assert!(!book.spared_by_chaos(id));
            send(&mut book);
            book.lost(id, 0, Blame::Chaos(&crash));
        }
        assert!(book.spared_by_chaos(id));
    }

    #[test]
    fn abandoned_tasks_are_not_run_and_joined() {
        let mut book = TaskBook::new(3);
        let sent = book.put(json!(1), TaskOptions::default());
        book.put(json!(2), TaskOptions::default());
        book.put(json!(3), TaskOptions::default());
        send(&mut book);
        book.abandon_waiting();
        assert_eq!(book.unfinished(), 1);
        book.abandon(sent);
        book.abandon(sent);
        assert!(book.is_joined());
        assert_eq!(book.counts().not_run, 3);
        assert_eq!(book.total(), 3);
    }

    #[test]
    fn a_cancelled_task_is_not_run_and_a_sent_one_cannot_be_cancelled() {
        let mut book = TaskBook::new(3);
        let sent = book.put(json!(1), TaskOptions::default());
        let waiting = book.put(json!(2), TaskOptions::default());
        send(&mut book);
        assert!(!book.cancel(sent));
        assert!(book.cancel(waiting));
        assert!(!book.cancel(waiting), "ended once");
        assert_eq!(book.unfinished(), 1);
        assert_eq!(book.counts().not_run, 1);
        assert!(book.take().is_none());
    }

    #[test]
    fn a_task_of_its_own_attempt_limit_is_quarantined_at_it() {
        let mut book = TaskBook::new(3);
        let once = TaskOptions {
            max_attempts: Some(1),
            ..TaskOptions::default()
        };
        let id = book.put(json!(1), once);
        send(&mut book);
        let (_, event) = book.lost(id, 0, Blame::Culprit(&crash()));
        assert!(
            matches!(
                event,
                Some(Event::Task {
                    outcome: TaskOutcome::Failed(_),
                    ..
                })
            ),
            "one death ends a task allowed one attempt"
        );
        assert_eq!(book.counts().failed, 1);
    }
}

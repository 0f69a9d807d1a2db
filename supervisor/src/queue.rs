//! The joinable task queue: Python's `JoinableQueue` semantics, single-threaded.
//!
//! `put` adds a task and counts it unfinished; `task_done` marks one finished; the
//! queue is joined when nothing is unfinished. Retries go to the front so a task
//! that crashed a worker is not starved behind the whole backlog.

use std::collections::VecDeque;

use procpool_child::TaskId;

/// Task ids waiting for a worker, and the count of tasks not yet done.
#[derive(Debug, Default)]
pub struct JoinableQueue {
    waiting: VecDeque<TaskId>,
    unfinished: usize,
    next_id: TaskId,
}

impl JoinableQueue {
    /// Adds a new task and returns its id.
    pub fn put(&mut self) -> TaskId {
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push_back(id);
        self.unfinished += 1;
        id
    }

    /// Puts a task that was taken but not finished back at the front.
    pub fn retry(&mut self, id: TaskId) {
        self.waiting.push_front(id);
    }

    /// The task `take` would return, left in place.
    pub fn peek(&self) -> Option<TaskId> {
        self.waiting.front().copied()
    }

    /// The next task to dispatch.
    pub fn take(&mut self) -> Option<TaskId> {
        self.waiting.pop_front()
    }

    /// Takes task `id` out of the queue if it is still waiting there (not handed to a
    /// worker); the caller marks it done. O(waiting), for the rare cancel.
    pub fn remove_waiting(&mut self, id: TaskId) -> bool {
        let Some(at) = self.waiting.iter().position(|&waiting| waiting == id) else {
            return false;
        };
        self.waiting.remove(at);
        true
    }

    /// Marks one task finished.
    pub fn task_done(&mut self) {
        self.unfinished = self
            .unfinished
            .checked_sub(1)
            .expect("task_done called more times than put");
    }

    /// Removes every waiting task (on interrupt or abort) and returns them.
    pub fn drain_waiting(&mut self) -> Vec<TaskId> {
        self.waiting.drain(..).collect()
    }

    /// Tasks waiting for a worker.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Tasks put and not yet done, waiting or in flight.
    pub fn unfinished(&self) -> usize {
        self.unfinished
    }

    /// Tasks put so far.
    pub fn total(&self) -> u64 {
        self.next_id
    }

    /// Every task put has been marked done.
    pub fn is_joined(&self) -> bool {
        self.unfinished == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_only_after_every_task_is_done() {
        let mut queue = JoinableQueue::default();
        assert!(queue.is_joined());
        let a = queue.put();
        let b = queue.put();
        assert_eq!((a, b), (0, 1));
        assert_eq!(queue.take(), Some(a));
        queue.task_done();
        assert!(!queue.is_joined());
        assert_eq!(queue.take(), Some(b));
        assert!(!queue.is_joined(), "taken is not done");
        queue.task_done();
        assert!(queue.is_joined());
    }

    #[test]
    fn retries_jump_the_queue() {
        let mut queue = JoinableQueue::default();
        let first = queue.put();
        let second = queue.put();
        assert_eq!(queue.take(), Some(first));
        queue.retry(first);
        assert_eq!(queue.take(), Some(first));
        assert_eq!(queue.take(), Some(second));
        assert_eq!(queue.unfinished(), 2);
    }

    #[test]
    fn only_a_waiting_task_can_be_removed() {
        let mut queue = JoinableQueue::default();
        let taken = queue.put();
        let waiting = queue.put();
        assert_eq!(queue.take(), Some(taken));
        assert!(!queue.remove_waiting(taken));
        assert!(queue.remove_waiting(waiting));
        assert!(!queue.remove_waiting(waiting));
        assert_eq!(queue.take(), None);
    }
}

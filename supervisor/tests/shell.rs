//! The pool's I/O shell against real processes: a protocol v1 worker in `sh`.

use std::time::Duration;

use procpool_supervisor::{Event, Pool, PoolConfig, RunEnd, TaskOutcome, WorkerStart};
use serde_json::json;

/// Answers each task with its id after `seconds`, and exits at `stop`.
fn sleepy_worker(seconds: &str) -> WorkerStart {
    let script = format!(
        r#"echo '{{"type":"ready"}}'
while read -r line; do
  case "$line" in *'"type":"stop"'*) exit 0;; esac
  id=$(printf '%s' "$line" | sed 's/.*"id":\([0-9]*\).*/\1/')
  sleep {seconds}
  echo "{{\"type\":\"result\",\"id\":$id,\"output\":$id}}"
done"#
    );
    WorkerStart::Spawn {
        program: "sh".into(),
        args: vec!["-c".into(), script.into()],
    }
}

#[test]
fn every_task_is_answered_by_a_real_worker() {
    let mut pool = Pool::start(PoolConfig::new(2, sleepy_worker("0"))).unwrap();
    let ids: Vec<u64> = (0..20).map(|n| pool.put(json!(n))).collect();
    let mut answered = Vec::new();
    while let Some(event) = pool.next_event().unwrap() {
        if let Event::Task { id, outcome, .. } = event {
            assert_eq!(outcome, TaskOutcome::Output(json!(id)));
            answered.push(id);
        }
    }
    answered.sort_unstable();
    assert_eq!(answered, ids);
    let report = pool.shutdown();
    assert_eq!((report.end, report.tasks_ok), (RunEnd::Completed, 20));
}

#[test]
fn an_interrupt_from_code_lets_running_tasks_finish_and_runs_nothing_new() {
    let mut config = PoolConfig::new(2, sleepy_worker("0.3"));
    config.grace = Duration::from_secs(5);
    let mut pool = Pool::start(config).unwrap();
    for n in 0..8 {
        pool.put(json!(n));
    }
    let mut interrupted = false;
    let mut ok = 0;
    while let Some(event) = pool.next_event().unwrap() {
        match event {
            Event::Task { .. } if !interrupted => {
                ok += 1;
                pool.interrupt();
                interrupted = true;
            }
            Event::Task { .. } => ok += 1,
            Event::Interrupted { again } => assert!(!again),
            _ => {}
        }
    }
    assert!(pool.interrupted());
    let report = pool.shutdown();
    assert_eq!(report.end, RunEnd::Interrupted);
    assert_eq!(report.tasks_ok, ok);
    // The first answer, and the one the other worker was running: no more.
    assert!((1..=2).contains(&ok), "{report:?}");
    assert_eq!(report.tasks_ok + report.tasks_not_run, 8, "{report:?}");
}

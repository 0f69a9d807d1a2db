//! The supervisor as a library: a pool of two Python workers
//! (`examples/python/worker.py`, which doubles numbers), ten tasks put, each result
//! printed as it arrives (in any order), then the run report.
//!
//! ```sh
//! cargo run --example pool
//! ```

use procpool_supervisor::{Event, Pool, PoolConfig, TaskOutcome, WorkerStart};
use serde_json::json;

fn main() -> Result<(), procpool_supervisor::PoolError> {
    let worker = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python/worker.py");
    let start = WorkerStart::Spawn {
        program: "python3".into(),
        args: vec![worker.into()],
    };
    let mut pool = Pool::start(PoolConfig::new(2, start))?;
    let mut sum = 0;
    for n in 1..=10 {
        pool.put(json!(n));
    }
    while let Some(event) = pool.next_event()? {
        match event {
            Event::Task {
                id,
                outcome: TaskOutcome::Output(output),
                ..
            } => {
                println!("task {id}: {output}");
                sum += output.as_i64().unwrap_or_default();
            }
            Event::Task { id, outcome, .. } => println!("task {id} failed: {outcome:?}"),
            _ => {}
        }
    }
    let report = pool.shutdown();
    println!("sum of doubles: {sum}");
    println!(
        "{} ok, {} failed in {:.3}s",
        report.tasks_ok,
        report.tasks_error + report.tasks_failed,
        report.wall.as_secs_f64()
    );
    Ok(())
}

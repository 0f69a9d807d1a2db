//! The worker side of the built-in workloads: `procpool worker <workload>`, or the
//! body of a forked worker.

use crate::registry::{Registration, WorkerSide};

/// Serves tasks of `workload` on stdin/stdout until `stop`; returns the exit code.
pub fn serve_builtin(workload: &Registration) -> i32 {
    let started = match &workload.worker {
        WorkerSide::Builtin(start) => start(),
        WorkerSide::ChildOnly { usage } => Err(usage.to_string()),
    };
    let mut run_task = match started {
        Ok(run_task) => run_task,
        Err(err) => {
            eprintln!(
                "procpool worker: cannot start a {} worker: {err}",
                workload.name
            );
            return 1;
        }
    };
    match procpool_child::serve(|task| run_task(&task.input)) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("procpool worker: lost the supervisor's pipes: {err}");
            1
        }
    }
}

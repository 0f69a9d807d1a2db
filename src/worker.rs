//! The worker side of the built-in workloads: `procpool worker <workload>`, or the
//! body of a forked worker.

use crate::workloads::Kind;

/// Serves tasks of `kind` on stdin/stdout until `stop`; returns the exit code.
pub fn serve_builtin(kind: Kind) -> i32 {
    let mut run_task = match kind.worker() {
        Ok(run_task) => run_task,
        Err(err) => {
            eprintln!(
                "procpool worker: cannot start a {} worker: {err}",
                kind.name()
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

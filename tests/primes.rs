//! Prime counts from the real binary, across pool sizes and start modes.
//!
//! A wrong count means a range was lost, counted twice, or mis-sieved somewhere
//! between plan, dispatch, worker and reduce.

mod util;

use serde_json::{json, Value};
use util::Procpool;

/// pi(x) for the limits below, from the literature.
const PI: [(&str, u64); 3] = [("1e6", 78_498), ("2e6", 148_933), ("1e7", 664_579)];

/// `procpool run primes --limit LIMIT --json [extra...]`, checked for a clean run.
fn count_primes(limit: &str, extra: &[&str]) -> Value {
    let mut args = vec!["run", "primes", "--limit", limit, "--json", "--quiet"];
    args.extend_from_slice(extra);
    let output = Procpool::new(&args).run(0);
    let report = output.json();
    let context = format!("{args:?}\n{output}");
    assert_eq!(report["end"], json!("completed"), "{context}");
    assert_eq!(report["tasks_ok"], report["tasks_total"], "{context}");
    assert!(report["tasks_total"].as_u64().unwrap() > 0, "{context}");
    for field in ["tasks_error", "tasks_failed", "tasks_not_run", "retries"] {
        assert_eq!(report[field], json!(0), "{field}: {context}");
    }
    for worker in report["workers"].as_array().unwrap() {
        assert_eq!(worker["exit"], json!({"exited": 0}), "{context}");
        assert_eq!(worker["restarts"], json!(0), "{context}");
    }
    report
}

fn counts_in(start: &str) {
    for procs in ["1", "2", "8"] {
        for (limit, pi) in PI {
            let report = count_primes(limit, &["--procs", procs, "--start", start]);
            assert_eq!(
                report["result"]["count"],
                json!(pi),
                "pi({limit}) with --procs {procs} --start {start}"
            );
            // No more workers start than there are tasks.
            let tasks = report["tasks_total"].as_u64().unwrap();
            let workers = procs.parse::<u64>().unwrap().min(tasks);
            assert_eq!(report["procs"], json!(workers));
            assert_eq!(report["start"], json!(start));
            assert_eq!(report["workers"].as_array().unwrap().len() as u64, workers);
        }
    }
}

#[test]
fn counts_with_spawned_workers() {
    counts_in("spawn");
}

#[test]
fn counts_with_forked_workers() {
    counts_in("fork");
}

#[test]
fn counts_many_small_ranges() {
    // 1000 tasks of 1e4 numbers: many answers in flight per worker, reduced in any order.
    let report = count_primes("1e7", &["--procs", "2", "--range", "1e4"]);
    assert_eq!(report["result"]["count"], json!(664_579));
    assert_eq!(report["tasks_total"], json!(1000));
}

#[test]
fn counts_below_one_billion_on_every_core() {
    let report = count_primes("1e9", &[]);
    assert_eq!(report["result"]["count"], json!(50_847_534));
    assert_eq!(report["result"]["limit"], json!(1_000_000_000u64));
}

#[test]
fn two_tasks_on_two_workers_run_side_by_side() {
    // Before any task is timed, the pool sends one task per ready worker: the first
    // worker to be ready must not take the second worker's task too.
    let output = Procpool::new([
        "run", "primes", "--limit", "2e9", "--range", "1e9", "--procs", "2", "--json", "--quiet",
    ])
    .run(0);
    let report = output.json();
    let done: Vec<u64> = report["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["tasks_done"].as_u64().unwrap())
        .collect();
    assert_eq!(done, vec![1, 1], "{output}");
    assert_eq!(report["result"]["count"], json!(98_222_287), "{output}");
}

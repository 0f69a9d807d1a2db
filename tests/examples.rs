//! The programs in `examples/` build and do what their docs say.
//!
//! `cargo test` builds the examples already; the test asks cargo for them again
//! (a no-op then, and a build under `cargo test --test examples`) and takes their
//! paths from cargo's own report, whatever the target dir or profile.

mod util;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};
use util::{assert_no_orphans, manifest_dir, worker_pids, Procpool};

/// Example name → executable, built once per test run.
fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<BTreeMap<String, PathBuf>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        // Build with the profile of this test (target/<profile>/deps/examples-...).
        let exe = std::env::current_exe().expect("the test's own path");
        let release = exe
            .parent()
            .and_then(|deps| deps.parent())
            .map(|p| p.ends_with("release"));
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args([
            "build",
            "--examples",
            "--message-format=json-render-diagnostics",
        ]);
        if release == Some(true) {
            cargo.arg("--release");
        }
        let output = cargo
            .current_dir(manifest_dir())
            .output()
            .expect("running cargo");
        assert!(
            output.status.success(),
            "cargo build --examples failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|message| message["target"]["kind"] == json!(["example"]))
            .filter_map(|message| {
                let name = message["target"]["name"].as_str()?.to_string();
                Some((name, PathBuf::from(message["executable"].as_str()?)))
            })
            .collect()
    });
    built
        .get(name)
        .unwrap_or_else(|| panic!("no example {name:?} among {built:?}"))
        .clone()
}

#[test]
fn the_rust_worker_serves_noop_tasks() {
    let worker = example("rust_worker");
    let output = Procpool::new([
        "run",
        "noop",
        "--tasks",
        "500",
        "--procs",
        "2",
        "--json",
        "--child",
        worker.to_str().expect("a UTF-8 path"),
    ])
    .run(0);
    let report = output.json();
    assert_eq!(report["result"]["tasks"], json!(500), "{output}");
    assert_eq!(report["tasks_ok"], json!(500), "{output}");
    for worker in report["workers"].as_array().unwrap() {
        assert_eq!(worker["exit"], json!({"exited": 0}), "{output}");
    }
    assert_no_orphans(&worker_pids(&report), Duration::ZERO);
}

#[test]
fn the_pool_example_prints_every_doubled_number() {
    let output = Procpool::program(example("pool"), [""; 0]).run(0);
    let mut results: Vec<&str> = output
        .stdout
        .lines()
        .filter(|line| line.starts_with("task "))
        .collect();
    results.sort_unstable();
    let mut expected: Vec<String> = (0..10)
        .map(|id| format!("task {id}: {}", 2 * (id + 1)))
        .collect();
    expected.sort_unstable();
    assert_eq!(results, expected, "{output}");
    assert!(output.stdout.contains("sum of doubles: 110\n"), "{output}");
    assert!(output.stdout.contains("10 ok, 0 failed in "), "{output}");
}

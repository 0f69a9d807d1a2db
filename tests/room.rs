//! Sizes are checked against the machine before any work: a run that would need more
//! memory or disk than there is is refused at once (exit 2) with both sizes, instead
//! of growing until the OOM killer or a full disk stops it. (Every machine these tests
//! run on has far less than the terabytes asked for here.)

mod util;

use std::time::{Duration, Instant};

use util::Procpool;

#[test]
fn sizes_past_the_machine_are_refused_before_any_work() {
    for (args, needs) in [
        (
            vec!["run", "matmul", "--n", "200000"],
            "needs 894.1 GiB of memory",
        ),
        (
            vec![
                "run",
                "mandelbrot",
                "--width",
                "200000",
                "--height",
                "200000",
            ],
            "needs 149.0 GiB of memory",
        ),
        (
            vec!["run", "colmeans", "--gen-rows", "1e12"],
            "needs 58.2 TiB of disk space",
        ),
        (
            vec!["gen", "array", "--rows", "1e7", "--cols", "1e6", "big.npy"],
            "needs 72.8 TiB of disk space",
        ),
    ] {
        let started = Instant::now();
        let run = Procpool::new(&args);
        let dir = run.dir().to_path_buf();
        let output = run.run(2);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{args:?} took its time"
        );
        assert!(
            output.stderr.contains(needs)
                && output
                    .stderr
                    .contains("is available; choose a smaller size, or pass --force"),
            "{args:?}\n{output}"
        );
        assert_eq!(output.stderr.lines().count(), 1, "one line\n{output}");
        assert!(!dir.join("big.npy").exists(), "no file left behind");
    }
}

#[test]
fn a_memory_cgroups_limit_is_the_memory_available() {
    // 512 MiB of matrices (A, B and C at n = 4800) fit the machine, not a 256 MiB limit.
    let Some(memory) = util::cgroup::or_skip(
        util::cgroup::TestCgroup::memory(256 << 20),
        "a_memory_cgroups_limit_is_the_memory_available",
    ) else {
        return;
    };
    let output = Procpool::new(["run", "matmul", "--n", "4800"])
        .after_shell(&memory.join_script())
        .run(2);
    assert!(
        output.stderr.contains("needs 527.3 MiB of memory, and ")
            && output.stderr.contains(" MiB is available"),
        "{output}"
    );
    let available: f64 = output
        .stderr
        .split("of memory, and ")
        .nth(1)
        .and_then(|rest| rest.split(" MiB").next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no available size\n{output}"));
    assert!(available <= 256.0, "{output}");
}

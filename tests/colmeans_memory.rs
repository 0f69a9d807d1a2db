//! colmeans keeps memory bounded: a run over a file five times larger than a memory
//! limit imposed on it (a child memory cgroup holding the supervisor and its workers)
//! finishes with the right means and without an OOM kill, starting from a cold page
//! cache. Where no cgroup can be made (not root, no writable hierarchy), the test says
//! so and checks the workers' own peak RSS (VmHWM, reported per task) instead.

mod util;

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use procpool_shm::{decode_f64, NpyHeader};
use util::cgroup::TestCgroup;
use util::Procpool;

const LIMIT: u64 = 64 << 20;
const ROWS: &str = "5242880"; // × 8 columns × 8 bytes = 320 MiB
const COLS: usize = 8;

/// Means by streaming the file here with `read` and Kahan sums: independent of
/// procpool's maps, tiles and pairwise sums.
fn streamed_means(path: &Path) -> Vec<f64> {
    let mut file = BufReader::with_capacity(1 << 20, File::open(path).unwrap());
    let header = NpyHeader::read_from(&mut file).unwrap();
    let (rows, cols) = (header.shape[0], header.shape[1]);
    let mut sums = vec![(0.0f64, 0.0f64); cols];
    let mut raw = vec![0u8; 8 * 8192 * cols];
    let mut values = vec![0.0; 8192 * cols];
    let mut left = rows;
    while left > 0 {
        let n = left.min(8192);
        file.read_exact(&mut raw[..8 * n * cols]).unwrap();
        decode_f64(header.dtype, &raw[..8 * n * cols], &mut values[..n * cols]).unwrap();
        for row in values[..n * cols].chunks_exact(cols) {
            for ((sum, comp), v) in sums.iter_mut().zip(row) {
                let y = v - *comp;
                let t = *sum + y;
                *comp = (t - *sum) - y;
                *sum = t;
            }
        }
        left -= n;
    }
    sums.iter().map(|(s, _)| s / rows as f64).collect()
}

/// Evicts the file from the page cache, so the run reads it from disk.
fn drop_page_cache(path: &Path) {
    let file = File::open(path).unwrap();
    let _ = file.sync_all();
    posix_fadvise(file.as_fd(), 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED).unwrap();
    // Root may drop every clean page too; harmless if not allowed.
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
}

#[test]
fn means_of_a_file_five_times_the_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.npy");
    Procpool::new(["gen", "array", "--rows", ROWS, "--cols", "8", "big.npy"])
        .in_dir(dir.path())
        .run(0);
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size >= 5 * LIMIT, "{size} bytes");
    let expected = streamed_means(&path);
    assert_eq!(expected.len(), COLS);
    drop_page_cache(&path);

    let args = [
        "run", "colmeans", "--file", "big.npy", "--procs", "2", "--json", "--quiet",
    ];
    let cgroup = TestCgroup::memory(LIMIT);
    let mut run = Procpool::new(args).in_dir(dir.path());
    match &cgroup {
        Ok(cgroup) => {
            println!(
                "cgroup {} (v{}), limit {} MiB, file {} MiB",
                cgroup.dir.display(),
                if cgroup.v1 { 1 } else { 2 },
                LIMIT >> 20,
                size >> 20
            );
            run = run.after_shell(&cgroup.join_script());
        }
        Err(why) => println!(
            "no memory cgroup could be made ({why}); checking the workers' peak RSS instead"
        ),
    }
    let started = Instant::now();
    let output = run.timeout(Duration::from_secs(60)).run(0);
    let report = output.json();
    let result = &report["result"];
    println!(
        "{:.1}s, {:.2} GB/s, worker peak RSS {} KiB",
        started.elapsed().as_secs_f64(),
        result["gb_per_s"].as_f64().unwrap(),
        result["worker_peak_rss_kib"]
    );
    assert_eq!(report["retries"], 0, "no worker died\n{output}");
    for worker in report["workers"].as_array().unwrap() {
        assert_eq!(worker["restarts"], 0, "{output}");
    }
    let means: Vec<f64> = result["means"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for (c, (got, want)) in means.iter().zip(&expected).enumerate() {
        assert!(
            (got - want).abs() <= 1e-12 * want.abs(),
            "column {c}: {got} vs {want}"
        );
    }
    assert_eq!(means.len(), COLS);
    // Each worker holds a few MiB of the file at a time, not its tiles, not the file.
    let peak_kib = result["worker_peak_rss_kib"].as_u64().unwrap();
    assert!(
        peak_kib > 0 && peak_kib < 32 << 10,
        "worker peak RSS {peak_kib} KiB"
    );
    if let Ok(cgroup) = &cgroup {
        let (peak, failcnt) = if cgroup.v1 {
            (
                cgroup.read("memory.max_usage_in_bytes"),
                cgroup.read("memory.failcnt"),
            )
        } else {
            (cgroup.read("memory.peak"), cgroup.read("memory.events"))
        };
        let oom = if cgroup.v1 {
            cgroup.read("memory.oom_control")
        } else {
            cgroup.read("memory.events")
        };
        println!("cgroup peak {peak} bytes (page cache included), failcnt {failcnt}; {oom:?}");
        assert!(
            !oom.lines()
                .any(|l| l.starts_with("oom_kill ") && l != "oom_kill 0"),
            "the OOM killer ran: {oom}"
        );
    }
}

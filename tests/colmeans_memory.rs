//! colmeans keeps memory bounded: a run over a file five times larger than a memory
//! limit imposed on it (a child memory cgroup holding the supervisor and its workers)
//! finishes with the right means and without an OOM kill, starting from a cold page
//! cache. Where no cgroup can be made (not root, no writable hierarchy), the test says
//! so and checks the workers' own peak RSS (VmHWM, reported per task) instead.

mod util;

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use procpool_shm::{decode_f64, NpyHeader};
use util::Procpool;

const LIMIT: u64 = 64 << 20;
const ROWS: &str = "5242880"; // × 8 columns × 8 bytes = 320 MiB
const COLS: usize = 8;

/// A child memory cgroup with a limit, removed when dropped.
struct Cgroup {
    dir: PathBuf,
    /// v1 names its files memory.*_in_bytes; v2 memory.max / memory.peak.
    v1: bool,
}

impl Cgroup {
    /// Under this process's own memory cgroup (v1), or its v2 cgroup.
    fn create(limit: u64) -> Result<Cgroup, String> {
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        let name = format!("procpool-colmeans-test-{}", std::process::id());
        let mut tried = Vec::new();
        for line in own.lines() {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next(), fields.next(), fields.next());
            let (Some(controllers), Some(path)) = (controllers, path) else {
                continue;
            };
            let candidates: Vec<(PathBuf, bool)> = if controllers.split(',').any(|c| c == "memory")
            {
                vec![(
                    Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/')),
                    true,
                )]
            } else if controllers.is_empty() {
                ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
                    .iter()
                    .map(|root| (Path::new(root).join(path.trim_start_matches('/')), false))
                    .collect()
            } else {
                continue;
            };
            for (parent, v1) in candidates {
                let limit_file = if v1 {
                    "memory.limit_in_bytes"
                } else {
                    "memory.max"
                };
                if !parent.exists() {
                    tried.push(format!("{} does not exist", parent.display()));
                    continue;
                }
                let dir = parent.join(&name);
                match std::fs::create_dir(&dir) {
                    Ok(()) => {}
                    Err(err) => {
                        tried.push(format!("{}: {err}", dir.display()));
                        continue;
                    }
                }
                let cgroup = Cgroup { dir, v1 };
                match std::fs::write(cgroup.dir.join(limit_file), limit.to_string()) {
                    Ok(()) => return Ok(cgroup),
                    Err(err) => tried.push(format!("{limit_file}: {err}")),
                }
            }
        }
        Err(tried.join("; "))
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty once procpool and its workers have exited; retry briefly for stragglers.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

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
    let cgroup = Cgroup::create(LIMIT);
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
            // The shell joins the cgroup, then execs procpool: same pid, so the
            // supervisor and every worker it starts are inside from the first byte.
            run = run.after_shell(&format!(
                "echo $$ > '{}/cgroup.procs' || exit 97",
                cgroup.dir.display()
            ));
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

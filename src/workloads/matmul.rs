//! `matmul`: C = A·B with A, B and C in shared memory; one task per row block of C.
//!
//! The supervisor puts A and B (generated from a seed, or read from `.npy` files of any
//! supported dtype and order, converted once to f64 C order) and a zeroed C into shared
//! arrays. Each task is a row range; the worker multiplies those rows of A by B with a
//! single-threaded SIMD kernel and writes them into C. No matrix data crosses a pipe.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use procpool_child::{TaskId, WorkerEnv};
use procpool_shm::{matmul_rows, read_npy_f64, write_npy, Element, SharedArray};
use procpool_supervisor::PoolReport;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{SharedArrayUse, Summary, TypedHandler, Workload};
use crate::out_file::OutFile;
use crate::room;
use crate::splitmix::SplitMix64;

/// Options of `procpool run matmul`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Size of the generated square matrices A and B (ignored with --a/--b).
    #[arg(long, default_value_t = 2048, value_parser = crate::parse::whole::<usize>(1, u64::MAX))]
    pub n: usize,
    /// Rows of C per task [default: about 2 tasks per worker, 16 to 512 rows; bigger
    /// blocks keep the kernel busier, bench/BENCHMARKS.md has the measurement].
    #[arg(long, value_parser = crate::parse::whole::<usize>(1, u64::MAX))]
    pub block: Option<usize>,
    /// Read A from this .npy file (2-D; f8, f4, i8, i4 or u1; any byte order; C or Fortran order).
    #[arg(long, requires = "b")]
    pub a: Option<PathBuf>,
    /// Read B from this .npy file.
    #[arg(long, requires = "a")]
    pub b: Option<PathBuf>,
    /// Seed of the generated A and B.
    #[arg(long, default_value_t = 1, value_parser = crate::parse::count)]
    pub seed: u64,
    /// Write C to this .npy file (f8, C order).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The pool's `--force`: go on even if the arrays look larger than free memory.
    #[arg(from_global)]
    pub force: bool,
    /// Verify C against an independent computation (Freivalds' check plus sampled entries).
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Input {
    lo: usize,
    hi: usize,
}

/// A task's answer: the rows written and, optionally, where the worker's time went:
/// mapping the block's pages of A and C (if the worker does that apart), then the
/// kernel. A worker may also answer the bare row count.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Output {
    Timed {
        rows: u64,
        #[serde(default)]
        prefault_s: Option<f64>,
        kernel_s: f64,
    },
    Rows(u64),
}

/// Seconds the workers spent on completed tasks, by phase; `prefault` while every
/// answer said.
#[derive(Debug, Clone, Copy)]
struct TaskSeconds {
    prefault: Option<f64>,
    kernel: f64,
}

/// Holds the shared matrices and hands out row blocks.
pub struct Matmul {
    a: SharedArray,
    b: SharedArray,
    c: SharedArray,
    block: usize,
    next_row: usize,
    rows_done: usize,
    /// The seconds of all completed tasks, while every answer carried them.
    task_seconds: Option<TaskSeconds>,
    args: Args,
    prepared_in: f64,
    /// `--out`, claimed before the inputs are made.
    out: Option<OutFile>,
}

impl Matmul {
    /// A task writes one block of rows at most.
    fn check_rows(&self, rows: u64) -> Result<(), String> {
        match rows <= self.block as u64 {
            true => Ok(()),
            false => Err(format!(
                "{rows} rows written, more than a task's block of {}",
                self.block
            )),
        }
    }

    /// Checks C = A·B without recomputing it: for random vectors x, C·x must equal
    /// A·(B·x) (Freivalds), and sampled entries must equal their dot products.
    fn verify(&self) -> Result<()> {
        let (a, b, c) = (
            self.a.to_vec::<f64>()?,
            self.b.to_vec::<f64>()?,
            self.c.to_vec::<f64>()?,
        );
        let (m, k, n) = (self.a.shape()[0], self.a.shape()[1], self.b.shape()[1]);
        let mut rng = SplitMix64::new(0x5eed);
        for _ in 0..2 {
            let x: Vec<f64> = (0..n).map(|_| rng.unit()).collect();
            let bx: Vec<f64> = (0..k).map(|p| dot(&b[p * n..(p + 1) * n], &x)).collect();
            for i in 0..m {
                let expected = dot(&a[i * k..(i + 1) * k], &bx);
                let got = dot(&c[i * n..(i + 1) * n], &x);
                let scale: f64 = a[i * k..(i + 1) * k].iter().map(|v| v.abs()).sum::<f64>()
                    * b.iter().take(n).map(|v| v.abs()).fold(1.0, f64::max)
                    * n as f64;
                ensure!(
                    (got - expected).abs() <= 1e-9 * scale.max(1.0),
                    "check failed: row {i} of C is wrong (C·x = {got}, A·(B·x) = {expected})"
                );
            }
        }
        for _ in 0..256.min(m * n) {
            let i = rng.below(m as u64) as usize;
            let j = rng.below(n as u64) as usize;
            let expected: f64 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            let got = c[i * n + j];
            ensure!(
                (got - expected).abs() <= 1e-9 * expected.abs().max(1.0) * k as f64,
                "check failed: C[{i}, {j}] = {got}, expected {expected}"
            );
        }
        Ok(())
    }
}

fn load(name: &str, path: &std::path::Path) -> Result<SharedArray> {
    let (shape, data) = read_npy_f64(path)?;
    ensure!(
        shape.len() == 2,
        "{}: matmul needs a 2-D matrix, found shape {shape:?}",
        path.display()
    );
    Ok(SharedArray::from_f64(name, &shape, &data)?)
}

fn generated(name: &str, rows: usize, cols: usize, seed: u64) -> Result<SharedArray> {
    let mut array = SharedArray::create(name, f64::DTYPE, &[rows, cols])?;
    let mut rng = SplitMix64::new(seed);
    let mut row = vec![0.0; cols];
    for index in 0..rows {
        row.fill_with(|| 2.0 * rng.unit() - 1.0);
        array.write_rows(index..index + 1, &row)?;
    }
    Ok(array)
}

fn dot(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

impl Workload for Matmul {
    const NAME: &'static str = "matmul";
    const ABOUT: &'static str = "Multiply matrices in shared memory, one row block of C per task";
    type Args = Args;
    type Input = Input;
    type Output = Output;

    fn plan(args: &Args, procs: usize) -> Result<Matmul> {
        let started = Instant::now();
        let out = args.out.as_deref().map(OutFile::claim).transpose()?;
        let (a, b) = match (&args.a, &args.b) {
            (Some(a), Some(b)) => (load("a", a)?, load("b", b)?),
            _ => {
                let n = args.n;
                let matrices = (n as u64).saturating_mul(n as u64).saturating_mul(3 * 8);
                room::ensure_room(
                    &format!("matmul --n {n} (A, B and C, {n}×{n} f8 each, in shared memory)"),
                    matrices,
                    "memory",
                    room::memory_available(),
                    args.force,
                )?;
                (
                    generated("a", n, n, args.seed)?,
                    generated("b", n, n, args.seed.wrapping_add(1))?,
                )
            }
        };
        let (m, k) = (a.shape()[0], a.shape()[1]);
        let (k2, n) = (b.shape()[0], b.shape()[1]);
        ensure!(
            k == k2,
            "cannot multiply A ({m}x{k}) by B ({k2}x{n}): A's columns must equal B's rows"
        );
        if args.a.is_some() {
            room::ensure_room(
                &format!("C ({m}×{n} f8, in shared memory)"),
                (m as u64).saturating_mul(n as u64).saturating_mul(8),
                "memory",
                room::memory_available(),
                args.force,
            )?;
        }
        let c = SharedArray::create("c", f64::DTYPE, &[m, n])?;
        let block = match args.block {
            Some(block) => block,
            None => (m / (procs * 2)).clamp(16, 512),
        };
        Ok(Matmul {
            a,
            b,
            c,
            block,
            next_row: 0,
            rows_done: 0,
            task_seconds: Some(TaskSeconds {
                prefault: Some(0.0),
                kernel: 0.0,
            }),
            args: args.clone(),
            prepared_in: started.elapsed().as_secs_f64(),
            out,
        })
    }

    fn next_input(&mut self) -> Option<Result<Input>> {
        let rows = self.a.shape()[0];
        if self.next_row >= rows {
            return None;
        }
        let lo = self.next_row;
        let hi = (lo + self.block).min(rows);
        self.next_row = hi;
        Some(Ok(Input { lo, hi }))
    }

    fn reduce(&mut self, _id: TaskId, answer: Output) -> Result<(), String> {
        let rows = match answer {
            Output::Timed {
                rows,
                prefault_s,
                kernel_s,
            } => {
                if !(kernel_s >= 0.0 && prefault_s.is_none_or(|seconds| seconds >= 0.0)) {
                    return Err(format!(
                        "kernel_s {kernel_s}, prefault_s {prefault_s:?}: seconds cannot be negative"
                    ));
                }
                self.check_rows(rows)?;
                self.task_seconds = self.task_seconds.map(|total| TaskSeconds {
                    prefault: total.prefault.zip(prefault_s).map(|(sum, s)| sum + s),
                    kernel: total.kernel + kernel_s,
                });
                rows
            }
            Output::Rows(rows) => {
                self.check_rows(rows)?;
                self.task_seconds = None;
                rows
            }
        };
        // At most one block each, so the sum of all is bounded by the tasks' count.
        self.rows_done += rows as usize;
        Ok(())
    }

    fn total_tasks(&self) -> Option<u64> {
        Some(self.a.shape()[0].div_ceil(self.block) as u64)
    }

    fn one_machine(&self) -> Option<&'static str> {
        Some("its workers read A and B and write C in shared memory on this machine")
    }

    fn shared_arrays(&self) -> Vec<SharedArrayUse<'_>> {
        vec![
            SharedArrayUse::read_only("a", &self.a),
            SharedArrayUse::read_only("b", &self.b),
            SharedArrayUse::writable("c", &self.c),
        ]
    }

    fn summary(mut self, report: &PoolReport) -> Result<Summary> {
        let (m, k, n) = (self.a.shape()[0], self.a.shape()[1], self.b.shape()[1]);
        ensure!(
            self.rows_done == m,
            "workers reported {} rows of C, expected {m}",
            self.rows_done
        );
        let flops = 2.0 * m as f64 * k as f64 * n as f64;
        let compute = report.wall.as_secs_f64();
        let gflops = flops / compute / 1e9;
        // The kernel's own speed, without worker start, mapping fresh pages, dispatch
        // and shutdown: flops over the seconds the workers spent in it.
        let kernel_gflops = self
            .task_seconds
            .filter(|seconds| seconds.kernel > 0.0)
            .map(|seconds| flops / seconds.kernel / 1e9);
        let mut checked = Value::Null;
        if self.args.check {
            let started = Instant::now();
            self.verify()?;
            checked = json!(started.elapsed().as_secs_f64());
        }
        if let Some(out) = self.out.take() {
            write_npy(out.temp_path(), &[m, n], &self.c.to_vec::<f64>()?)
                .context("writing C for --out")?;
            out.commit()?;
        }
        let mut headline = format!("C = A·B, {m}x{k} · {k}x{n}, {gflops:.1} GFLOP/s");
        if let Some(kernel) = kernel_gflops {
            headline.push_str(&format!(" ({kernel:.1} per worker in the kernel)"));
        }
        headline.push_str(&format!(
            "; {} rows per task; inputs ready in {:.3}s",
            self.block, self.prepared_in
        ));
        if self.args.check {
            headline.push_str("; check passed");
        }
        if let Some(path) = &self.args.out {
            headline.push_str(&format!("; C written to {}", path.display()));
        }
        Ok(Summary::new(
            headline,
            json!({
                "m": m, "k": k, "n": n,
                "block": self.block,
                "gflops": gflops,
                "kernel_gflops_per_worker": kernel_gflops,
                "kernel_s": self.task_seconds.map(|seconds| seconds.kernel),
                "prefault_s": self.task_seconds.and_then(|seconds| seconds.prefault),
                "prepare_s": self.prepared_in,
                "check_s": checked,
                "checked": self.args.check,
                "out": self.args.out,
            }),
        ))
    }

    fn worker() -> Result<TypedHandler<Matmul>, String> {
        worker_side()
    }
}

/// Maps A, B and C once, then fills row blocks of C.
fn worker_side() -> Result<TypedHandler<Matmul>, String> {
    let env = WorkerEnv::from_env().map_err(|err| err.to_string())?;
    let a = env.open_array("a")?;
    let b = env.open_array("b")?;
    let mut c = env.open_array("c")?;
    let mut b_mapped = false;
    Ok(Box::new(move |Input { lo, hi }| {
        let started = Instant::now();
        // Map this block's pages of C (fresh, so also allocated) and of A, and all of
        // B for the first task, up front, so that the kernel's time below is its own.
        c.prefault_rows(lo..hi).map_err(|err| err.to_string())?;
        a.prefault_rows(lo..hi).map_err(|err| err.to_string())?;
        if !b_mapped {
            b.prefault_rows(0..b.rows())
                .map_err(|err| err.to_string())?;
            b_mapped = true;
        }
        let prefaulted = Instant::now();
        matmul_rows(&a, &b, &mut c, lo..hi).map_err(|err| err.to_string())?;
        Ok(Output::Timed {
            rows: (hi - lo) as u64,
            prefault_s: Some((prefaulted - started).as_secs_f64()),
            kernel_s: prefaulted.elapsed().as_secs_f64(),
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_a_row_count_or_rows_with_timings() {
        let parse = |text: &str| Output::deserialize(&serde_json::from_str::<Value>(text).unwrap());
        assert_eq!(parse("128").unwrap(), Output::Rows(128));
        assert_eq!(
            parse(r#"{"rows": 128, "kernel_s": 0.5}"#).unwrap(),
            Output::Timed {
                rows: 128,
                prefault_s: None,
                kernel_s: 0.5
            }
        );
        assert_eq!(
            parse(r#"{"rows": 2, "prefault_s": 0.1, "kernel_s": 0.5, "extra": 1}"#).unwrap(),
            Output::Timed {
                rows: 2,
                prefault_s: Some(0.1),
                kernel_s: 0.5
            }
        );
        for bad in [r#"{"rows": 128}"#, "-1", r#""128""#, "null"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}

//! `colmeans`: the mean of every column of a 2-D array on disk, out of core.
//!
//! The supervisor reads only the header and plans tiles: row ranges of a C-order array
//! (each a contiguous byte range), or column × row ranges of a Fortran-order one (each
//! column's rows contiguous). A task names the file, the tile and the dtype, never data.
//! Each worker maps just its tile read-only ([`FileWindow`]), decodes it block by block
//! into a small f64 buffer, and releases the pages behind it every few MiB, so a
//! worker's resident memory stays at a few MiB whatever the file or tile size.
//!
//! Accuracy: within a tile, sums are pairwise (blocks of 128 rows added naively, the
//! block sums combined as a binary tree, as numpy's pairwise summation does), so the
//! error grows with log(rows); the supervisor adds tile sums with Neumaier's compensated
//! summation, so billions of rows in thousands of tiles lose nothing more. Task outputs
//! are JSON: per-column sums as an array of shortest round-trip decimals (exact), which
//! costs about 20 bytes per column per tile — fine up to ~1e5 columns, since tiles of a
//! wide array hold at least 32 rows.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::Signal;
use procpool_child::TaskId;
use procpool_shm::{decode_f64, write_npy, DType, FileWindow, NpyHeader};
use procpool_supervisor::{PoolReport, TaskOutcome};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Summary, TypedHandler, Workload};
use crate::gen::{self, ArrayArgs};
use crate::out_file::OutFile;

/// Options of `procpool run colmeans`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The input: a .npy file (2-D, or 1-D as one column; f8, f4, i8, i4, u1; either
    /// byte order; C or Fortran order), or raw elements with --dtype and --cols.
    /// Without --file, a temporary dataset is generated, averaged and verified; it is
    /// unlinked at once, so it is freed at exit whatever happens.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Read --file as raw elements without a header, of this type (f8, <f4, >i8, ...).
    #[arg(long, requires_all = ["file", "cols"], value_parser = gen::parse_dtype)]
    pub dtype: Option<DType>,
    /// Columns of the raw file (with --dtype).
    #[arg(long, requires = "dtype", value_parser = crate::parse::count)]
    pub cols: Option<u64>,
    /// The raw file is column-major (with --dtype).
    #[arg(long, requires = "dtype")]
    pub fortran: bool,
    /// Rows per task [default: tiles of about 1/8 of the data per worker, 1 to 64 MiB].
    /// Fortran order: the same number of elements per task, as column (or row) ranges.
    #[arg(long, value_parser = crate::parse::count)]
    pub chunk_rows: Option<u64>,
    /// Write the means to this .npy file (1-D, f8).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Recompute the means serially in the supervisor and compare (always on without --file).
    #[arg(long)]
    pub check: bool,
    /// Also evict each tile from the page cache once read (posix_fadvise DONTNEED).
    #[arg(long)]
    pub drop_cache: bool,
    /// Rows of the generated dataset (without --file).
    #[arg(long, default_value = "4194304", conflicts_with = "file",
          value_parser = crate::parse::count)]
    pub gen_rows: u64,
    /// Columns of the generated dataset (without --file).
    #[arg(long, default_value = "8", conflicts_with = "file",
          value_parser = crate::parse::count)]
    pub gen_cols: u64,
    /// The pool's `--force`: generate the dataset even if the disk looks too small.
    #[arg(from_global)]
    pub force: bool,
    /// Sleep this long in each task after mapping the tile and before reading it
    /// (for tests that change the file mid-run).
    #[arg(long, hide = true, default_value_t = 0, value_parser = crate::parse::count)]
    pub task_delay_ms: u64,
}

/// The array in the file, as planned from its header (or --dtype/--cols).
#[derive(Debug, Clone)]
struct Source {
    path: PathBuf,
    offset: u64,
    dtype: DType,
    rows: usize,
    cols: usize,
    fortran: bool,
    file_len: u64,
}

/// Whether the file begins as a `.npy` file does (`\x93NUMPY`).
fn starts_with_npy_magic(path: &Path) -> bool {
    let mut magic = [0u8; 6];
    File::open(path)
        .and_then(|mut file| file.read_exact(&mut magic))
        .is_ok_and(|()| magic == *b"\x93NUMPY")
}

/// A mean for the headline: six decimals for everyday sizes, `%g`-like scientific
/// notation past them, so a mean of 1e300 is not 300 digits long.
fn short_number(value: f64) -> String {
    if value != 0.0 && !(1e-4..1e9).contains(&value.abs()) {
        format!("{value:.6e}")
    } else {
        format!("{value:.6}")
    }
}

impl Source {
    fn open(args: &Args, path: &Path) -> Result<Source> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("{}: cannot read the input file", path.display()))?;
        ensure!(
            !meta.is_dir(),
            "{}: is a directory; pass a .npy file, or raw data with --dtype and --cols",
            path.display()
        );
        ensure!(meta.is_file(), "{}: not a regular file", path.display());
        let file_len = meta.len();
        let source = if let Some(dtype) = args.dtype {
            ensure!(
                !starts_with_npy_magic(path),
                "{}: is a .npy file (it starts with the .npy magic); drop --dtype and --cols \
                 to read its header",
                path.display()
            );
            let cols = args.cols.context("--dtype needs --cols")? as usize;
            ensure!(cols > 0, "--cols must be at least 1");
            let row_bytes = (cols as u64).saturating_mul(dtype.size as u64);
            let left = file_len % row_bytes;
            ensure!(
                left == 0,
                "{}: {file_len} bytes is not a whole number of rows of {cols} × {dtype} \
                 ({row_bytes} bytes each; {left} bytes left over): check --cols and --dtype, \
                 or whether the file has a header",
                path.display()
            );
            Source {
                path: path.to_path_buf(),
                offset: 0,
                dtype,
                rows: (file_len / row_bytes) as usize,
                cols,
                fortran: args.fortran,
                file_len,
            }
        } else {
            let mut file = File::open(path)
                .with_context(|| format!("{}: cannot open the input file", path.display()))?;
            let header = NpyHeader::read_from(&mut file)
                .with_context(|| format!("{}: cannot read the .npy header", path.display()))?;
            let (rows, cols) = match header.shape[..] {
                [rows] => (rows, 1),
                [rows, cols] => (rows, cols),
                _ => bail!(
                    "{}: colmeans needs a 2-D array (or 1-D, as one column), found shape {:?}",
                    path.display(),
                    header.shape
                ),
            };
            header
                .check_data_len(file_len.saturating_sub(header.data_offset as u64))
                .with_context(|| format!("{}", path.display()))?;
            Source {
                path: path.to_path_buf(),
                offset: header.data_offset as u64,
                dtype: header.dtype,
                rows,
                cols,
                fortran: header.fortran_order && header.shape.len() == 2,
                file_len,
            }
        };
        ensure!(
            source.rows > 0,
            "{}: the array has 0 rows, so its column means are undefined (numpy would warn \
             and return NaN); nothing to do",
            path.display()
        );
        ensure!(
            source.cols > 0,
            "{}: the array has 0 columns, so it has no column means; nothing to do",
            path.display()
        );
        Ok(source)
    }

    fn data_bytes(&self) -> u64 {
        self.rows as u64 * self.cols as u64 * self.dtype.size as u64
    }

    /// Each column's rows are contiguous: Fortran order, or a single column.
    fn by_columns(&self) -> bool {
        self.fortran || self.cols == 1
    }

    fn order(&self) -> &'static str {
        if self.fortran {
            "Fortran order"
        } else {
            "C order"
        }
    }
}

/// One task's share of the array.
#[derive(Debug, Clone, Copy)]
struct Tile {
    rows: (usize, usize),
    cols: (usize, usize),
}

/// Splits the array into tiles of about `elements` elements.
fn tiles_of(source: &Source, elements: usize) -> Vec<Tile> {
    let (rows, cols) = (source.rows, source.cols);
    let elements = elements.max(1);
    let mut tiles = Vec::new();
    if !source.by_columns() {
        let step = (elements / cols).max(1);
        for lo in (0..rows).step_by(step) {
            tiles.push(Tile {
                rows: (lo, (lo + step).min(rows)),
                cols: (0, cols),
            });
        }
    } else if rows <= elements {
        let step = (elements / rows).max(1);
        for c0 in (0..cols).step_by(step) {
            tiles.push(Tile {
                rows: (0, rows),
                cols: (c0, (c0 + step).min(cols)),
            });
        }
    } else {
        for c in 0..cols {
            for lo in (0..rows).step_by(elements) {
                tiles.push(Tile {
                    rows: (lo, (lo + elements).min(rows)),
                    cols: (c, c + 1),
                });
            }
        }
    }
    tiles
}

/// A task: where the tile is, never the data.
#[derive(Debug, Serialize, Deserialize)]
pub struct Input {
    path: PathBuf,
    /// Byte offset of element (0, 0).
    offset: u64,
    dtype: String,
    /// The whole array's shape, for addressing.
    shape: (usize, usize),
    fortran: bool,
    rows: (usize, usize),
    cols: (usize, usize),
    #[serde(default)]
    drop_cache: bool,
    #[serde(default)]
    delay_ms: u64,
}

/// A task's answer: the tile's per-column sums (non-finite ones as strings, which JSON
/// numbers cannot hold) and the worker's peak resident memory so far.
#[derive(Debug, Serialize, Deserialize)]
pub struct Output {
    rows: (usize, usize),
    cols: (usize, usize),
    sums: Vec<Sum>,
    peak_rss_kib: u64,
}

/// Plans tiles of the file, adds up their sums.
pub struct Colmeans {
    source: Source,
    tiles: Vec<Tile>,
    next: usize,
    sums: Vec<Neumaier>,
    counted: Vec<u64>,
    peak_rss_kib: u64,
    failed_tiles: u64,
    args: Args,
    /// `--out`, claimed before any tile is read.
    out: Option<OutFile>,
    /// The dataset made without --file: its descriptor (shared with the pool, which
    /// passes it on to workers) and how long making it took.
    generated: Option<(Arc<OwnedFd>, Duration)>,
}

impl Colmeans {
    fn means(&self) -> Vec<f64> {
        self.sums
            .iter()
            .map(|sum| sum.value() / self.source.rows as f64)
            .collect()
    }
}

/// About an eighth of each worker's share per tile, between 1 and 64 MiB, and at least
/// 32 rows so that the JSON sums stay small beside the data they summarise.
fn default_tile_elements(source: &Source, procs: usize) -> usize {
    let bytes = (source.data_bytes() / (procs as u64 * 8)).clamp(1 << 20, 64 << 20);
    let elements = (bytes / source.dtype.size as u64) as usize;
    if source.by_columns() {
        elements
    } else {
        elements.max(32 * source.cols)
    }
}

/// Writes the temporary dataset for a run without --file into a file without a
/// name: it lives as long as a descriptor of it does (this process's, and the
/// workers' inherited copies), so no exit, Ctrl-C or `kill -9` can leave it behind.
fn generate(args: &Args) -> Result<(Arc<OwnedFd>, Duration)> {
    let dir = std::env::temp_dir();
    let file = unnamed_file(&dir)
        .with_context(|| format!("creating the temporary dataset in {}", dir.display()))?;
    let started = Instant::now();
    let array = ArrayArgs {
        rows: args.gen_rows,
        cols: args.gen_cols,
        dtype: DType::F64_LE,
        seed: 1,
        fortran: false,
        force: args.force,
        // Names it in progress and error messages only.
        out: dir.join("(temporary dataset)"),
    };
    let writer = file
        .try_clone()
        .context("generating the temporary dataset")?;
    gen::write_array_to(writer, &array).context("generating the temporary dataset")?;
    Ok((Arc::new(file.into()), started.elapsed()))
}

/// A new file in `dir` that has no name: `O_TMPFILE`, or where the file system lacks
/// it, a file unlinked right after it is created.
fn unnamed_file(dir: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).mode(0o600);
    if let Ok(file) = options.clone().custom_flags(nix::libc::O_TMPFILE).open(dir) {
        return Ok(file);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let path = dir.join(format!(
        "procpool-colmeans-{}-{nanos}.npy",
        std::process::id()
    ));
    let file = options.create_new(true).open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

impl Workload for Colmeans {
    const NAME: &'static str = "colmeans";
    const ABOUT: &'static str =
        "Column means of a .npy or raw file larger than memory, one tile of rows per task";
    type Args = Args;
    type Input = Input;
    type Output = Output;

    fn plan(args: &Args, procs: usize) -> Result<Colmeans> {
        let out = args.out.as_deref().map(OutFile::claim).transpose()?;
        let generated = match &args.file {
            Some(_) => None,
            None => Some(generate(args)?),
        };
        let path = match (&args.file, &generated) {
            (Some(path), _) => path.clone(),
            // The same descriptor number in the workers, which inherit it.
            (None, Some((file, _))) => format!("/proc/self/fd/{}", file.as_raw_fd()).into(),
            (None, None) => unreachable!("generated above"),
        };
        let source = Source::open(args, &path)?;
        let elements = match args.chunk_rows {
            Some(0) => bail!("--chunk-rows must be at least 1"),
            Some(rows) => (rows as usize).saturating_mul(source.cols),
            None => default_tile_elements(&source, procs),
        };
        let tiles = tiles_of(&source, elements);
        Ok(Colmeans {
            sums: vec![Neumaier::default(); source.cols],
            counted: vec![0; source.cols],
            source,
            tiles,
            next: 0,
            peak_rss_kib: 0,
            failed_tiles: 0,
            args: args.clone(),
            out,
            generated,
        })
    }

    fn one_machine(&self) -> Option<&'static str> {
        Some("its tasks are byte ranges of a file on this machine")
    }

    fn inherited_fds(&self) -> Vec<Arc<OwnedFd>> {
        self.generated
            .iter()
            .map(|(file, _)| Arc::clone(file))
            .collect()
    }

    fn next_input(&mut self) -> Option<Result<Input>> {
        let tile = *self.tiles.get(self.next)?;
        self.next += 1;
        let source = &self.source;
        Some(Ok(Input {
            path: source.path.clone(),
            offset: source.offset,
            dtype: source.dtype.descr(),
            shape: (source.rows, source.cols),
            fortran: source.by_columns(),
            rows: tile.rows,
            cols: tile.cols,
            drop_cache: self.args.drop_cache,
            delay_ms: self.args.task_delay_ms,
        }))
    }

    fn reduce(&mut self, _id: TaskId, output: Output) -> Result<(), String> {
        let ((r0, r1), (c0, c1)) = (output.rows, output.cols);
        if !(r0 <= r1 && r1 <= self.source.rows && c0 <= c1 && c1 <= self.source.cols) {
            return Err(format!(
                "a tile of rows {r0}..{r1} × columns {c0}..{c1}, outside the {}x{} array",
                self.source.rows, self.source.cols
            ));
        }
        if c1 - c0 != output.sums.len() {
            return Err(format!(
                "{} sums for the {} columns {c0}..{c1}",
                output.sums.len(),
                c1 - c0
            ));
        }
        for (column, Sum(sum)) in (c0..c1).zip(output.sums) {
            self.sums[column].add(sum);
            self.counted[column] = self.counted[column].saturating_add((r1 - r0) as u64);
        }
        self.peak_rss_kib = self.peak_rss_kib.max(output.peak_rss_kib);
        Ok(())
    }

    fn on_failure(&mut self, _id: TaskId, _attempts: u32, outcome: &TaskOutcome) -> Result<()> {
        self.failed_tiles += 1;
        let now = std::fs::metadata(&self.source.path).map(|meta| meta.len());
        if now.as_ref().ok() != Some(&self.source.file_len) {
            let now = match now {
                Ok(len) => format!("now {len} bytes"),
                Err(err) => format!("now unreadable: {err}"),
            };
            let crashed = match outcome {
                TaskOutcome::Failed(crashes) => crashes
                    .iter()
                    .any(|crash| crash.status.killed_by(Signal::SIGBUS)),
                _ => false,
            };
            bail!(
                "the input file {} changed size during the run (was {} bytes, {now}): tiles past \
                 its new end cannot be read{}; the means cannot be computed: rerun on a file \
                 nobody is writing",
                self.source.path.display(),
                self.source.file_len,
                if crashed {
                    " (the workers reading them died of SIGBUS)"
                } else {
                    " (a worker already reading one dies of SIGBUS)"
                },
            );
        }
        Ok(())
    }

    fn total_tasks(&self) -> Option<u64> {
        Some(self.tiles.len() as u64)
    }

    fn summary(mut self, report: &PoolReport) -> Result<Summary> {
        let source = &self.source;
        if self.failed_tiles > 0 || self.counted.iter().any(|&n| n != source.rows as u64) {
            return Ok(Summary::new(
                format!(
                    "no means: {} of {} tiles failed (see above)",
                    self.failed_tiles,
                    self.tiles.len()
                ),
                json!({ "means": null, "failed_tiles": self.failed_tiles }),
            ));
        }
        let means = self.means();
        let compute = report.wall.as_secs_f64();
        let gbps = source.data_bytes() as f64 / compute.max(1e-9) / 1e9;
        let mut verify_s = Value::Null;
        if self.args.check || self.generated.is_some() {
            let started = Instant::now();
            let expected = serial_means(source)?;
            for (column, (&got, &want)) in means.iter().zip(&expected).enumerate() {
                let scale = got.abs().max(want.abs()).max(f64::MIN_POSITIVE);
                ensure!(
                    (got - want).abs() <= 1e-12 * scale || (got.is_nan() && want.is_nan()),
                    "check failed: column {column} mean is {got}, a serial pass gives {want}"
                );
            }
            verify_s = json!(started.elapsed().as_secs_f64());
        }
        if let Some(out) = self.out.take() {
            write_npy(out.temp_path(), &[means.len()], &means)
                .context("writing the means for --out")?;
            out.commit()?;
        }
        let shown: Vec<String> = means.iter().take(4).map(|&m| short_number(m)).collect();
        let mut headline = format!(
            "means of {} columns × {} rows ({}, {}, {:.1} MiB) at {gbps:.2} GB/s in {} tiles; \
             peak worker RSS {:.1} MiB; means [{}{}]",
            source.cols,
            source.rows,
            source.dtype,
            source.order(),
            source.data_bytes() as f64 / (1 << 20) as f64,
            self.tiles.len(),
            self.peak_rss_kib as f64 / 1024.0,
            shown.join(", "),
            if means.len() > 4 { ", …" } else { "" },
        );
        if let Some((_, generate)) = &self.generated {
            headline.push_str(&format!(
                "\ntime: generate {:.2}s, compute {compute:.2}s, verify {:.2}s \
                 (the temporary dataset, unlinked at once, is freed at exit)",
                generate.as_secs_f64(),
                verify_s.as_f64().unwrap_or(0.0),
            ));
        } else if let Some(verify) = verify_s.as_f64() {
            headline.push_str(&format!("; check passed in {verify:.2}s"));
        }
        if let Some(path) = &self.args.out {
            headline.push_str(&format!("; written to {}", path.display()));
        }
        Ok(Summary::new(
            headline,
            json!({
                "means": means,
                "rows": source.rows,
                "cols": source.cols,
                "dtype": source.dtype.descr(),
                "fortran": source.fortran,
                "file": if self.generated.is_some() { Value::Null } else { json!(source.path) },
                "bytes": source.data_bytes(),
                "tiles": self.tiles.len(),
                "compute_s": compute,
                "gb_per_s": gbps,
                "worker_peak_rss_kib": self.peak_rss_kib,
                "generate_s": self.generated.as_ref().map(|(_, d)| d.as_secs_f64()),
                "verify_s": verify_s,
                "out": self.args.out,
            }),
        ))
    }

    fn worker() -> Result<TypedHandler<Colmeans>, String> {
        Ok(Box::new(run_task))
    }
}

/// A column sum in JSON: a number when finite, else `"nan"`, `"inf"` or `"-inf"`,
/// which JSON numbers cannot hold.
#[derive(Debug, Clone, Copy)]
struct Sum(f64);

impl Serialize for Sum {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            x if x.is_finite() => serializer.serialize_f64(x),
            x if x.is_nan() => serializer.serialize_str("nan"),
            x if x > 0.0 => serializer.serialize_str("inf"),
            _ => serializer.serialize_str("-inf"),
        }
    }
}

impl<'de> Deserialize<'de> for Sum {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(f64),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Number(x) => Ok(Sum(x)),
            Written::Text(text) => match text.as_str() {
                "nan" => Ok(Sum(f64::NAN)),
                "inf" => Ok(Sum(f64::INFINITY)),
                "-inf" => Ok(Sum(f64::NEG_INFINITY)),
                _ => Err(serde::de::Error::custom(format!(
                    "a sum is {}, not a number",
                    procpool_shm::untrusted::quote(&text)
                ))),
            },
        }
    }
}

/// Neumaier's compensated sum (Kahan–Babuška): exact to within one rounding of the
/// true sum for any number of terms, in any order.
#[derive(Debug, Clone, Copy, Default)]
struct Neumaier {
    sum: f64,
    compensation: f64,
}

impl Neumaier {
    fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.compensation += (self.sum - t) + x;
        } else {
            self.compensation += (x - t) + self.sum;
        }
        self.sum = t;
    }

    fn value(&self) -> f64 {
        if self.sum.is_finite() {
            self.sum + self.compensation
        } else {
            self.sum
        }
    }
}

/// The means by one serial pass over the file with `read`, for --check: a different
/// path (no map, no tiles, compensated sums along each column) to the same numbers.
fn serial_means(source: &Source) -> Result<Vec<f64>> {
    let mut file = BufReader::with_capacity(1 << 20, File::open(&source.path)?);
    std::io::copy(&mut (&mut file).take(source.offset), &mut std::io::sink())?;
    let (rows, cols) = (source.rows, source.cols);
    let mut sums = vec![Neumaier::default(); cols];
    let block = 1 << 16;
    let mut raw = vec![0u8; block * source.dtype.size];
    let mut values = vec![0.0; block];
    let total = rows * cols;
    let mut index = 0;
    while index < total {
        let n = block.min(total - index);
        file.read_exact(&mut raw[..n * source.dtype.size])
            .context("reading the input for --check")?;
        decode_f64(
            source.dtype,
            &raw[..n * source.dtype.size],
            &mut values[..n],
        )?;
        for (k, &v) in values[..n].iter().enumerate() {
            let i = index + k;
            let column = if source.fortran { i / rows } else { i % cols };
            sums[column].add(v);
        }
        index += n;
    }
    Ok(sums.iter().map(|s| s.value() / rows as f64).collect())
}

// ---------------------------------------------------------------- worker side

/// Elements decoded at a time: 64 KiB of f64, resident in L2.
const TILE: usize = 8192;
/// Rows added naively before a block enters the pairwise tree (numpy's block size).
const BLOCK_ROWS: usize = 128;
/// Pages are released (and the next stretch prefetched) every this many bytes.
const RELEASE_EVERY: usize = 4 << 20;

/// One task, in a worker: maps the tile, sums its columns, releases its pages.
fn run_task(input: Input) -> Result<Output, String> {
    let sums = tile_sums(&input).map_err(|err| format!("{err:#}"))?;
    Ok(Output {
        rows: input.rows,
        cols: input.cols,
        sums: sums.into_iter().map(Sum).collect(),
        peak_rss_kib: peak_rss_kib(),
    })
}

fn tile_sums(input: &Input) -> Result<Vec<f64>> {
    let dtype = DType::parse(&input.dtype)?;
    let size = dtype.size;
    let (nrows, ncols) = input.shape;
    let ((r0, r1), (c0, c1)) = (input.rows, input.cols);
    ensure!(
        r0 <= r1 && r1 <= nrows && c0 <= c1 && c1 <= ncols,
        "tile rows {r0}..{r1} × cols {c0}..{c1} is outside the array"
    );
    // Elements [first, last) in file order cover the tile.
    let (first, last) = if input.fortran {
        (c0 * nrows + r0, (c1.max(c0 + 1) - 1) * nrows + r1)
    } else {
        (r0 * ncols, r1 * ncols)
    };
    let start = input.offset + (first * size) as u64;
    let window = FileWindow::open(&input.path, start..start + ((last - first) * size) as u64)?;
    // No madvise(MADV_SEQUENTIAL): with it, cold reads of a 1 GiB file ran 1.2-1.3x
    // slower (0.72x of dd against 0.91-1.07x without; interleaved runs with caches
    // dropped, bench/BENCHMARKS.md section 3). The kernel's fault read-around plus
    // the MADV_WILLNEED prefetch below stream better, and resident memory stays
    // bounded by the MADV_DONTNEED releases either way.
    if input.delay_ms > 0 {
        std::thread::sleep(Duration::from_millis(input.delay_ms));
    }
    let mut pages = Pages {
        window: &window,
        released: 0,
        drop_cache: input.drop_cache,
    };
    let mut buf = vec![0.0; TILE];
    let sums = if input.fortran {
        let mut sums = Vec::with_capacity(c1 - c0);
        for c in c0..c1 {
            let base = (c * nrows + r0 - first) * size;
            let mut tree = Cascade::new(1);
            for lo in (r0..r1).step_by(TILE) {
                let n = TILE.min(r1 - lo);
                let at = base + (lo - r0) * size;
                window.decode_f64(at..at + n * size, dtype, &mut buf[..n])?;
                tree.push(&[pairwise(&buf[..n])]);
                pages.done_up_to(at + n * size)?;
            }
            sums.push(tree.total()[0]);
        }
        sums
    } else {
        row_sums(&window, &mut pages, dtype, r1 - r0, ncols, &mut buf)?
    };
    pages.done_up_to(window.len())?;
    Ok(sums)
}

/// Column sums of `rows` rows of `cols` columns stored row by row: each block of
/// [`BLOCK_ROWS`] rows is added into one accumulator per column (vectorised across
/// columns), and block sums are combined pairwise.
fn row_sums(
    window: &FileWindow,
    pages: &mut Pages,
    dtype: DType,
    rows: usize,
    cols: usize,
    buf: &mut [f64],
) -> Result<Vec<f64>> {
    let size = dtype.size;
    let row_bytes = cols * size;
    // Rows decoded at once: a power of two, so blocks hold exactly BLOCK_ROWS rows.
    let group = (TILE / cols).clamp(1, BLOCK_ROWS);
    let group = 1 << group.ilog2();
    let mut acc = vec![0.0; cols];
    let mut tree = Cascade::new(cols);
    let mut in_block = 0;
    let mut row = 0;
    while row < rows {
        let n = group.min(rows - row);
        let at = row * row_bytes;
        if cols <= TILE {
            let values = &mut buf[..n * cols];
            window.decode_f64(at..at + n * row_bytes, dtype, values)?;
            for values in values.chunks_exact(cols) {
                for (a, v) in acc.iter_mut().zip(values) {
                    *a += v;
                }
            }
        } else {
            // A row wider than the buffer (n == 1): decode it in pieces.
            for c in (0..cols).step_by(TILE) {
                let m = TILE.min(cols - c);
                let from = at + c * size;
                window.decode_f64(from..from + m * size, dtype, &mut buf[..m])?;
                for (a, v) in acc[c..c + m].iter_mut().zip(&buf[..m]) {
                    *a += v;
                }
            }
        }
        row += n;
        in_block += n;
        if in_block >= BLOCK_ROWS {
            tree.push(&acc);
            acc.fill(0.0);
            in_block = 0;
        }
        pages.done_up_to(row * row_bytes)?;
    }
    if in_block > 0 {
        tree.push(&acc);
    }
    Ok(tree.total())
}

/// Releases what has been read, every [`RELEASE_EVERY`] bytes, and prefetches what
/// comes next.
struct Pages<'a> {
    window: &'a FileWindow,
    released: usize,
    drop_cache: bool,
}

impl Pages<'_> {
    fn done_up_to(&mut self, end: usize) -> Result<()> {
        if end < self.released + RELEASE_EVERY && end < self.window.len() {
            return Ok(());
        }
        let range = self.released..end;
        self.window.release(range.clone())?;
        if self.drop_cache {
            self.window.drop_cache(range)?;
        }
        self.released = end;
        let ahead = (end + RELEASE_EVERY).min(self.window.len());
        self.window.prefetch(end..ahead)?;
        Ok(())
    }
}

/// numpy's pairwise summation: 8 interleaved accumulators up to 128 elements,
/// halves above. Error O(ε log n) rather than O(ε n).
fn pairwise(x: &[f64]) -> f64 {
    let n = x.len();
    if n < 8 {
        x.iter().fold(0.0, |s, v| s + v)
    } else if n <= BLOCK_ROWS {
        let mut r = [0.0; 8];
        let chunks = x.chunks_exact(8);
        let rest = chunks.remainder();
        for chunk in chunks {
            for (r, v) in r.iter_mut().zip(chunk) {
                *r += v;
            }
        }
        let mut sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for v in rest {
            sum += v;
        }
        sum
    } else {
        let half = n / 2;
        let half = half - half % 8;
        pairwise(&x[..half]) + pairwise(&x[half..])
    }
}

/// Pairwise combination of a stream of equal-width blocks of sums, like a binary
/// counter: level k holds the sum of 2^k blocks, so every value passes through at
/// most log2(blocks) additions.
struct Cascade {
    width: usize,
    levels: Vec<Option<Vec<f64>>>,
    spare: Vec<Vec<f64>>,
}

impl Cascade {
    fn new(width: usize) -> Cascade {
        Cascade {
            width,
            levels: Vec::new(),
            spare: Vec::new(),
        }
    }

    fn push(&mut self, block: &[f64]) {
        let mut carry = self.spare.pop().unwrap_or_else(|| vec![0.0; self.width]);
        carry.copy_from_slice(block);
        for level in 0.. {
            if level == self.levels.len() {
                self.levels.push(None);
            }
            match self.levels[level].take() {
                Some(older) => {
                    for (c, o) in carry.iter_mut().zip(&older) {
                        *c += o;
                    }
                    self.spare.push(older);
                }
                None => {
                    self.levels[level] = Some(carry);
                    return;
                }
            }
        }
    }

    fn total(self) -> Vec<f64> {
        let mut total = vec![0.0; self.width];
        for level in self.levels.into_iter().flatten() {
            for (t, v) in total.iter_mut().zip(&level) {
                *t += v;
            }
        }
        total
    }
}

/// This process's peak resident memory (VmHWM), in KiB; 0 if /proc says nothing.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headline_means_are_short_whatever_their_size() {
        assert_eq!(short_number(0.5), "0.500000");
        assert_eq!(short_number(0.0), "0.000000");
        assert_eq!(short_number(-123456.25), "-123456.250000");
        assert_eq!(short_number(1e300), "1.000000e300");
        assert_eq!(short_number(-2.5e-7), "-2.500000e-7");
    }

    #[test]
    fn pairwise_and_cascade_sum_exactly_where_they_should() {
        let x: Vec<f64> = (0..100_003).map(|i| (i % 97) as f64 * 0.25).collect();
        let exact: f64 = x.iter().sum();
        assert_eq!(pairwise(&x), exact);
        let mut tree = Cascade::new(2);
        for chunk in x.chunks(1000) {
            tree.push(&[pairwise(chunk), 1.0]);
        }
        assert_eq!(tree.total(), vec![exact, 101.0]);
    }

    #[test]
    fn neumaier_recovers_what_naive_summation_loses() {
        let mut sum = Neumaier::default();
        let mut naive = 0.0;
        for x in [1e16, 1.0, -1e16, 1.0] {
            sum.add(x);
            naive += x;
        }
        assert_eq!(sum.value(), 2.0);
        assert_ne!(naive, 2.0);
        sum.add(f64::INFINITY);
        assert_eq!(sum.value(), f64::INFINITY);
    }

    #[test]
    fn sums_cross_json_whole_non_finite_ones_as_strings() {
        for x in [0.0, -1.5, 1e300, f64::INFINITY, f64::NEG_INFINITY] {
            let json = serde_json::to_value(Sum(x)).unwrap();
            assert_eq!(Sum::deserialize(json).unwrap().0, x);
        }
        assert_eq!(serde_json::to_value(Sum(f64::NAN)).unwrap(), json!("nan"));
        assert!(Sum::deserialize(json!("nan")).unwrap().0.is_nan());
        assert!(Sum::deserialize(json!("lots")).is_err());
        assert!(Sum::deserialize(json!(null)).is_err());
    }

    #[test]
    fn tiles_cover_the_array_once() {
        for (rows, cols, fortran, elements) in [
            (1000, 7, false, 100),
            (1000, 7, true, 100),
            (10, 7, true, 100),
            (1000, 1, false, 64),
            (5, 3, false, 1),
        ] {
            let source = Source {
                path: PathBuf::new(),
                offset: 0,
                dtype: DType::F64_LE,
                rows,
                cols,
                fortran,
                file_len: 0,
            };
            let mut seen = vec![0u32; rows * cols];
            for tile in tiles_of(&source, elements) {
                for r in tile.rows.0..tile.rows.1 {
                    for c in tile.cols.0..tile.cols.1 {
                        seen[r * cols + c] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&n| n == 1), "{rows}x{cols} {fortran}");
        }
    }
}

//! `procpool gen array`: deterministic test arrays of any size, streamed to a `.npy`
//! file block by block (never whole in memory), with a progress line on a terminal.
//!
//! Element (row r, column c) depends only on the seed, r and c, so C-order and
//! Fortran-order files of the same seed hold the same matrix, and any chunk can be
//! recomputed without the rest. Column c is centred on `(c % 16) - 7.5` (floats) so
//! that no column mean is near zero and relative errors stay meaningful.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use procpool_shm::{DType, Element, ElementKind, NpyWriter};

use crate::splitmix::{mix, GOLDEN_GAMMA};

/// What `procpool gen` makes.
#[derive(Debug, Subcommand)]
pub enum GenArgs {
    /// A 2-D array of pseudo-random numbers, written as a .npy file.
    Array(ArrayArgs),
}

/// Options of `procpool gen array`.
#[derive(Debug, Clone, clap::Args)]
pub struct ArrayArgs {
    /// Rows.
    #[arg(long, value_parser = crate::parse::count)]
    pub rows: u64,
    /// Columns.
    #[arg(long, value_parser = crate::parse::count)]
    pub cols: u64,
    /// Element type, numpy style: f8, f4, i8, i4 (or u1), optionally with byte
    /// order: <f8 little-endian, >f8 big-endian.
    #[arg(long, default_value = "f8", value_parser = parse_dtype)]
    pub dtype: DType,
    /// Seed: the same seed gives the same values.
    #[arg(long, default_value_t = 1, value_parser = crate::parse::count)]
    pub seed: u64,
    /// Store column-major (Fortran order) instead of row-major (C order).
    #[arg(long)]
    pub fortran: bool,
    /// Write it even when it looks larger than the free disk space.
    #[arg(long)]
    pub force: bool,
    /// The .npy file to write.
    pub out: PathBuf,
}

pub fn parse_dtype(text: &str) -> Result<DType, String> {
    DType::parse(text).map_err(|err| err.to_string())
}

/// `procpool gen ...`: writes the file, returns its size in bytes.
pub fn run(args: GenArgs) -> Result<u64> {
    match args {
        GenArgs::Array(args) => write_array(&args),
    }
}

/// Elements converted and written at a time.
const BLOCK: usize = 1 << 16;

/// Writes the array `args` describes to `args.out`. Returns the file's size.
pub fn write_array(args: &ArrayArgs) -> Result<u64> {
    let file = File::create(&args.out)
        .with_context(|| format!("{}: cannot create it", args.out.display()))?;
    if let Err(err) = write_array_to(file, args) {
        // Nothing half-written stays behind under the name.
        let _ = std::fs::remove_file(&args.out);
        return Err(err);
    }
    Ok(std::fs::metadata(&args.out)?.len())
}

/// Writes the array `args` describes into `file`, open for writing at its start;
/// `args.out` only names it in messages.
pub fn write_array_to(file: File, args: &ArrayArgs) -> Result<()> {
    let (rows, cols) = (
        to_usize(args.rows, "--rows")?,
        to_usize(args.cols, "--cols")?,
    );
    let total = rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(args.dtype.size))
        .context("--rows × --cols is too large")?;
    crate::room::ensure_room(
        &format!("{} ({rows} × {cols} × {})", args.out.display(), args.dtype),
        total as u64,
        "disk space",
        crate::room::disk_available(&file),
        args.force,
    )?;
    let mut writer =
        NpyWriter::from_file(file, &args.out, args.dtype, &[rows, cols], args.fortran)?;
    let mut progress = Progress::new(&args.out, total as u64);
    let values = Values {
        seed: args.seed,
        cols: cols as u64,
    };
    let (outer, inner) = if args.fortran {
        (cols, rows)
    } else {
        (rows, cols)
    };
    // Elements in file order: the outer index slow, the inner index fast.
    let total_elements = outer * inner;
    let (mut o, mut n) = (0u64, 0u64);
    let mut written = 0usize;
    let mut block = Vec::with_capacity(BLOCK);
    while written < total_elements {
        let len = BLOCK.min(total_elements - written);
        block.clear();
        for _ in 0..len {
            block.push(if args.fortran {
                values.raw(n, o)
            } else {
                values.raw(o, n)
            });
            n += 1;
            if n == inner as u64 {
                (o, n) = (o + 1, 0);
            }
        }
        write_block(&mut writer, args.dtype, &block)?;
        written += len;
        progress.update((written * args.dtype.size) as u64);
    }
    writer.finish()?;
    progress.finish();
    Ok(())
}

fn to_usize(n: u64, what: &str) -> Result<usize> {
    usize::try_from(n).with_context(|| format!("{what} {n} is too large"))
}

/// One hashed 64-bit word per element, turned into a value of the file's type.
fn write_block(writer: &mut NpyWriter, dtype: DType, raw: &[(u64, u64)]) -> Result<()> {
    fn convert<T: Element>(raw: &[(u64, u64)], f: impl Fn(u64, u64) -> T) -> Vec<T> {
        raw.iter().map(|&(c, h)| f(c, h)).collect()
    }
    match (dtype.kind, dtype.size) {
        (ElementKind::Float, 8) => writer.write_elements(&convert(raw, float_value))?,
        (ElementKind::Float, 4) => {
            writer.write_elements(&convert(raw, |c, h| float_value(c, h) as f32))?
        }
        // Centred on a column offset, spread ±1e9 (i8) or ±1000 (i4).
        (ElementKind::Int, 8) => writer.write_elements(&convert(raw, |c, h| {
            ((c % 16) as i64 * 2 - 15) * 500_000_000 + (h % 2_000_000_001) as i64 - 1_000_000_000
        }))?,
        (ElementKind::Int, 4) => writer.write_elements(&convert(raw, |c, h| {
            ((c % 16) as i32 * 2 - 15) * 500 + (h % 2001) as i32 - 1000
        }))?,
        (ElementKind::UInt, 1) => {
            writer.write_elements(&convert(raw, |c, h| (c % 16) as u8 * 8 + (h % 128) as u8))?
        }
        _ => bail!("gen cannot write {dtype}"),
    }
    Ok(())
}

/// Uniform in [-1, 1) around the column's centre `(c % 16) - 7.5`.
fn float_value(c: u64, h: u64) -> f64 {
    (c % 16) as f64 - 7.5 + ((h >> 11) as f64 / (1u64 << 52) as f64 - 1.0)
}

/// The element at (row, col) as (col, hash): SplitMix64's finaliser of the flat
/// index, keyed by the seed.
struct Values {
    seed: u64,
    cols: u64,
}

impl Values {
    fn raw(&self, row: u64, col: u64) -> (u64, u64) {
        let key = self
            .seed
            .wrapping_mul(GOLDEN_GAMMA)
            .wrapping_add(GOLDEN_GAMMA);
        (col, mix((row * self.cols + col).wrapping_add(key)))
    }
}

/// A `\r`-redrawn progress line on stderr, only when stderr is a terminal.
struct Progress {
    live: bool,
    name: String,
    total: u64,
    started: Instant,
    drawn: Instant,
}

impl Progress {
    fn new(path: &Path, total: u64) -> Progress {
        let now = Instant::now();
        Progress {
            live: std::io::stderr().is_terminal(),
            name: path.display().to_string(),
            total,
            started: now,
            drawn: now,
        }
    }

    fn update(&mut self, done: u64) {
        if !self.live || self.drawn.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.drawn = Instant::now();
        let seconds = self.started.elapsed().as_secs_f64().max(1e-9);
        let _ = write!(
            std::io::stderr().lock(),
            "\rgen {}: {:.0}/{:.0} MiB ({:.0}%), {:.0} MB/s ",
            self.name,
            done as f64 / (1 << 20) as f64,
            self.total as f64 / (1 << 20) as f64,
            100.0 * done as f64 / self.total.max(1) as f64,
            done as f64 / seconds / 1e6,
        );
    }

    fn finish(&mut self) {
        if self.live {
            // Erase the line: what was written is summarised by the caller.
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_and_fortran_files_hold_the_same_matrix() {
        let dir = tempfile::tempdir().unwrap();
        let mut shapes = Vec::new();
        for (name, fortran) in [("c.npy", false), ("f.npy", true)] {
            let args = ArrayArgs {
                rows: 70_001,
                cols: 3,
                dtype: DType::parse(">i4").unwrap(),
                seed: 9,
                fortran,
                force: false,
                out: dir.path().join(name),
            };
            write_array(&args).unwrap();
            shapes.push(procpool_shm::read_npy_f64(&args.out).unwrap());
        }
        assert_eq!(shapes[0], shapes[1]);
        assert_eq!(shapes[0].0, vec![70_001, 3]);
    }
}

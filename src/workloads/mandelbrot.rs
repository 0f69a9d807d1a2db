//! `mandelbrot`: the escape-time image, rows as tasks writing into a shared buffer.
//!
//! Rows near the set take far longer than rows far from it, so small tasks and the
//! pool's dynamic dispatch (a worker takes the next rows as soon as it is free) are
//! what balance the load; a static split would leave one worker with the slow middle.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use procpool_child::{TaskId, WorkerEnv};
use procpool_shm::{Element, SharedArray};
use procpool_supervisor::PoolReport;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{SharedArrayUse, Summary, TypedHandler, Workload};
use crate::out_file::OutFile;
use crate::room;

/// Options of `procpool run mandelbrot`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Image width in pixels.
    #[arg(long, default_value_t = 1600, value_parser = crate::parse::whole::<usize>(1, u64::MAX))]
    pub width: usize,
    /// Image height in pixels.
    #[arg(long, default_value_t = 1200, value_parser = crate::parse::whole::<usize>(1, u64::MAX))]
    pub height: usize,
    /// Iterations before a point counts as inside the set.
    #[arg(long, default_value_t = 2000, value_parser = crate::parse::whole::<u32>(1, u32::MAX.into()))]
    pub max_iter: u32,
    /// Rows per task.
    #[arg(long, default_value_t = 4, value_parser = crate::parse::whole::<usize>(1, u64::MAX))]
    pub rows: usize,
    /// Write the image as a PNG.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The pool's `--force`: go on even if the arrays look larger than free memory.
    #[arg(from_global)]
    pub force: bool,
}

/// The part of the complex plane drawn: x from -2.5 to 1; y centred on 0, scaled to
/// keep pixels square.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct View {
    pub width: usize,
    pub height: usize,
    pub max_iter: u32,
}

impl View {
    fn point(&self, column: usize, row: usize) -> (f64, f64) {
        let scale = 3.5 / self.width as f64;
        let x = -2.5 + (column as f64 + 0.5) * scale;
        let y = (row as f64 + 0.5 - self.height as f64 / 2.0) * scale;
        (x, y)
    }

    /// Iterations until |z| > 2 for the pixel's point, or `max_iter`.
    pub fn escape_time(&self, column: usize, row: usize) -> u32 {
        let (cx, cy) = self.point(column, row);
        let (mut x, mut y) = (0.0f64, 0.0f64);
        let mut n = 0;
        while n < self.max_iter && x * x + y * y <= 4.0 {
            let next_x = x * x - y * y + cx;
            y = 2.0 * x * y + cy;
            x = next_x;
            n += 1;
        }
        n
    }

    /// Escape times of rows `lo..hi`, row-major.
    pub fn rows(&self, lo: usize, hi: usize, out: &mut [i32]) {
        for (offset, row) in (lo..hi).enumerate() {
            for column in 0..self.width {
                out[offset * self.width + column] = self.escape_time(column, row) as i32;
            }
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Input {
    view: View,
    lo: usize,
    hi: usize,
}

/// Hands out row blocks, sums the checksums, writes the PNG.
pub struct Mandelbrot {
    view: View,
    rows_per_task: usize,
    next_row: usize,
    checksum: u64,
    image: SharedArray,
    /// `--out`, claimed before the image is made.
    out: Option<OutFile>,
    out_path: Option<PathBuf>,
}

impl Workload for Mandelbrot {
    const NAME: &'static str = "mandelbrot";
    const ABOUT: &'static str = "Draw the Mandelbrot set into a shared image, a few rows per task";
    type Args = Args;
    type Input = Input;
    /// The block's checksum.
    type Output = u64;

    fn plan(args: &Args, _procs: usize) -> Result<Mandelbrot> {
        let out = args.out.as_deref().map(OutFile::claim).transpose()?;
        let (width, height) = (args.width as u64, args.height as u64);
        room::ensure_room(
            &format!(
                "mandelbrot --width {width} --height {height} (the image, i4, in shared memory)"
            ),
            width.saturating_mul(height).saturating_mul(4),
            "memory",
            room::memory_available(),
            args.force,
        )?;
        Ok(Mandelbrot {
            view: View {
                width: args.width,
                height: args.height,
                max_iter: args.max_iter,
            },
            rows_per_task: args.rows,
            next_row: 0,
            checksum: 0,
            image: SharedArray::create("image", i32::DTYPE, &[args.height, args.width])?,
            out,
            out_path: args.out.clone(),
        })
    }

    fn next_input(&mut self) -> Option<Result<Input>> {
        if self.next_row >= self.view.height {
            return None;
        }
        let lo = self.next_row;
        let hi = (lo + self.rows_per_task).min(self.view.height);
        self.next_row = hi;
        Some(Ok(Input {
            view: self.view,
            lo,
            hi,
        }))
    }

    fn reduce(&mut self, _id: TaskId, checksum: u64) -> Result<(), String> {
        // A block's escape times are at most max_iter per pixel.
        let most = (self.rows_per_task as u64)
            .saturating_mul(self.view.width as u64)
            .saturating_mul(u64::from(self.view.max_iter));
        self.checksum = self
            .checksum
            .checked_add(checksum)
            .filter(|_| checksum <= most)
            .ok_or_else(|| {
                format!("a checksum of {checksum}, more than a block of rows can sum to ({most})")
            })?;
        Ok(())
    }

    fn total_tasks(&self) -> Option<u64> {
        Some(self.view.height.div_ceil(self.rows_per_task) as u64)
    }

    fn one_machine(&self) -> Option<&'static str> {
        Some("its workers write the image into shared memory on this machine")
    }

    fn shared_arrays(&self) -> Vec<SharedArrayUse<'_>> {
        vec![SharedArrayUse::writable("image", &self.image)]
    }

    fn summary(mut self, _report: &PoolReport) -> Result<Summary> {
        let View {
            width,
            height,
            max_iter,
        } = self.view;
        let mut headline = format!(
            "{width}x{height} pixels, max {max_iter} iterations, checksum {}",
            self.checksum
        );
        if let (Some(out), Some(path)) = (self.out.take(), &self.out_path) {
            write_png(out.temp_path(), &self.view, &self.image.to_vec::<i32>()?)?;
            out.commit()?;
            headline.push_str(&format!("; image written to {}", path.display()));
        }
        Ok(Summary::new(
            headline,
            json!({"width": width, "height": height, "max_iter": max_iter,
                   "checksum": self.checksum, "out": self.out_path}),
        ))
    }

    fn worker() -> Result<TypedHandler<Mandelbrot>, String> {
        worker_side()
    }
}

/// Maps the image, fills row blocks, answers their checksum.
fn worker_side() -> Result<TypedHandler<Mandelbrot>, String> {
    let env = WorkerEnv::from_env().map_err(|err| err.to_string())?;
    let mut image = env.open_array("image")?;
    Ok(Box::new(move |Input { view, lo, hi }| {
        if image.shape() != [view.height, view.width] {
            return Err(format!(
                "the shared image is {:?}, the task draws {}x{}",
                image.shape(),
                view.height,
                view.width
            ));
        }
        if lo > hi || hi > view.height {
            return Err(format!(
                "rows {lo}..{hi} are outside the {}-row image",
                view.height
            ));
        }
        let mut rows = vec![0; (hi - lo) * view.width];
        view.rows(lo, hi, &mut rows);
        image
            .write_rows(lo..hi, &rows)
            .map_err(|err| err.to_string())?;
        Ok(checksum(&rows))
    }))
}

/// Sum of all escape times: what tests compare with a serial computation.
pub fn checksum(iterations: &[i32]) -> u64 {
    iterations.iter().map(|&n| n as u64).sum()
}

/// Colours escape times with a smooth palette (deep blue → white → orange → black
/// inside the set) and writes an 8-bit RGB PNG.
fn write_png(path: &Path, view: &View, iterations: &[i32]) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut encoder = png::Encoder::new(
        std::io::BufWriter::new(file),
        view.width as u32,
        view.height as u32,
    );
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    let pixels: Vec<u8> = iterations
        .iter()
        .flat_map(|&n| colour(n as u32, view.max_iter))
        .collect();
    writer.write_image_data(&pixels)?;
    writer.finish()?;
    Ok(())
}

fn colour(iterations: u32, max_iter: u32) -> [u8; 3] {
    if iterations >= max_iter {
        return [0, 0, 0];
    }
    // Logarithmic so the thin filaments near the set stay visible.
    let t = ((iterations as f64 + 1.0).ln() / (max_iter as f64 + 1.0).ln()).clamp(0.0, 1.0);
    const STOPS: [(f64, [f64; 3]); 5] = [
        (0.0, [0.0, 7.0, 100.0]),
        (0.16, [32.0, 107.0, 203.0]),
        (0.42, [237.0, 255.0, 255.0]),
        (0.64, [255.0, 170.0, 0.0]),
        (0.86, [0.0, 2.0, 0.0]),
    ];
    let t = (t * 1.6).fract();
    let upper = STOPS
        .iter()
        .position(|&(at, _)| at > t)
        .unwrap_or(STOPS.len());
    let (from, to) = if upper == 0 || upper == STOPS.len() {
        (STOPS[STOPS.len() - 1], (1.0, STOPS[0].1))
    } else {
        (STOPS[upper - 1], STOPS[upper])
    };
    let span = (to.0 - from.0).max(1e-9);
    let mix = ((t - from.0) / span).clamp(0.0, 1.0);
    let mut rgb = [0u8; 3];
    for (channel, value) in rgb.iter_mut().enumerate() {
        *value = (from.1[channel] + (to.1[channel] - from.1[channel]) * mix).round() as u8;
    }
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_blocks_add_up_to_the_serial_image() {
        let view = View {
            width: 64,
            height: 48,
            max_iter: 200,
        };
        let mut serial = vec![0; 64 * 48];
        for row in 0..48 {
            for column in 0..64 {
                serial[row * 64 + column] = view.escape_time(column, row) as i32;
            }
        }
        let mut blocks = vec![0; 64 * 48];
        for lo in (0..48).step_by(5) {
            let hi = (lo + 5).min(48);
            view.rows(lo, hi, &mut blocks[lo * 64..hi * 64]);
        }
        assert_eq!(blocks, serial);
        // The set is there: some points never escape, some escape at once.
        assert!(serial.contains(&200) && serial.contains(&1));
    }

    #[test]
    fn points_inside_and_outside() {
        let view = View {
            width: 7,
            height: 5,
            max_iter: 100,
        };
        // Column 5 of 7 sits at x = 0.25 + ..., near the cusp; column 0 at x ≈ -2.25.
        assert_eq!(view.escape_time(0, 0), 1);
        assert_eq!(view.escape_time(3, 2), 100, "x = -0.75, y = 0 is inside");
    }
}

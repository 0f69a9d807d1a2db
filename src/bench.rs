//! `procpool bench`: runs a workload at several pool sizes and reports how it scales —
//! wall, user and system time, speedup and parallel efficiency (medians over repeats).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::stdout::outln;

/// Options of `procpool bench`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  procpool bench primes --procs 1,2,4,8 --repeat 3 --plot scaling.svg -- --limit 1e10"
)]
pub struct BenchArgs {
    /// The workload to run (as for `procpool run`).
    pub workload: String,
    /// Pool sizes to measure; speedups are relative to the first.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8",
          value_parser = crate::parse::whole::<u32>(1, 4096))]
    pub procs: Vec<u32>,
    /// Runs per pool size; the table shows medians.
    #[arg(long, default_value_t = 3, value_parser = crate::parse::whole::<u32>(1, 100))]
    pub repeat: u32,
    /// Print the rows as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Write a speedup chart as SVG.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Options passed on to `procpool run <workload>` (after `--`).
    #[arg(last = true)]
    pub run_args: Vec<String>,
}

/// One pool size's medians.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    pub procs: u32,
    pub wall_s: f64,
    pub user_s: f64,
    pub sys_s: f64,
    pub speedup: f64,
    pub efficiency: f64,
    pub runs: u32,
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    ensure!(
        !args.procs.is_empty(),
        "--procs needs at least one pool size"
    );
    let exe = std::env::current_exe().context("finding the procpool executable")?;
    if let Some(load) = load_average().filter(|&load| load > BUSY_LOAD) {
        eprintln!(
            "procpool bench: warning: the machine is busy (1-minute load average {load:.2}); \
             timings will be noisy and speedups low"
        );
    }
    let mut samples: Vec<(u32, Vec<[f64; 3]>)> = Vec::new();
    for &procs in &args.procs {
        let mut runs = Vec::new();
        for _ in 0..args.repeat {
            runs.push(run_once(&exe, args, procs)?);
        }
        samples.push((procs, runs));
    }
    let rows = tabulate(&samples);
    if args.json {
        outln!("{}", serde_json::to_string(&rows)?);
    } else {
        print_table(&args.workload, &rows);
    }
    if let Some(path) = &args.plot {
        let chart = Chart {
            command: format!("procpool run {} {}", args.workload, args.run_args.join(" "))
                .trim_end()
                .to_string(),
            machine: machine(),
            cores: cores(),
        };
        std::fs::write(path, svg_chart(&chart, &rows))
            .with_context(|| format!("writing {}", path.display()))?;
        if !args.json {
            outln!("chart written to {}", path.display());
        }
    }
    Ok(())
}

/// One `procpool run … --json` at `procs`: its wall, and workers' plus supervisor's
/// user and system time.
fn run_once(exe: &std::path::Path, args: &BenchArgs, procs: u32) -> Result<[f64; 3]> {
    let output = Command::new(exe)
        .arg("run")
        .arg(&args.workload)
        .args(&args.run_args)
        .args(["--procs", &procs.to_string(), "--json", "--quiet"])
        .output()
        .context("running procpool")?;
    if !output.status.success() {
        bail!(
            "`procpool run {} {} --procs {procs}` failed ({}): {}",
            args.workload,
            args.run_args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let report: Value =
        serde_json::from_slice(&output.stdout).context("reading the JSON report of a run")?;
    let field = |path: &[&str]| -> Result<f64> {
        let mut value = &report;
        for key in path {
            value = &value[key];
        }
        value
            .as_f64()
            .with_context(|| format!("the run report has no number at {}", path.join(".")))
    };
    Ok([
        field(&["wall_s"])?,
        field(&["workers_cpu", "user_s"])? + field(&["supervisor_cpu", "user_s"])?,
        field(&["workers_cpu", "sys_s"])? + field(&["supervisor_cpu", "sys_s"])?,
    ])
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// Medians per pool size; speedup and efficiency relative to the first size.
pub fn tabulate(samples: &[(u32, Vec<[f64; 3]>)]) -> Vec<Row> {
    let medians: Vec<(u32, [f64; 3], u32)> = samples
        .iter()
        .map(|(procs, runs)| {
            let column = |i: usize| median(runs.iter().map(|r| r[i]).collect());
            (*procs, [column(0), column(1), column(2)], runs.len() as u32)
        })
        .collect();
    let Some(&(base_procs, [base_wall, ..], _)) = medians.first() else {
        return Vec::new();
    };
    medians
        .into_iter()
        .map(|(procs, [wall_s, user_s, sys_s], runs)| {
            let speedup = base_wall / wall_s;
            Row {
                procs,
                wall_s,
                user_s,
                sys_s,
                speedup,
                efficiency: speedup * base_procs as f64 / procs as f64,
                runs,
            }
        })
        .collect()
}

/// Above this 1-minute load average at the start, the results are warned about.
const BUSY_LOAD: f64 = 0.5;

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The CPU model and core count, for the chart.
fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    format!("{model}, {} cores", cores())
}

fn print_table(workload: &str, rows: &[Row]) {
    let cores = cores();
    outln!(
        "{workload} on {cores} cores (medians of {} runs)",
        rows.first().map_or(0, |r| r.runs)
    );
    outln!("procs    wall_s    user_s     sys_s   speedup  efficiency");
    for row in rows {
        outln!(
            "{:>5} {:>9.3} {:>9.3} {:>9.3} {:>8.2}x {:>10.0}%",
            row.procs,
            row.wall_s,
            row.user_s,
            row.sys_s,
            row.speedup,
            row.efficiency * 100.0
        );
    }
}

/// What a chart says it measured.
pub struct Chart {
    /// The command that was run at each pool size.
    pub command: String,
    /// The CPU and core count.
    pub machine: String,
    /// Cores this process may use: the ideal speedup stops there.
    pub cores: usize,
}

/// A line chart of speedup against pool size: the ideal (linear up to the core count,
/// flat past it) dashed, the core count marked, the measured speedup labelled.
pub fn svg_chart(chart: &Chart, rows: &[Row]) -> String {
    const W: f64 = 640.0;
    const H: f64 = 440.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 30.0;
    const TOP: f64 = 70.0;
    const BOTTOM: f64 = 60.0;
    let base = rows.first().map_or(1.0, |r| r.procs as f64);
    let max_procs = rows
        .iter()
        .map(|r| r.procs as f64)
        .fold(base + 1.0, f64::max);
    let cores = (chart.cores as f64).clamp(base, max_procs);
    let ideal_top = cores / base;
    let max_speedup = rows
        .iter()
        .map(|r| r.speedup)
        .fold(ideal_top, f64::max)
        .ceil();
    let x = |procs: f64| LEFT + (procs - base) / (max_procs - base) * (W - LEFT - RIGHT);
    let y = |speedup: f64| H - BOTTOM - speedup / max_speedup * (H - TOP - BOTTOM);
    let escape = |text: &str| text.replace('&', "&amp;").replace('<', "&lt;");
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"13\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{mid}\" y=\"26\" text-anchor=\"middle\" font-size=\"16\">speedup by pool size</text>\n\
         <text x=\"{mid}\" y=\"45\" text-anchor=\"middle\" fill=\"#444\">{}</text>\n\
         <text x=\"{mid}\" y=\"61\" text-anchor=\"middle\" fill=\"#777\" font-size=\"11\">{}</text>\n",
        escape(&chart.command),
        escape(&chart.machine),
        mid = W / 2.0
    );
    // Axes, grid and tick labels.
    for tick in 0..=(max_speedup as u32) {
        let ty = y(tick as f64);
        svg += &format!(
            "<line x1=\"{LEFT}\" y1=\"{ty:.1}\" x2=\"{:.1}\" y2=\"{ty:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{tick}×</text>\n",
            W - RIGHT,
            LEFT - 8.0,
            ty + 4.0
        );
    }
    for row in rows {
        let tx = x(row.procs as f64);
        svg += &format!(
            "<text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            H - BOTTOM + 20.0,
            row.procs
        );
    }
    svg += &format!(
        "<line x1=\"{LEFT}\" y1=\"{b:.1}\" x2=\"{:.1}\" y2=\"{b:.1}\" stroke=\"black\"/>\n\
         <line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{b:.1}\" stroke=\"black\"/>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">worker processes</text>\n\
         <text x=\"18\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {:.1})\">speedup over {base} worker(s)</text>\n",
        W - RIGHT,
        (LEFT + W - RIGHT) / 2.0,
        H - 15.0,
        (TOP + H - BOTTOM) / 2.0,
        (TOP + H - BOTTOM) / 2.0,
        b = H - BOTTOM,
    );
    // The ideal: linear up to the cores, flat past them (more workers than cores
    // cannot compute faster), with the core count marked when inside the chart.
    svg += &format!(
        "<polyline points=\"{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}\" fill=\"none\" stroke=\"#999\" stroke-dasharray=\"6 4\"/>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#777\" text-anchor=\"end\">ideal</text>\n",
        x(base),
        y(1.0),
        x(cores),
        y(ideal_top),
        x(max_procs),
        y(ideal_top),
        x(cores) - 6.0,
        y(ideal_top) - 8.0
    );
    if cores < max_procs {
        let cx = x(cores);
        svg += &format!(
            "<line x1=\"{cx:.1}\" y1=\"{TOP}\" x2=\"{cx:.1}\" y2=\"{:.1}\" stroke=\"#c33\" stroke-dasharray=\"2 3\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#c33\">{} cores</text>\n",
            H - BOTTOM,
            cx + 4.0,
            TOP + 12.0,
            chart.cores,
        );
    }
    let points: Vec<String> = rows
        .iter()
        .map(|r| format!("{:.1},{:.1}", x(r.procs as f64), y(r.speedup)))
        .collect();
    svg += &format!(
        "<polyline points=\"{}\" fill=\"none\" stroke=\"#1f6feb\" stroke-width=\"2.5\"/>\n",
        points.join(" ")
    );
    // Point labels under the line where the ideal runs above it, so the two sets of
    // labels do not collide.
    for row in rows {
        let (px, py) = (x(row.procs as f64), y(row.speedup));
        let label_y = if row.speedup >= (row.procs as f64 / base).min(ideal_top) - 0.05 {
            py - 10.0
        } else {
            py + 20.0
        };
        svg += &format!(
            "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"4\" fill=\"#1f6feb\"/>\n\
             <text x=\"{px:.1}\" y=\"{label_y:.1}\" text-anchor=\"middle\" fill=\"#1f6feb\">{:.2}×</text>\n",
            row.speedup
        );
    }
    svg += "</svg>\n";
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_speedup_and_efficiency() {
        let samples = vec![
            (1, vec![[4.0, 4.0, 0.1], [5.0, 4.0, 0.1], [4.2, 4.0, 0.1]]),
            (2, vec![[2.1, 4.1, 0.1], [2.0, 4.1, 0.1], [9.0, 4.1, 0.1]]),
            (4, vec![[2.0, 4.2, 0.2], [2.2, 4.2, 0.2]]),
        ];
        let rows = tabulate(&samples);
        assert_eq!(rows[0].wall_s, 4.2);
        assert_eq!(rows[1].wall_s, 2.1);
        assert!((rows[1].speedup - 2.0).abs() < 1e-12);
        assert!((rows[1].efficiency - 1.0).abs() < 1e-12);
        assert!(
            (rows[2].wall_s - 2.1).abs() < 1e-12,
            "even count: mean of the middle two"
        );
        assert!((rows[2].efficiency - 0.5).abs() < 1e-12);
    }

    #[test]
    fn chart_has_a_point_per_pool_size() {
        let rows = tabulate(&[
            (1, vec![[4.0, 4.0, 0.0]]),
            (2, vec![[2.0, 4.0, 0.0]]),
            (4, vec![[2.1, 4.0, 0.0]]),
        ]);
        let chart = Chart {
            command: "procpool run primes --limit 1e9".into(),
            machine: "AMD EPYC, 2 cores".into(),
            cores: 2,
        };
        let svg = svg_chart(&chart, &rows);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("2.00×") && svg.contains("1.90×"));
        assert!(svg.contains("procpool run primes --limit 1e9"));
        assert!(svg.contains("AMD EPYC, 2 cores"));
        // Past the 2 cores the ideal is flat, and the core count is marked.
        assert!(svg.contains("2 cores</text>"));
        assert_eq!(
            svg.matches(">2×<").count(),
            1,
            "the axis stops at the ideal's top"
        );
        assert!(!svg.contains(">4×<"));
    }
}

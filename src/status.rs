//! What a person sees on stderr while a run goes: log lines and worker events, and —
//! when stderr is a terminal — a worker table with a progress bar, redrawn in place;
//! with `--progress` where there is no table, a plain progress line now and then.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use procpool_supervisor::{stderr_queue, WorkerStatus};

/// How often the live table is redrawn.
pub const REDRAW_EVERY: Duration = Duration::from_millis(200);
/// How often `--progress` prints its line where there is no live table.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Owns stderr for the run, so log lines and the live table never interleave. All of
/// it goes through [`stderr_queue`], so a stderr nobody reads never stalls the pool.
pub struct Status {
    live: bool,
    quiet: bool,
    /// `--progress` without a live table: when the last progress line was printed.
    progress_lines: Option<Instant>,
    /// Lines of the table currently on screen (erased before anything else is printed).
    drawn: usize,
    /// The table as last drawn, put back under every line printed above it, so that a
    /// stream of events does not keep it off the screen between redraws.
    frame: String,
    started: Instant,
}

impl Status {
    /// A live table only on a terminal, not with `--quiet`, and not when results
    /// stream to the same terminal (the table would overwrite them); `progress` asks
    /// for plain progress lines wherever there is no table.
    pub fn new(quiet: bool, progress: bool, results_on_terminal: bool) -> Status {
        let live = !quiet && !results_on_terminal && std::io::stderr().is_terminal();
        let started = Instant::now();
        Status {
            live,
            quiet,
            progress_lines: (progress && !live).then_some(started),
            drawn: 0,
            frame: String::new(),
            started,
        }
    }

    /// Whether [`draw`](Status::draw) shows anything (the pool then ticks for it).
    pub fn draws(&self) -> bool {
        self.live || self.progress_lines.is_some()
    }

    /// A worker's log line (always shown, even with `--quiet`: it is the worker's voice).
    pub fn worker_log(&mut self, slot: usize, line: &str) {
        self.print(&format!("[w{slot}] {line}"));
    }

    /// A pool event such as a worker's death; hidden by `--quiet`.
    pub fn event(&mut self, line: &str) {
        if !self.quiet {
            self.print(&format!("procpool: {line}"));
        }
    }

    /// A line that matters whatever the options: errors and failed tasks.
    pub fn warn(&mut self, line: &str) {
        self.print(&format!("procpool: {line}"));
    }

    fn print(&mut self, line: &str) {
        let mut text = format!("{}{line}\n", self.erase());
        if !self.frame.is_empty() {
            text.push_str(&self.frame);
            self.drawn = self.frame.lines().count();
        }
        stderr_queue::write(&text);
    }

    /// Redraws the worker table and progress bar (only on a terminal), or prints the
    /// plain progress line when it is due.
    pub fn draw(&mut self, workers: &[WorkerStatus], done: u64, total: Option<u64>) {
        if let Some(last) = self.progress_lines {
            if last.elapsed() >= PROGRESS_EVERY {
                self.progress_lines = Some(Instant::now());
                let line = plain_progress(done, total, self.started.elapsed());
                stderr_queue::write(&format!("procpool: {line}\n"));
            }
        }
        if !self.live {
            return;
        }
        let screen = terminal_size::terminal_size_of(std::io::stderr()).map(
            |(terminal_size::Width(columns), terminal_size::Height(rows))| Screen {
                columns: columns.into(),
                rows: rows.into(),
            },
        );
        let progress = progress_line(done, total, self.started.elapsed());
        let frame = table(workers, &progress, screen);
        let text = self.erase() + &frame;
        self.drawn = frame.lines().count();
        self.frame = frame;
        stderr_queue::write(&text);
    }

    /// Removes the table from the screen (at the end of the run).
    pub fn clear(&mut self) {
        self.frame.clear();
        let erase = self.erase();
        if !erase.is_empty() {
            stderr_queue::write(&erase);
        }
    }

    /// The escape sequence that moves up over the drawn table and clears it. It
    /// starts with a carriage return: the terminal's echo of Ctrl-C (`^C`) moves the
    /// cursor off column 0, and clearing from there would leave the first characters
    /// of the table's top row on screen.
    fn erase(&mut self) -> String {
        let lines = std::mem::take(&mut self.drawn);
        if lines == 0 {
            String::new()
        } else {
            format!("\r\x1b[{lines}A\x1b[J")
        }
    }
}

/// The terminal's size in character cells.
#[derive(Debug, Clone, Copy)]
struct Screen {
    columns: usize,
    rows: usize,
}

/// The worker table and the progress line, one terminal row per line: rows are cut
/// at the screen's width and slots past its height are summed up in one line, since
/// the table is erased by moving the cursor up over exactly the rows it drew.
fn table(workers: &[WorkerStatus], progress: &str, screen: Option<Screen>) -> String {
    // Header, progress and one spare row for the cursor stay on screen, with at
    // least one row between them; a screen smaller than that gets the progress alone.
    let room = screen.map_or(usize::MAX, |screen| screen.rows.saturating_sub(3));
    let mut lines = Vec::new();
    if room > 0 {
        lines.push("slot  pid      state        task      done  restarts  last exit".to_string());
    }
    let shown = if workers.len() > room {
        room.saturating_sub(1)
    } else {
        workers.len()
    };
    for w in &workers[..shown] {
        let task = w.current_task.map_or("-".to_string(), |id| id.to_string());
        let exit = w
            .last_exit
            .as_ref()
            .map_or("-".to_string(), |e| e.to_string());
        lines.push(format!(
            "w{:<4} {:<8} {:<12} {:<9} {:<5} {:<9} {}",
            w.slot, w.pid, w.state, task, w.tasks_done, w.restarts, exit
        ));
    }
    if let Some(rest) = workers
        .get(shown..)
        .filter(|rest| room > 0 && !rest.is_empty())
    {
        let busy = rest.iter().filter(|w| w.state == "busy").count();
        lines.push(format!("... {} more workers ({busy} busy)", rest.len()));
    }
    lines.push(progress.to_string());
    let mut frame = String::new();
    for line in lines {
        match screen {
            // The last column is left free: writing it makes some terminals wrap.
            Some(screen) => frame.extend(line.chars().take(screen.columns.saturating_sub(1))),
            None => frame.push_str(&line),
        }
        frame.push('\n');
    }
    frame
}

fn progress_line(done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let elapsed_s = elapsed.as_secs_f64();
    let Some(total) = total.filter(|&t| t > 0) else {
        return format!("{done} tasks done, elapsed {elapsed_s:.1}s");
    };
    const WIDTH: usize = 30;
    let fraction = (done as f64 / total as f64).min(1.0);
    let filled = (fraction * WIDTH as f64).round() as usize;
    let eta = if done == 0 {
        "?".to_string()
    } else {
        format!(
            "{:.1}s",
            elapsed_s / done as f64 * (total - done.min(total)) as f64
        )
    };
    format!(
        "[{}{}] {done}/{total} tasks {:>3.0}%  elapsed {elapsed_s:.1}s  ETA {eta}",
        "=".repeat(filled),
        " ".repeat(WIDTH - filled),
        fraction * 100.0
    )
}

/// `--progress` as one line for logs: done (of total), rate, and the ETA when the
/// total is known.
fn plain_progress(done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let elapsed_s = elapsed.as_secs_f64();
    let rate = done as f64 / elapsed_s.max(1e-9);
    match total.filter(|&total| total > 0) {
        Some(total) => {
            let left = total.saturating_sub(done) as f64;
            let eta = match done {
                0 => "?".to_string(),
                _ => format!("{:.0}s", left / rate),
            };
            format!(
                "{done}/{total} tasks ({:.0}%), {rate:.0}/s, elapsed {elapsed_s:.0}s, ETA {eta}",
                done as f64 / total as f64 * 100.0
            )
        }
        None => format!("{done} tasks done, {rate:.0}/s, elapsed {elapsed_s:.0}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_progress_line_gives_rate_and_eta() {
        assert_eq!(
            plain_progress(250, Some(1000), Duration::from_secs(5)),
            "250/1000 tasks (25%), 50/s, elapsed 5s, ETA 15s"
        );
        assert_eq!(
            plain_progress(0, Some(10), Duration::from_secs(1)),
            "0/10 tasks (0%), 0/s, elapsed 1s, ETA ?"
        );
        assert_eq!(
            plain_progress(30, None, Duration::from_secs(3)),
            "30 tasks done, 10/s, elapsed 3s"
        );
    }

    fn worker(slot: usize, state: &'static str) -> WorkerStatus {
        WorkerStatus {
            slot,
            pid: 1000 + slot as i32,
            state,
            current_task: Some(slot as u64),
            tasks_done: 3,
            restarts: 0,
            last_exit: None,
        }
    }

    #[test]
    fn the_table_fits_the_screen() {
        let workers: Vec<WorkerStatus> = (0..10)
            .map(|slot| worker(slot, if slot < 7 { "busy" } else { "idle" }))
            .collect();
        let unbounded = table(&workers, "progress", None);
        assert_eq!(unbounded.lines().count(), 12, "{unbounded}");
        assert!(unbounded.lines().any(|line| line.len() > 60), "{unbounded}");

        let small = table(
            &workers,
            "progress",
            Some(Screen {
                columns: 40,
                rows: 8,
            }),
        );
        let lines: Vec<&str> = small.lines().collect();
        assert_eq!(lines.len(), 7, "{small}");
        assert!(
            lines.iter().all(|line| line.chars().count() <= 39),
            "{small}"
        );
        assert!(lines[1].starts_with("w0 "), "{small}");
        assert_eq!(lines[5], "... 6 more workers (3 busy)", "{small}");
        assert_eq!(lines[6], "progress");

        let screen = |rows| Some(Screen { columns: 80, rows });
        let one_row = table(&workers, "progress", screen(4));
        assert_eq!(one_row.lines().count(), 3, "{one_row}");
        assert!(
            one_row.contains("... 10 more workers (7 busy)"),
            "{one_row}"
        );
        assert_eq!(table(&workers, "progress", screen(3)), "progress\n");
    }

    #[test]
    fn progress_shows_fraction_and_eta() {
        let line = progress_line(25, Some(100), Duration::from_secs(10));
        assert!(line.contains("25/100 tasks  25%"), "{line}");
        assert!(line.contains("ETA 30.0s"), "{line}");
        assert!(line.starts_with("[========"), "{line}");
        assert_eq!(
            progress_line(3, None, Duration::from_secs(1)),
            "3 tasks done, elapsed 1.0s"
        );
    }
}

//! `maze`: mazes generated from a seed and solved by breadth-first search.
//!
//! Two lessons. Many mazes, one per task, are embarrassingly parallel: each worker
//! generates its maze from the seed in the task and solves it alone. One big maze is
//! not: its BFS runs level by level, every level split across the workers, with the
//! walls, the distances and the frontiers in shared arrays; workers claim cells with
//! compare-and-swap, and the supervisor is the barrier between levels. Timing it
//! against a serial BFS shows what the synchronisation costs.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use procpool_child::{TaskId, WorkerEnv};
use procpool_shm::{Element, SharedArray};
use procpool_supervisor::{PoolReport, TaskOutcome};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{SharedArrayUse, Summary, TypedHandler, Workload};
use crate::splitmix::SplitMix64;

/// Options of `procpool run maze`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Cells per side of each maze.
    #[arg(long, default_value_t = 301, value_parser = crate::parse::whole::<u32>(2, 20_000))]
    pub size: u32,
    /// How many mazes (one per task); ignored with --big.
    #[arg(long, default_value_t = 64, value_parser = crate::parse::whole::<u32>(0, u32::MAX.into()))]
    pub mazes: u32,
    /// Seed of the first maze; maze i uses seed + i.
    #[arg(long, default_value_t = 1, value_parser = crate::parse::count)]
    pub seed: u64,
    /// Fraction of the remaining inner walls knocked down after carving, so there
    /// are loops and the shortest path is not the only one.
    #[arg(long, default_value_t = 0.05)]
    pub braid: f64,
    /// Solve one maze of --size with a parallel level-synchronous BFS instead.
    #[arg(long)]
    pub big: bool,
}

/// Open passages of a cell, one bit per direction.
const NORTH: u8 = 1;
const EAST: u8 = 2;
const SOUTH: u8 = 4;
const WEST: u8 = 8;
const DIRECTIONS: [u8; 4] = [NORTH, EAST, SOUTH, WEST];

/// A square maze: for each cell (row-major), the directions it opens to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maze {
    pub size: usize,
    pub open: Vec<u8>,
}

/// The cell one step from `cell` in `direction`, if it is inside an n×n grid.
fn step(size: usize, cell: usize, direction: u8) -> Option<usize> {
    let (row, column) = (cell / size, cell % size);
    match direction {
        NORTH if row > 0 => Some(cell - size),
        EAST if column + 1 < size => Some(cell + 1),
        SOUTH if row + 1 < size => Some(cell + size),
        WEST if column > 0 => Some(cell - 1),
        _ => None,
    }
}

fn opposite(direction: u8) -> u8 {
    match direction {
        NORTH => SOUTH,
        EAST => WEST,
        SOUTH => NORTH,
        _ => EAST,
    }
}

impl Maze {
    /// Carves a perfect maze by randomised depth-first search from the top-left
    /// cell, then knocks down each remaining east and south inner wall with
    /// probability `braid`. Deterministic in `seed`.
    pub fn generate(size: usize, seed: u64, braid: f64) -> Maze {
        let mut rng = SplitMix64::new(seed);
        let mut open = vec![0u8; size * size];
        let mut visited = vec![false; size * size];
        let mut stack = vec![0usize];
        visited[0] = true;
        while let Some(&cell) = stack.last() {
            let choices: Vec<(u8, usize)> = DIRECTIONS
                .iter()
                .filter_map(|&d| step(size, cell, d).map(|next| (d, next)))
                .filter(|&(_, next)| !visited[next])
                .collect();
            if choices.is_empty() {
                stack.pop();
                continue;
            }
            let (direction, next) = choices[rng.below(choices.len() as u64) as usize];
            open[cell] |= direction;
            open[next] |= opposite(direction);
            visited[next] = true;
            stack.push(next);
        }
        for cell in 0..size * size {
            for direction in [EAST, SOUTH] {
                if let Some(next) = step(size, cell, direction) {
                    if open[cell] & direction == 0 && rng.unit() < braid {
                        open[cell] |= direction;
                        open[next] |= opposite(direction);
                    }
                }
            }
        }
        Maze { size, open }
    }

    /// Moves on the shortest path from the top-left to the bottom-right cell (serial BFS).
    pub fn solve(&self) -> Option<u32> {
        let target = self.size * self.size - 1;
        let mut distance = vec![u32::MAX; self.open.len()];
        distance[0] = 0;
        let mut queue = VecDeque::from([0usize]);
        while let Some(cell) = queue.pop_front() {
            if cell == target {
                return Some(distance[cell]);
            }
            for direction in DIRECTIONS {
                if self.open[cell] & direction == 0 {
                    continue;
                }
                let next = step(self.size, cell, direction).expect("passages stay inside");
                if distance[next] == u32::MAX {
                    distance[next] = distance[cell] + 1;
                    queue.push_back(next);
                }
            }
        }
        None
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Input {
    /// Generate and solve one maze.
    Solve { size: usize, seed: u64, braid: f64 },
    /// Expand frontier cells `lo..hi` of BFS level `level`.
    Expand { level: i32, lo: usize, hi: usize },
}

/// What a task found.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Output {
    /// The maze of `seed` and its shortest path, if it has one.
    Solved { seed: u64, length: Option<u32> },
    /// `found` cells claimed, in the next frontier's slots of the slice from `lo`.
    Expanded { lo: usize, found: usize },
}

/// Each newly reached cell has at most three unvisited neighbours (it came from the
/// fourth), and the start, a corner, has two: so frontier cell `i` gets the slots
/// `3i..3i + 3` of the next frontier, and tasks write disjoint ranges.
const SLOTS_PER_CELL: usize = 3;

/// Many mazes, or one big one.
pub enum Mazes {
    Many(ManyMazes),
    Big(Box<BigMaze>),
}

/// Many independent mazes, one per task.
pub struct ManyMazes {
    args: Args,
    next: u32,
    lengths: Vec<Option<u32>>,
}

/// One maze solved level by level across the pool.
pub struct BigMaze {
    size: usize,
    procs: usize,
    walls: SharedArray,
    distance: SharedArray,
    frontier: SharedArray,
    next_frontier: SharedArray,
    frontier_len: usize,
    /// Frontier cells per task in this level: tasks start at multiples of it.
    per_task: usize,
    level: i32,
    /// Tasks of the current level not yet handed out, and those out.
    waiting: VecDeque<Input>,
    out: usize,
    /// `(lo, cells found)` per finished task of the current level.
    found: Vec<(usize, usize)>,
    tasks: u64,
    length: Option<u32>,
    started: Instant,
    serial: (Option<u32>, f64),
}

impl BigMaze {
    fn new(args: &Args, procs: usize) -> Result<BigMaze> {
        let size = args.size as usize;
        let cells = size * size;
        let maze = Maze::generate(size, args.seed, args.braid);
        let serial_started = Instant::now();
        let serial_length = maze.solve();
        let serial_s = serial_started.elapsed().as_secs_f64();
        let mut walls = SharedArray::create("walls", u8::DTYPE, &[size, size])?;
        walls.write(0, &maze.open)?;
        let mut distance = SharedArray::create("distance", i32::DTYPE, &[size, size])?;
        distance.fill(-1i32)?;
        distance.write(0, &[0i32])?;
        let mut frontier = SharedArray::create("frontier", i32::DTYPE, &[cells])?;
        frontier.write(0, &[0i32])?;
        let next_frontier =
            SharedArray::create("next_frontier", i32::DTYPE, &[cells * SLOTS_PER_CELL])?;
        let mut job = BigMaze {
            size,
            procs,
            walls,
            distance,
            frontier,
            next_frontier,
            frontier_len: 1,
            per_task: 1,
            level: 0,
            waiting: VecDeque::new(),
            out: 0,
            found: Vec::new(),
            tasks: 0,
            length: None,
            started: Instant::now(),
            serial: (serial_length, serial_s),
        };
        job.plan_level();
        Ok(job)
    }

    /// Splits the frontier into tasks: big enough to be worth a round trip, enough
    /// of them to keep every worker busy.
    fn plan_level(&mut self) {
        const MIN_CELLS_PER_TASK: usize = 256;
        let per_task = self
            .frontier_len
            .div_ceil(2 * self.procs)
            .max(MIN_CELLS_PER_TASK);
        self.per_task = per_task;
        let mut lo = 0;
        while lo < self.frontier_len {
            let hi = (lo + per_task).min(self.frontier_len);
            self.waiting.push_back(Input::Expand {
                level: self.level,
                lo,
                hi,
            });
            lo = hi;
        }
    }

    /// Checks that an answer names a slice of this level and no more cells than its
    /// slots hold, so that gathering it stays inside the next frontier.
    fn check(&self, lo: usize, found: usize) -> Result<(), String> {
        if lo >= self.frontier_len || !lo.is_multiple_of(self.per_task) {
            return Err(format!(
                "a slice from frontier cell {lo}; level {} has {} cells in slices of {}",
                self.level, self.frontier_len, self.per_task
            ));
        }
        let slots = (self.frontier_len - lo).min(self.per_task) * SLOTS_PER_CELL;
        if found > slots {
            return Err(format!(
                "{found} cells found from frontier cell {lo}, more than its {slots} slots"
            ));
        }
        Ok(())
    }

    /// The barrier between levels: gathers what the workers found into the next
    /// frontier and plans its tasks, unless the target was reached or nothing is left.
    fn next_level(&mut self) -> Result<()> {
        let target = self.size * self.size - 1;
        let target_distance = self.distance.get::<i32>(target)?;
        if target_distance >= 0 {
            self.length = Some(target_distance as u32);
            return Ok(());
        }
        let mut cells = Vec::new();
        for &(lo, count) in &self.found {
            let start = lo * SLOTS_PER_CELL;
            cells.extend(self.next_frontier.read::<i32>(start..start + count)?);
        }
        self.found.clear();
        // What workers wrote is checked like any answer: only cells of the maze go on.
        let all = (self.size * self.size) as i32;
        cells.retain(|cell| (0..all).contains(cell));
        cells.sort_unstable();
        cells.dedup();
        self.frontier_len = cells.len();
        self.frontier.write(0, &cells)?;
        self.level += 1;
        self.plan_level();
        Ok(())
    }
}

impl Workload for Mazes {
    const NAME: &'static str = "maze";
    const ABOUT: &'static str =
        "Generate mazes from a seed and solve them by BFS; --big: one maze, parallel BFS";
    type Args = Args;
    type Input = Input;
    type Output = Output;

    fn plan(args: &Args, procs: usize) -> Result<Mazes> {
        ensure!(
            (0.0..=1.0).contains(&args.braid),
            "--braid is a fraction between 0 and 1, not {}",
            args.braid
        );
        Ok(if args.big {
            Mazes::Big(Box::new(BigMaze::new(args, procs)?))
        } else {
            Mazes::Many(ManyMazes {
                args: args.clone(),
                next: 0,
                lengths: vec![None; args.mazes as usize],
            })
        })
    }
    fn next_input(&mut self) -> Option<Result<Input>> {
        match self {
            Mazes::Many(many) => {
                if many.next >= many.args.mazes {
                    return None;
                }
                let seed = many.args.seed + u64::from(many.next);
                many.next += 1;
                Some(Ok(Input::Solve {
                    size: many.args.size as usize,
                    seed,
                    braid: many.args.braid,
                }))
            }
            Mazes::Big(big) => {
                if big.waiting.is_empty() && big.out == 0 && big.length.is_none() {
                    if let Err(err) = big.next_level() {
                        return Some(Err(err));
                    }
                }
                let task = big.waiting.pop_front()?;
                big.out += 1;
                big.tasks += 1;
                Some(Ok(task))
            }
        }
    }

    fn reduce(&mut self, _id: TaskId, output: Output) -> Result<(), String> {
        match (self, output) {
            (Mazes::Many(many), Output::Solved { seed, length }) => {
                let cells = u64::from(many.args.size).pow(2);
                let index = seed
                    .checked_sub(many.args.seed)
                    .filter(|&i| (i as usize) < many.lengths.len())
                    .ok_or_else(|| format!("seed {seed}, which no task of this run has"))?;
                if length.is_some_and(|moves| u64::from(moves) >= cells) {
                    return Err(format!(
                        "a path of {length:?} moves, longer than a maze of {cells} cells holds"
                    ));
                }
                many.lengths[index as usize] = length;
            }
            (Mazes::Big(big), Output::Expanded { lo, found }) => {
                big.check(lo, found)?;
                big.found.push((lo, found));
                big.out = big.out.saturating_sub(1);
            }
            (Mazes::Many(_), Output::Expanded { .. }) => {
                return Err("a BFS slice, but this run solves whole mazes".into())
            }
            (Mazes::Big(_), Output::Solved { .. }) => {
                return Err("a whole maze, but this run expands BFS slices".into())
            }
        }
        Ok(())
    }

    fn on_failure(&mut self, _id: TaskId, _attempts: u32, _outcome: &TaskOutcome) -> Result<()> {
        match self {
            Mazes::Many(_) => Ok(()),
            // A level with a lost slice cannot be trusted: stop, rather than report a
            // path that may not be the shortest.
            Mazes::Big(_) => bail!("a BFS task of the big maze failed; the search cannot go on"),
        }
    }

    fn total_tasks(&self) -> Option<u64> {
        match self {
            Mazes::Many(many) => Some(u64::from(many.args.mazes)),
            Mazes::Big(_) => None,
        }
    }

    fn one_machine(&self) -> Option<&'static str> {
        match self {
            Mazes::Many(_) => None,
            Mazes::Big(_) => {
                Some("--big keeps the maze and its frontiers in shared memory on this machine")
            }
        }
    }

    fn shared_arrays(&self) -> Vec<SharedArrayUse<'_>> {
        match self {
            Mazes::Many(_) => Vec::new(),
            Mazes::Big(big) => vec![
                SharedArrayUse::read_only("walls", &big.walls),
                SharedArrayUse::writable("distance", &big.distance),
                SharedArrayUse::read_only("frontier", &big.frontier),
                SharedArrayUse::writable("next_frontier", &big.next_frontier),
            ],
        }
    }

    fn summary(self, _report: &PoolReport) -> Result<Summary> {
        match self {
            Mazes::Many(many) => {
                let lengths: Vec<u32> = many
                    .lengths
                    .iter()
                    .map(|length| length.context("a maze without a path"))
                    .collect::<Result<_>>()?;
                let total: u64 = lengths.iter().map(|&n| u64::from(n)).sum();
                let (min, max) = (lengths.iter().min(), lengths.iter().max());
                Ok(Summary::new(
                    format!(
                        "{} mazes of {}x{} solved; shortest paths {}..{} moves, {total} in all",
                        lengths.len(),
                        many.args.size,
                        many.args.size,
                        min.unwrap_or(&0),
                        max.unwrap_or(&0),
                    ),
                    json!({"size": many.args.size, "mazes": lengths.len(),
                           "lengths": lengths, "total_length": total}),
                ))
            }
            Mazes::Big(big) => {
                let parallel_s = big.started.elapsed().as_secs_f64();
                let (serial_length, serial_s) = big.serial;
                ensure!(
                    big.length == serial_length,
                    "parallel BFS found {:?} moves, the serial solver {serial_length:?}",
                    big.length
                );
                let length = big.length.context("the maze has no path")?;
                Ok(Summary::new(
                    format!(
                        "{0}x{0} maze: shortest path {length} moves (serial BFS agrees) in {1} levels, \
                         {2} tasks; parallel {parallel_s:.3}s vs serial {serial_s:.3}s",
                        big.size,
                        big.level + 1,
                        big.tasks
                    ),
                    json!({"size": big.size, "length": length, "serial_length": serial_length,
                           "levels": big.level + 1, "tasks": big.tasks,
                           "parallel_s": parallel_s, "serial_s": serial_s}),
                ))
            }
        }
    }

    fn worker() -> Result<TypedHandler<Mazes>, String> {
        worker_side()
    }
}

/// Solves whole mazes, or expands BFS frontier slices of the big one (its shared
/// arrays are mapped on the first such task).
fn worker_side() -> Result<TypedHandler<Mazes>, String> {
    let mut big: Option<[SharedArray; 4]> = None;
    Ok(Box::new(move |input| match input {
        Input::Solve { size, seed, braid } => {
            let length = Maze::generate(size, seed, braid).solve();
            Ok(Output::Solved { seed, length })
        }
        Input::Expand { level, lo, hi } => {
            if big.is_none() {
                big = Some(open_big_arrays()?);
            }
            let [walls, distance, frontier, next] = big.as_mut().expect("just opened");
            let found = expand(level, lo..hi, walls, distance, frontier, next)
                .map_err(|err| err.to_string())?;
            Ok(Output::Expanded { lo, found })
        }
    }))
}

fn open_big_arrays() -> Result<[SharedArray; 4], String> {
    let env = WorkerEnv::from_env().map_err(|err| err.to_string())?;
    Ok([
        env.open_array("walls")?,
        env.open_array("distance")?,
        env.open_array("frontier")?,
        env.open_array("next_frontier")?,
    ])
}

/// Claims the unvisited neighbours of frontier cells `cells` at distance `level + 1`
/// and writes them to this slice's slots of the next frontier; returns how many.
fn expand(
    level: i32,
    cells: std::ops::Range<usize>,
    walls: &SharedArray,
    distance: &mut SharedArray,
    frontier: &SharedArray,
    next: &mut SharedArray,
) -> Result<usize, procpool_shm::ShmError> {
    let size = walls.rows();
    let frontier = frontier.read_rows::<i32>(cells.clone())?;
    let distance = distance.as_atomic_i32()?;
    // At most SLOTS_PER_CELL per frontier cell: each has four neighbours, and the
    // one it was reached from is at a smaller distance, never claimed here.
    let mut found = Vec::new();
    for cell in frontier {
        let cell = cell as usize;
        let open = walls.get::<u8>(cell)?;
        for direction in DIRECTIONS {
            if open & direction == 0 {
                continue;
            }
            let Some(neighbour) = step(size, cell, direction) else {
                continue;
            };
            // Another worker may reach the same cell in this level: one claim wins. A
            // cell already at this distance is written too, so that a retry of a task
            // whose worker died after claiming still hands its cells on (the
            // supervisor drops the duplicates).
            let reached = match distance[neighbour].compare_exchange(
                -1,
                level + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => true,
                Err(existing) => existing == level + 1,
            };
            if reached {
                found.push(neighbour as i32);
            }
        }
    }
    next.write(cells.start * SLOTS_PER_CELL, &found)?;
    Ok(found.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_perfect_maze_is_a_spanning_tree() {
        let maze = Maze::generate(20, 7, 0.0);
        let passages: u32 = maze.open.iter().map(|o| o.count_ones()).sum::<u32>() / 2;
        assert_eq!(passages, 20 * 20 - 1, "a tree on n cells has n - 1 edges");
        assert!(maze.solve().is_some());
        assert_eq!(maze, Maze::generate(20, 7, 0.0), "same seed, same maze");
        assert_ne!(maze, Maze::generate(20, 8, 0.0));
    }

    #[test]
    fn braiding_only_shortens_paths() {
        for seed in 0..10 {
            let perfect = Maze::generate(30, seed, 0.0).solve().unwrap();
            let braided = Maze::generate(30, seed, 0.3).solve().unwrap();
            assert!(braided <= perfect, "seed {seed}: {braided} > {perfect}");
            assert!(braided >= 58, "never shorter than the Manhattan distance");
        }
    }

    #[test]
    fn level_synchronous_expansion_matches_the_serial_solver() {
        let size = 40;
        let maze = Maze::generate(size, 3, 0.1);
        let cells = size * size;
        let mut walls = SharedArray::create("walls", u8::DTYPE, &[size, size]).unwrap();
        walls.write(0, &maze.open).unwrap();
        let mut distance = SharedArray::create("distance", i32::DTYPE, &[size, size]).unwrap();
        distance.fill(-1i32).unwrap();
        distance.write(0, &[0i32]).unwrap();
        let mut frontier = SharedArray::create("frontier", i32::DTYPE, &[cells]).unwrap();
        let mut next = SharedArray::create("next", i32::DTYPE, &[cells * 3]).unwrap();
        let mut current = vec![0i32];
        let mut level = 0;
        while distance.get::<i32>(cells - 1).unwrap() < 0 {
            frontier.write(0, &current).unwrap();
            // Two "tasks" per level, as two workers would take them.
            let half = current.len() / 2;
            let mut gathered = Vec::new();
            for range in [0..half, half..current.len()] {
                let found = expand(
                    level,
                    range.clone(),
                    &walls,
                    &mut distance,
                    &frontier,
                    &mut next,
                )
                .unwrap();
                let start = range.start * 3;
                gathered.extend(next.read::<i32>(start..start + found).unwrap());
            }
            current = gathered;
            level += 1;
            assert!(!current.is_empty(), "ran out of frontier");
        }
        let length = distance.get::<i32>(cells - 1).unwrap() as u32;
        assert_eq!(Some(length), maze.solve());
    }
}

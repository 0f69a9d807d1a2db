//! The classic lessons: mandelbrot's image and checksum, and `procpool bench`'s table.

mod util;

use std::process::Command;

use serde_json::{json, Value};
use util::Procpool;

const SIZE: [&str; 6] = ["--width", "160", "--height", "120", "--max-iter", "500"];

fn mandelbrot(extra: &[&str]) -> Value {
    let mut args = vec!["run", "mandelbrot", "--json", "--quiet"];
    args.extend_from_slice(&SIZE);
    args.extend_from_slice(extra);
    let output = Procpool::new(&args).run(0);
    let report = output.json();
    assert_eq!(report["tasks_ok"], report["tasks_total"], "{output}");
    report["result"].clone()
}

/// The same escape-time loop, serially, in Python: an implementation that shares
/// nothing with procpool's but the formula (and IEEE doubles, so counts agree exactly).
const SERIAL_REFERENCE: &str = r#"
import sys
w, h, m = 160, 120, 500
scale = 3.5 / w
total = 0
for row in range(h):
    y0 = (row + 0.5 - h / 2.0) * scale
    for col in range(w):
        x0 = -2.5 + (col + 0.5) * scale
        x = y = 0.0
        n = 0
        while n < m and x * x + y * y <= 4.0:
            x, y = x * x - y * y + x0, 2.0 * x * y + y0
            n += 1
        total += n
print(total)
"#;

#[test]
fn mandelbrot_checksum_matches_a_serial_reference_at_every_pool_size() {
    let reference = Command::new("python3")
        .args(["-c", SERIAL_REFERENCE])
        .output()
        .expect("python3 runs");
    assert!(reference.status.success());
    let expected: u64 = String::from_utf8_lossy(&reference.stdout)
        .trim()
        .parse()
        .unwrap();
    for extra in [
        &["--procs", "1"][..],
        &["--procs", "2", "--start", "fork"],
        &["--procs", "8", "--rows", "1"],
    ] {
        let result = mandelbrot(extra);
        assert_eq!(result["checksum"], json!(expected), "{extra:?}");
    }
}

#[test]
fn mandelbrot_writes_a_valid_png() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("set.png");
    mandelbrot(&["--out", path.to_str().unwrap()]);
    // Decode it with Python's zlib: signature, IHDR size, every chunk's CRC, and the
    // image data inflating to exactly height rows of (filter byte + 3 bytes × width).
    let check = r#"
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "signature"
pos, idat, ihdr = 8, b"", None
while pos < len(data):
    length, kind = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + length]
    crc, = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
    assert zlib.crc32(kind + body) == crc, kind
    if kind == b"IHDR": ihdr = struct.unpack(">IIBBBBB", body)
    if kind == b"IDAT": idat += body
    pos += 12 + length
assert kind == b"IEND"
width, height, depth, colour = ihdr[:4]
assert (width, height, depth, colour) == (160, 120, 8, 2), ihdr
pixels = zlib.decompress(idat)
assert len(pixels) == height * (1 + 3 * width), len(pixels)
assert len(set(pixels)) > 16, "a colour map, not a flat image"
print("ok")
"#;
    let output = Command::new("python3")
        .args(["-c", check, path.to_str().unwrap()])
        .output()
        .expect("python3 runs");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn bench_reports_speedup_and_efficiency_per_pool_size() {
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("scaling.svg");
    let output = Procpool::new([
        "bench",
        "primes",
        "--procs",
        "1,2",
        "--repeat",
        "2",
        "--json",
        "--plot",
        chart.to_str().unwrap(),
        "--",
        "--limit",
        "2e7",
    ])
    .run(0);
    let rows = output.json();
    let rows = rows.as_array().expect("an array of rows");
    assert_eq!(rows.len(), 2, "{output}");
    assert_eq!(rows[0]["procs"], json!(1));
    assert_eq!(rows[1]["procs"], json!(2));
    assert_eq!(rows[0]["speedup"], json!(1.0));
    assert_eq!(rows[0]["runs"], json!(2));
    for row in rows {
        let wall = row["wall_s"].as_f64().unwrap();
        let speedup = row["speedup"].as_f64().unwrap();
        let efficiency = row["efficiency"].as_f64().unwrap();
        assert!(wall > 0.0, "{row}");
        let procs = row["procs"].as_f64().unwrap();
        assert!((efficiency - speedup / procs).abs() < 1e-9, "{row}");
    }
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert_eq!(svg.matches("<circle").count(), 2, "{svg}");

    let table = Procpool::new([
        "bench", "noop", "--procs", "1,2", "--repeat", "1", "--", "--tasks", "100",
    ])
    .run(0);
    assert!(table.stdout.contains("speedup  efficiency"), "{table}");
    assert_eq!(table.stdout.lines().count(), 4, "{table}");
}

#[test]
fn bench_names_a_failing_run() {
    let output = Procpool::new(["bench", "primes", "--procs", "1", "--", "--limit", "x"]).run(1);
    assert!(output.stderr.contains("--limit"), "{output}");
    assert!(!output.stderr.contains("panicked"), "{output}");
}

/// The maze generator and BFS, ported to Python from their description: SplitMix64,
/// depth-first carving (neighbours tried north, east, south, west), then braiding the
/// east and south walls in cell order.
const MAZE_REFERENCE: &str = r#"
import sys
from collections import deque
M = (1 << 64) - 1
class SplitMix:
    def __init__(self, seed): self.s = seed & M
    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        return z ^ (z >> 31)
    def unit(self): return (self.next() >> 11) / float(1 << 53)
N, E, S, W = 1, 2, 4, 8
OPPOSITE = {N: S, E: W, S: N, W: E}
def step(n, c, d):
    r, col = divmod(c, n)
    if d == N and r > 0: return c - n
    if d == E and col + 1 < n: return c + 1
    if d == S and r + 1 < n: return c + n
    if d == W and col > 0: return c - 1
    return None
def generate(n, seed, braid):
    rng, open_, seen, stack = SplitMix(seed), [0] * (n * n), [False] * (n * n), [0]
    seen[0] = True
    while stack:
        c = stack[-1]
        choices = [(d, x) for d in (N, E, S, W) for x in [step(n, c, d)] if x is not None and not seen[x]]
        if not choices:
            stack.pop(); continue
        d, x = choices[rng.next() % len(choices)]
        open_[c] |= d; open_[x] |= OPPOSITE[d]; seen[x] = True; stack.append(x)
    for c in range(n * n):
        for d in (E, S):
            x = step(n, c, d)
            if x is not None and open_[c] & d == 0 and rng.unit() < braid:
                open_[c] |= d; open_[x] |= OPPOSITE[d]
    return open_
def solve(n, open_):
    dist, queue = {0: 0}, deque([0])
    while queue:
        c = queue.popleft()
        if c == n * n - 1: return dist[c]
        for d in (N, E, S, W):
            if open_[c] & d:
                x = step(n, c, d)
                if x not in dist: dist[x] = dist[c] + 1; queue.append(x)
n, first, count, braid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
print(" ".join(str(solve(n, generate(n, first + i, braid))) for i in range(count)))
"#;

fn reference_maze_lengths(size: u32, seed: u64, count: u32, braid: f64) -> Vec<u64> {
    let output = Command::new("python3")
        .args(["-c", MAZE_REFERENCE])
        .args([
            size.to_string(),
            seed.to_string(),
            count.to_string(),
            braid.to_string(),
        ])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

#[test]
fn maze_path_lengths_match_an_independent_serial_solver() {
    let expected = reference_maze_lengths(25, 11, 12, 0.1);
    for extra in [&["--procs", "1"][..], &["--procs", "3", "--start", "fork"]] {
        let mut args = vec![
            "run", "maze", "--size", "25", "--mazes", "12", "--seed", "11", "--braid", "0.1",
            "--json", "--quiet",
        ];
        args.extend_from_slice(extra);
        let output = Procpool::new(&args).run(0);
        let lengths: Vec<u64> = output.json()["result"]["lengths"]
            .as_array()
            .expect("lengths")
            .iter()
            .map(|n| n.as_u64().unwrap())
            .collect();
        assert_eq!(lengths, expected, "{extra:?}\n{output}");
    }
}

#[test]
fn big_maze_parallel_bfs_agrees_with_the_serial_solver() {
    let expected = reference_maze_lengths(120, 5, 1, 0.05)[0];
    for procs in ["1", "4"] {
        let output = Procpool::new([
            "run", "maze", "--big", "--size", "120", "--seed", "5", "--braid", "0.05", "--procs",
            procs, "--json", "--quiet",
        ])
        .run(0);
        let result = &output.json()["result"];
        assert_eq!(result["length"], json!(expected), "{output}");
        assert_eq!(result["serial_length"], json!(expected), "{output}");
        // Reaching distance d takes d level-synchronous expansions: one barrier each.
        assert_eq!(result["levels"], json!(expected), "{output}");
    }
}

#[test]
fn big_maze_survives_chaos_with_the_same_shortest_path() {
    // Workers killed mid-level after claiming cells: the retried slices must still
    // hand those cells on, or the search loses them.
    let output = Procpool::new([
        "run", "maze", "--big", "--size", "700", "--seed", "3", "--chaos", "40", "--json",
        "--quiet",
    ])
    .run(0);
    let report = output.json();
    assert!(report["chaos_kills"].as_u64().unwrap() > 0, "{output}");
    let result = &report["result"];
    assert_eq!(result["length"], result["serial_length"], "{output}");
}

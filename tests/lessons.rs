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

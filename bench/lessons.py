#!/usr/bin/env python3
"""The classic lessons, measured side by side: mandelbrot and primes through procpool
at 1 and 2 workers, against the same computations in Python (serial,
multiprocessing.Pool(2), and numpy-vectorised mandelbrot), all in one run.

Usage: python3 bench/lessons.py [--repeats N] [--quick]
Needs: a release build (cargo build --release) and numpy for the vectorised peer.
Prints a markdown table; figures belong in bench/BENCHMARKS.md with the machine.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from multiprocessing import Pool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCPOOL = os.path.join(ROOT, "target", "release", "procpool")


def procpool(args):
    """Runs procpool with --json; returns (pool wall seconds, whole-process seconds, result)."""
    started = time.perf_counter()
    out = subprocess.run([PROCPOOL, *args, "--json", "--quiet"], check=True,
                         capture_output=True, text=True).stdout
    elapsed = time.perf_counter() - started
    report = json.loads(out)
    return report["wall_s"], elapsed, report["result"]


# --- mandelbrot: the same escape-time loop as src/workloads/mandelbrot.rs ----------

def mandel_rows(task):
    width, height, max_iter, lo, hi = task
    scale = 3.5 / width
    total = 0
    for row in range(lo, hi):
        y0 = (row + 0.5 - height / 2.0) * scale
        for col in range(width):
            x0 = -2.5 + (col + 0.5) * scale
            x = y = 0.0
            n = 0
            while n < max_iter and x * x + y * y <= 4.0:
                x, y = x * x - y * y + x0, 2.0 * x * y + y0
                n += 1
            total += n
    return total


def mandel_numpy(width, height, max_iter):
    import numpy as np
    scale = 3.5 / width
    xs = -2.5 + (np.arange(width) + 0.5) * scale
    ys = (np.arange(height) + 0.5 - height / 2.0) * scale
    c = xs[None, :] + 1j * ys[:, None]
    z = np.zeros_like(c)
    counts = np.zeros(c.shape, dtype=np.int64)
    alive = np.ones(c.shape, dtype=bool)
    for _ in range(max_iter):
        z[alive] = z[alive] * z[alive] + c[alive]
        escaped = alive & (z.real * z.real + z.imag * z.imag > 4.0)
        alive &= ~escaped
        counts[alive] += 1
        if not alive.any():
            break
    # numpy counts the iteration that escapes as well, like the Rust loop.
    return int(counts.sum() + (~alive).sum())


# --- primes: a segmented sieve over bytearrays ---------------------------------------

def small_primes(limit):
    sieve = bytearray([1]) * (limit + 1)
    sieve[0:2] = b"\x00\x00"
    for p in range(2, int(limit ** 0.5) + 1):
        if sieve[p]:
            sieve[p * p::p] = bytearray(len(range(p * p, limit + 1, p)))
    return [p for p in range(limit + 1) if sieve[p]]


def count_range(task):
    lo, hi = task
    base = small_primes(int(hi ** 0.5) + 1)
    segment = bytearray([1]) * (hi - lo)
    for p in base:
        start = max(p * p, (lo + p - 1) // p * p)
        if start < hi:
            segment[start - lo::p] = bytearray(len(range(start - lo, hi - lo, p)))
    for n in range(lo, min(hi, 2)):
        segment[n - lo] = 0
    return sum(segment)


def ranges(limit, parts):
    step = -(-limit // parts)
    return [(lo, min(lo + step, limit)) for lo in range(0, limit, step)]


def median_time(fn, repeats):
    times, value = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), value


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one repeat")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    # procpool gets a big image; the Python peers a smaller one (pure Python is ~100x
    # slower), compared per pixel-iteration through the checksum, which counts them.
    big = (1600, 1200, 2000)
    small = (400, 300, 500) if not args.quick else (200, 150, 300)
    limit = 10**9 if not args.quick else 10**8
    py_limit = 10**8 if not args.quick else 10**7

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"python {platform.python_version()}")
    rows = []

    # mandelbrot
    for w, h, m in (small, big):
        size = ["--width", str(w), "--height", str(h), "--max-iter", str(m)]
        p1 = [procpool(["run", "mandelbrot", *size, "--procs", "1"]) for _ in range(repeats)]
        p2 = [procpool(["run", "mandelbrot", *size, "--procs", "2"]) for _ in range(repeats)]
        t1 = statistics.median(r[0] for r in p1)
        t2 = statistics.median(r[0] for r in p2)
        checksum = p1[0][2]["checksum"]
        rows.append((f"mandelbrot {w}x{h}/{m}", "procpool --procs 1", t1, checksum))
        rows.append((f"mandelbrot {w}x{h}/{m}", "procpool --procs 2", t2, checksum))
        rows.append((f"mandelbrot {w}x{h}/{m}", "procpool speedup 2 vs 1", t1 / t2, None))
    w, h, m = small
    tasks = [(w, h, m, lo, min(lo + 4, h)) for lo in range(0, h, 4)]
    serial, total = median_time(lambda: sum(map(mandel_rows, tasks)), repeats)
    rows.append((f"mandelbrot {w}x{h}/{m}", "python serial", serial, total))
    with Pool(2) as pool:
        parallel, total = median_time(lambda: sum(pool.map(mandel_rows, tasks, chunksize=1)), repeats)
    rows.append((f"mandelbrot {w}x{h}/{m}", "python Pool(2)", parallel, total))
    try:
        vectorised, total = median_time(lambda: mandel_numpy(w, h, m), repeats)
        rows.append((f"mandelbrot {w}x{h}/{m}", "numpy vectorised", vectorised, total))
    except ImportError:
        rows.append((f"mandelbrot {w}x{h}/{m}", "numpy vectorised", float("nan"), "numpy missing"))

    # primes
    for lim in (py_limit, limit):
        p1 = statistics.median(procpool(["run", "primes", "--limit", str(lim), "--procs", "1"])[0]
                               for _ in range(repeats))
        p2 = statistics.median(procpool(["run", "primes", "--limit", str(lim), "--procs", "2"])[0]
                               for _ in range(repeats))
        count = procpool(["run", "primes", "--limit", str(lim)])[2]["count"]
        rows.append((f"primes < {lim:.0e}", "procpool --procs 1", p1, count))
        rows.append((f"primes < {lim:.0e}", "procpool --procs 2", p2, count))
        rows.append((f"primes < {lim:.0e}", "procpool speedup 2 vs 1", p1 / p2, None))
    parts = ranges(py_limit, 64)
    serial, count = median_time(lambda: sum(map(count_range, parts)), repeats)
    rows.append((f"primes < {py_limit:.0e}", "python serial", serial, count))
    with Pool(2) as pool:
        parallel, count = median_time(lambda: sum(pool.map(count_range, parts, chunksize=1)), repeats)
    rows.append((f"primes < {py_limit:.0e}", "python Pool(2)", parallel, count))

    print("| workload | runner | seconds (or ratio) | checksum / count |")
    print("|---|---|---:|---:|")
    for workload, runner, seconds, check in rows:
        value = f"{seconds:.2f}x" if "speedup" in runner else f"{seconds:.3f}"
        print(f"| {workload} | {runner} | {value} | {'' if check is None else check} |")


if __name__ == "__main__":
    sys.exit(main())

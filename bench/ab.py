#!/usr/bin/env python3
"""A/B of two procpool binaries on one `procpool run` command, interleaved run by run.

    python3 bench/ab.py --a target/release/procpool --b /tmp/b/release/procpool \\
        [--repeat 9] [--drop-caches] -- --procs 2 colmeans --file data.npy
    python3 bench/ab.py --a OLD --b NEW --pool-cost [--repeat 15]

Runs `BINARY run ARGS --json --quiet` for A then B, --repeat times (with
--drop-caches, `sync; echo 1 > /proc/sys/vm/drop_caches` before every run: root only),
and prints for each side the median whole-process wall, the median pool wall_s, how
the tasks were split between the workers, and the median of the per-repeat ratios
wall(A) / wall(B) (> 1: B is faster). Used to back the fixes proposed in
bench/BENCHMARKS.md with a measurement on a patched build.

--pool-cost measures the pool's own cost instead, with the three measures of
bench/foundation.py, A and B interleaved in every repeat: noop throughput
(`--procs 2 noop --tasks 400000`, tasks/s of the pool), the one-task round trip
(`--procs 1 --prefetch 1`: (wall_s(N=30000) - wall_s(N=1)) / (N - 1)), and start to
first result (the whole process of `--procs 2 noop --tasks 1`). For each it prints
both medians and the median of the paired ratios B / A (> 1: B is faster).
"""
import argparse
import collections
import json
import statistics
import subprocess
import time


def one(binary, args, drop):
    if drop:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1")
    t0 = time.perf_counter()
    out = subprocess.run([binary, "run", *args, "--json", "--quiet"], capture_output=True, text=True)
    whole = time.perf_counter() - t0
    report = json.loads(out.stdout)
    return whole, report["wall_s"], "/".join(str(w["tasks_done"]) for w in report["workers"])


def pool_cost(a, b, repeat):
    """The pool's own cost, A and B interleaved; returns {measure: {side: samples}}."""
    def noop(binary, n, *pool):
        return one(binary, ["--procs", *pool, "noop", "--tasks", str(n)], False)

    samples = collections.defaultdict(lambda: {"A": [], "B": []})
    for _ in range(repeat):
        for side, binary in (("A", a), ("B", b)):
            _, wall_s, _ = noop(binary, 400_000, "2")
            samples["noop throughput, tasks/s"][side].append(400_000 / wall_s)
            _, many, _ = noop(binary, 30_000, "1", "--prefetch", "1")
            _, single, _ = noop(binary, 1, "1", "--prefetch", "1")
            samples["round trip, tasks/s (1 / seconds per task)"][side].append(29_999 / (many - single))
            whole, _, _ = noop(binary, 1, "2")
            samples["start to first result, runs/s (1 / whole process)"][side].append(1 / whole)
    return samples


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--drop-caches", action="store_true")
    ap.add_argument("--pool-cost", action="store_true",
                    help="measure noop throughput, round trip and start-up instead of ARGS")
    ap.add_argument("args", nargs=argparse.REMAINDER)
    ns = ap.parse_args()
    if ns.pool_cost:
        print(f"pool cost, {ns.repeat} interleaved repeats; A = {ns.a}, B = {ns.b}")
        for measure, sides in pool_cost(ns.a, ns.b, ns.repeat).items():
            ratio = statistics.median(b / a for a, b in zip(sides["A"], sides["B"]))
            print(f"  {measure}: A {statistics.median(sides['A']):,.0f}, "
                  f"B {statistics.median(sides['B']):,.0f}; B / A, median of paired ratios: {ratio:.3f}x")
        return
    args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    runs = {"A": [], "B": []}
    for _ in range(ns.repeat):
        for side, binary in (("A", ns.a), ("B", ns.b)):
            runs[side].append(one(binary, args, ns.drop_caches))
    print(f"procpool run {' '.join(args)}  ({ns.repeat} interleaved repeats"
          f"{', caches dropped before each run' if ns.drop_caches else ''})")
    for side, binary in (("A", ns.a), ("B", ns.b)):
        r = runs[side]
        splits = collections.Counter(s for _, _, s in r)
        print(f"  {side} {binary}: whole process {statistics.median(x[0] for x in r):.3f} s, "
              f"wall_s {statistics.median(x[1] for x in r):.3f} s, tasks per worker {dict(splits)}")
    ratio = statistics.median(a[0] / b[0] for a, b in zip(runs["A"], runs["B"]))
    print(f"  wall(A) / wall(B), median of paired ratios: {ratio:.2f}x")


if __name__ == "__main__":
    main()

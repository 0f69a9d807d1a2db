#!/usr/bin/env python3
"""What the pool's cgroups cost: `procpool run noop --procs N --tasks T` with cgroups
(a leaf made, joined and removed per worker) and with `--no-cgroup`, interleaved within
each repeat on the same machine, whole-process wall time. Also a run whose workers are
killed five times a second (`--chaos 5`), where each death kills and removes a leaf.
Needs a machine where procpool makes cgroups (root, cgroup v2): it says so otherwise.

    cargo build --release
    python3 bench/cgroups.py [--repeat 7]

Prints one table and writes bench/results/cgroups.json.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCPOOL = os.path.join(ROOT, "target", "release", "procpool")

CASES = [
    ("noop, 250 workers", ["run", "noop", "--procs", "250", "--tasks", "625"]),
    ("noop, 1000 workers", ["run", "noop", "--procs", "1000", "--tasks", "2500"]),
    ("noop, 2000 workers", ["run", "noop", "--procs", "2000", "--tasks", "5000"]),
    (
        "primes, 2 workers, --chaos 5",
        ["run", "primes", "--limit", "3e9", "--procs", "2", "--chaos", "5"],
    ),
]


def timed(args):
    started = time.perf_counter()
    done = subprocess.run(
        [PROCPOOL, *args, "--quiet", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    wall = time.perf_counter() - started
    return wall, json.loads(done.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    options = parser.parse_args()
    _, report = timed(["run", "noop", "--procs", "1", "--tasks", "1"])
    if report.get("cgroup") is None:
        raise SystemExit("procpool makes no cgroup on this machine: nothing to measure")
    rows = []
    for name, args in CASES:
        with_cgroups, without, ratios, restarts = [], [], [], []
        for _ in range(options.repeat):
            a, report = timed(args)
            b, _ = timed([*args, "--no-cgroup"])
            with_cgroups.append(a)
            without.append(b)
            ratios.append(a / b)
            restarts.append(sum(w["restarts"] for w in report["workers"]))
        rows.append(
            {
                "case": name,
                "with_cgroups_s": statistics.median(with_cgroups),
                "no_cgroup_s": statistics.median(without),
                "ratio": statistics.median(ratios),
                "restarts_with_cgroups": statistics.median(restarts),
            }
        )
    print(f"{platform.node()}, {os.cpu_count()} cores, {options.repeat} repeats, medians")
    print("| case | with cgroups | --no-cgroup | with / without, median of paired ratios |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['case']} | {row['with_cgroups_s']:.3f} s | {row['no_cgroup_s']:.3f} s "
            f"| {row['ratio']:.3f}× |"
        )
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "cgroups.json"), "w") as out:
        json.dump({"cores": os.cpu_count(), "repeat": options.repeat, "rows": rows}, out, indent=1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Task throughput of a stdlib Python worker through procpool (`run tasks`) vs the
same Python work through ProcessPoolExecutor(2) with chunksize 1 (and 1000, for
reference), and through GNU parallel (a process per task, fewer tasks). Same run,
same machine. Python 3 stdlib only.

    cargo build --release
    python3 bench/children.py [--tasks 100000] [--parallel-tasks 300] [--procs 2]

Prints one table and writes bench/results/children.json.
"""

import argparse
import concurrent.futures
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCPOOL = os.path.join(ROOT, "target", "release", "procpool")
SDK_DIR = os.path.join(ROOT, "examples", "python")

# The trivial work, identical in every contender.
WORK_SOURCE = "def work(x):\n    return x * 2 + 1\n"
exec(WORK_SOURCE)  # defines work() here, for ProcessPoolExecutor (pickled by name)

WORKER = """import sys
sys.path.insert(0, %r)
from procpool_worker import serve
%s
serve(work)
""" % (SDK_DIR, WORK_SOURCE)


def machine():
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name")), "")
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def bench_procpool(n, procs, tmp):
    worker = os.path.join(tmp, "worker.py")
    with open(worker, "w") as f:
        f.write(WORKER)
    inp = os.path.join(tmp, "in.txt")
    with open(inp, "w") as f:
        f.write("".join("%d\n" % i for i in range(n)))
    out = os.path.join(tmp, "out.jsonl")
    cmd = [PROCPOOL, "run", "tasks", "--child", "%s %s" % (sys.executable, worker),
           "--procs", str(procs), "--input", inp, "--output", out, "--quiet"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    total = 0
    with open(out) as f:
        for line in f:
            total += json.loads(line)["output"]
    assert total == sum(work(i) for i in range(n)), "procpool results are wrong"
    return wall, " ".join(cmd[:5]) + " ... --procs %d" % procs


def bench_executor(n, procs, chunksize):
    start = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(procs) as ex:
        total = sum(ex.map(work, range(n), chunksize=chunksize))
    wall = time.perf_counter() - start
    assert total == sum(work(i) for i in range(n))
    return wall


def bench_parallel(n, procs, tmp):
    if shutil.which("parallel") is None:
        return None
    script = os.path.join(tmp, "one.py")
    with open(script, "w") as f:
        f.write("import sys\n%sprint(work(int(sys.argv[1])))\n" % WORK_SOURCE)
    start = time.perf_counter()
    out = subprocess.run(["parallel", "-j", str(procs), sys.executable, script, "{}"],
                         input="".join("%d\n" % i for i in range(n)), capture_output=True,
                         text=True, check=True).stdout
    wall = time.perf_counter() - start
    assert sum(int(x) for x in out.split()) == sum(work(i) for i in range(n))
    return wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--parallel-tasks", type=int, default=300)
    parser.add_argument("--procs", type=int, default=2)
    args = parser.parse_args()
    if not os.path.exists(PROCPOOL):
        sys.exit("build first: cargo build --release")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        wall, _ = bench_procpool(args.tasks, args.procs, tmp)
        rows.append(("procpool run tasks (Python SDK worker)", args.tasks, wall))
        wall = bench_executor(args.tasks, args.procs, 1)
        rows.append(("ProcessPoolExecutor(%d), chunksize=1" % args.procs, args.tasks, wall))
        wall = bench_executor(args.tasks, args.procs, 1000)
        rows.append(("ProcessPoolExecutor(%d), chunksize=1000" % args.procs, args.tasks, wall))
        wall = bench_parallel(args.parallel_tasks, args.procs, tmp)
        if wall is not None:
            rows.append(("GNU parallel -j%d (a process per task)" % args.procs, args.parallel_tasks, wall))
    results = {"machine": machine(), "procs": args.procs, "rows": []}
    print("machine: %s" % json.dumps(results["machine"]))
    print("%-45s %8s %9s %12s" % ("contender", "tasks", "wall s", "tasks/s"))
    for name, n, wall in rows:
        rate = n / wall
        results["rows"].append({"name": name, "tasks": n, "wall_s": round(wall, 3), "tasks_per_s": round(rate)})
        print("%-45s %8d %9.3f %12.0f" % (name, n, wall, rate))
    base = results["rows"][0]["tasks_per_s"]
    ppe = results["rows"][1]["tasks_per_s"]
    results["procpool_vs_executor_chunksize_1"] = round(base / ppe, 2)
    print("procpool / ProcessPoolExecutor chunksize=1: %.2fx" % (base / ppe))
    with open(os.path.join(ROOT, "bench", "results", "children.json"), "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()

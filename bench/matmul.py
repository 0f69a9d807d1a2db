#!/usr/bin/env python3
"""Dense f8 matmul C = A @ B: procpool vs numpy (1 and 2 BLAS threads) vs Python
multiprocessing.Pool(2) on multiprocessing.shared_memory arrays, on this machine.

    cargo build --release && python3 bench/matmul.py [--sizes 1024 2048] [--repeat 3]

Needs python3, numpy and threadpoolctl. Prints a Markdown table and one JSON line.
Every figure is the best of --repeat runs. procpool's GFLOP/s is its own (2 n^3 over the
pool's wall, worker start-up included); "whole wall" is the whole `procpool` process,
matrix generation and shared-memory setup included. The per-worker kernel rate is 2 n^3
over the seconds the workers spent in the kernel, as they report them per task.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCPOOL = os.path.join(ROOT, "target", "release", "procpool")

# numpy alone, in a fresh interpreter with BLAS limited to THREADS threads. Prints JSON.
NUMPY_SCRIPT = r"""
import json, sys, time
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits
n, threads, repeat = map(int, sys.argv[1:4])
rng = np.random.default_rng(1)
a, b = rng.uniform(-1, 1, (n, n)), rng.uniform(-1, 1, (n, n))
with threadpool_limits(threads, user_api="blas"):
    a @ b  # warm-up: BLAS buffers, page faults of a fresh C
    best = min(
        (lambda t: (a @ b, time.perf_counter() - t)[1])(time.perf_counter())
        for _ in range(repeat)
    )
    blas = [
        {k: i.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
        for i in threadpool_info() if i["user_api"] == "blas"
    ]
print(json.dumps({"seconds": best, "gflops": 2 * n**3 / best / 1e9, "blas": blas}))
"""

# multiprocessing.Pool(2), A, B, C in multiprocessing.shared_memory, one BLAS thread
# per process, one task per row block (the same blocks procpool uses). Prints JSON.
MP_SCRIPT = r"""
import json, os, sys, time
os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before numpy loads, in parent and children
os.environ["OMP_NUM_THREADS"] = "1"
t0 = time.perf_counter()
import numpy as np
from multiprocessing import Pool, shared_memory

def attach(names, n):
    global A, B, C, SEGMENTS
    SEGMENTS = [shared_memory.SharedMemory(name=name) for name in names]
    A, B, C = (np.ndarray((n, n), dtype="f8", buffer=s.buf) for s in SEGMENTS)

def rows(span):
    lo, hi = span
    np.matmul(A[lo:hi], B, out=C[lo:hi])
    return hi - lo

if __name__ == "__main__":
    n, procs, block = map(int, sys.argv[1:4])
    segments = [shared_memory.SharedMemory(create=True, size=n * n * 8) for _ in range(3)]
    try:
        a, b, c = (np.ndarray((n, n), dtype="f8", buffer=s.buf) for s in segments)
        rng = np.random.default_rng(1)
        a[:], b[:] = rng.uniform(-1, 1, (n, n)), rng.uniform(-1, 1, (n, n))
        spans = [(lo, min(lo + block, n)) for lo in range(0, n, block)]
        t1 = time.perf_counter()
        with Pool(procs, initializer=attach, initargs=([s.name for s in segments], n)) as pool:
            done = sum(pool.map(rows, spans, chunksize=1))
        t2 = time.perf_counter()
        assert done == n
        assert np.allclose(c[:7], a[:7] @ b)
        del a, b, c
    finally:
        for s in segments:
            s.close()
            s.unlink()
    print(json.dumps({"pool_s": t2 - t1, "gflops": 2 * n**3 / (t2 - t1) / 1e9,
                      "wall_s": time.perf_counter() - t0}))
"""


def numpy_env():
    """The environment for the numpy measurements: OpenBLAS picks its own kernel."""
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    return env


def run_json(cmd, env=None):
    started = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1]), wall


def procpool(n, procs, repeat):
    best = None
    for _ in range(repeat):
        report, wall = run_json([PROCPOOL, "run", "matmul", "--n", str(n),
                                 "--procs", str(procs), "--json", "--quiet"])
        cpu = report["workers_cpu"]["user_s"] + report["workers_cpu"]["sys_s"]
        row = {
            "gflops": report["result"]["gflops"],
            "pool_s": report["wall_s"],
            "whole_wall_s": wall,
            "prepare_s": report["result"]["prepare_s"],
            # Compute rate per busy core: flops over the workers' CPU time.
            "gflops_per_cpu_s": 2 * n**3 / cpu / 1e9,
            # The kernel alone: flops over the seconds the workers spent in it
            # (mapping fresh pages, start, dispatch and shutdown left out).
            "kernel_gflops_per_worker": report["result"]["kernel_gflops_per_worker"],
            "prefault_s": report["result"]["prefault_s"],
            "block": report["result"]["block"],
        }
        if best is None or row["gflops"] > best["gflops"]:
            best = row
    return best


def numpy(n, threads, repeat):
    result, _ = run_json([sys.executable, "-c", NUMPY_SCRIPT, str(n), str(threads),
                          str(repeat)], env=numpy_env())
    return result


def multiprocessing_pool(n, procs, block, repeat):
    runs = [run_json([sys.executable, "-c", MP_SCRIPT, str(n), str(procs), str(block)])
            for _ in range(repeat)]
    best, wall = max(runs, key=lambda r: r[0]["gflops"])
    best["whole_wall_s"] = wall
    return best


def machine():
    model = next((line.split(":", 1)[1].strip()
                  for line in subprocess.run(["lscpu"], capture_output=True, text=True)
                  .stdout.splitlines() if line.startswith("Model name")), "?")
    import numpy as np
    return {
        "cpu": model,
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "numpy": np.__version__,
        # Other work on the machine skews every figure: compare only rows of one run.
        "loadavg_1m_at_start": os.getloadavg()[0],
        "OPENBLAS_CORETYPE (procpool, mp runs)": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_L2_SIZE (procpool, mp runs)": os.environ.get("OPENBLAS_L2_SIZE"),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not os.path.exists(PROCPOOL):
        sys.exit("build first: cargo build --release")
    results = {"machine": machine(), "sizes": {}}
    print("machine:", json.dumps(results["machine"]))
    print("\n| n | runner | GFLOP/s | compute s | whole process s | kernel GFLOP/s per worker |")
    print("|---|---|---:|---:|---:|---:|")
    for n in args.sizes:
        r = results["sizes"][n] = {}
        for procs in (1, 2):
            p = r[f"procpool_{procs}"] = procpool(n, procs, args.repeat)
            print(f"| {n} | procpool --procs {procs} | {p['gflops']:.1f} | "
                  f"{p['pool_s']:.3f} | {p['whole_wall_s']:.3f} | "
                  f"{p['kernel_gflops_per_worker']:.1f} |")
        for threads in (1, 2):
            p = r[f"numpy_{threads}"] = numpy(n, threads, args.repeat)
            print(f"| {n} | numpy A@B, {threads} BLAS thread(s) | {p['gflops']:.1f} | "
                  f"{p['seconds']:.3f} | – | {p['gflops'] / threads:.1f} |")
        block = r["procpool_2"]["block"]
        p = r["mp_pool_2"] = multiprocessing_pool(n, 2, block, args.repeat)
        print(f"| {n} | multiprocessing Pool(2) + shared_memory | {p['gflops']:.1f} | "
              f"{p['pool_s']:.3f} | {p['whole_wall_s']:.3f} | – |")
        r["ratios"] = {
            "procpool2_over_numpy2": r["procpool_2"]["gflops"] / r["numpy_2"]["gflops"],
            "procpool1_over_numpy1": r["procpool_1"]["gflops"] / r["numpy_1"]["gflops"],
            "procpool1_cpu_rate_over_numpy1":
                r["procpool_1"]["gflops_per_cpu_s"] / r["numpy_1"]["gflops"],
            "procpool1_kernel_over_numpy1":
                r["procpool_1"]["kernel_gflops_per_worker"] / r["numpy_1"]["gflops"],
            "procpool2_kernel_over_numpy1":
                r["procpool_2"]["kernel_gflops_per_worker"] / r["numpy_1"]["gflops"],
            "procpool2_over_mp2": r["procpool_2"]["gflops"] / r["mp_pool_2"]["gflops"],
        }
    print("\nBLAS (numpy runs):", json.dumps(results["sizes"][args.sizes[0]]["numpy_1"]["blas"]))
    for n in args.sizes:
        print(f"ratios n={n}:", json.dumps({k: round(v, 3) for k, v in
                                            results["sizes"][n]["ratios"].items()}))
    print(json.dumps(results))


if __name__ == "__main__":
    main()

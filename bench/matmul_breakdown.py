#!/usr/bin/env python3
"""Where procpool's matmul time goes, against numpy, in one run.

    cargo build --release && python3 bench/matmul_breakdown.py [--n 2048] [--repeat 7]

For `procpool run matmul --n N --procs P [--block B]` (P = 1, 2; the default block and
larger ones) prints, as medians over --repeat runs: the pool's wall, GFLOP/s, the
workers' user and sys CPU, GFLOP/s per busy CPU second (2n^3 / workers' user+sys) and
per user second, the seconds the workers spent mapping fresh pages and the kernel's
GFLOP/s (both as the workers report them per task), and how the row blocks were split
between the workers. Also the pool's
own start and stop (`procpool run noop --tasks 1 --procs P`, wall_s and workers' sys),
the page faults of one whole run (`perf stat -e page-faults`, workers included), and
numpy A@B with 1 and 2 BLAS threads (the same subprocess as bench/matmul.py, with
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset). Needs numpy and threadpoolctl; perf optional.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from matmul import NUMPY_SCRIPT, PROCPOOL, numpy_env  # noqa: E402


def report(args):
    out = subprocess.run([PROCPOOL, "run", *args, "--json", "--quiet"], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def med(values):
    return statistics.median(values)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    n, flops = args.n, 2 * args.n**3
    out = {"n": n, "repeat": args.repeat, "rows": [], "start": {}}

    for procs in (1, 2):
        runs = [report(["--procs", str(procs), "noop", "--tasks", "1"]) for _ in range(args.repeat)]
        out["start"][procs] = {"wall_s": med(r["wall_s"] for r in runs),
                               "workers_sys_s": med(r["workers_cpu"]["sys_s"] for r in runs),
                               "workers_user_s": med(r["workers_cpu"]["user_s"] for r in runs)}

    print(f"n = {n}, medians of {args.repeat} runs\n")
    print("| command | wall s | GFLOP/s | workers user s | workers sys s "
          "| GFLOP/s per CPU s | GFLOP/s per user s | prefault s | kernel GFLOP/s per worker "
          "| blocks per worker |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for procs, blocks in ((1, [None, n // 2, n]), (2, [None, n // 4, n // 2])):
        for block in blocks:
            cmd = ["--procs", str(procs), "matmul", "--n", str(n)]
            if block:
                cmd += ["--block", str(block)]
            runs = [report(cmd) for _ in range(args.repeat)]
            user = med(r["workers_cpu"]["user_s"] for r in runs)
            sys_ = med(r["workers_cpu"]["sys_s"] for r in runs)
            splits = sorted({"/".join(str(w["tasks_done"]) for w in r["workers"]) for r in runs})
            row = {
                "command": "procpool run " + " ".join(cmd),
                "block": runs[0]["result"]["block"],
                "wall_s": med(r["wall_s"] for r in runs),
                "gflops": med(r["result"]["gflops"] for r in runs),
                "best_gflops": max(r["result"]["gflops"] for r in runs),
                "workers_user_s": user,
                "workers_sys_s": sys_,
                "gflops_per_cpu_s": med(flops / (r["workers_cpu"]["user_s"] + r["workers_cpu"]["sys_s"]) / 1e9
                                        for r in runs),
                "gflops_per_user_s": med(flops / r["workers_cpu"]["user_s"] / 1e9 for r in runs),
                # What the workers report per task: mapping the block's fresh pages of
                # C (and A's), then the kernel alone.
                "prefault_s": med(r["result"]["prefault_s"] for r in runs),
                "kernel_gflops_per_worker": med(r["result"]["kernel_gflops_per_worker"] for r in runs),
                "splits": splits,
            }
            out["rows"].append(row)
            print(f"| `{row['command']}` (block {row['block']}) | {row['wall_s']:.3f} | {row['gflops']:.1f} "
                  f"| {user:.3f} | {sys_:.3f} | {row['gflops_per_cpu_s']:.1f} | {row['gflops_per_user_s']:.1f} "
                  f"| {row['prefault_s']:.3f} | {row['kernel_gflops_per_worker']:.1f} | {', '.join(splits)} |")

    for procs, s in out["start"].items():
        print(f"\npool start+stop, `procpool run --procs {procs} noop --tasks 1`: wall {s['wall_s'] * 1e3:.1f} ms, "
              f"workers sys {s['workers_sys_s'] * 1e3:.1f} ms, user {s['workers_user_s'] * 1e3:.1f} ms", end="")
    print()

    if shutil.which("perf"):
        for procs in (1, 2):
            cmd = ["perf", "stat", "-x,", "-e", "page-faults,task-clock", PROCPOOL, "run", "--procs", str(procs),
                   "matmul", "--n", str(n), "--quiet"]
            err = subprocess.run(cmd, capture_output=True, text=True).stderr
            faults = next((line.split(",")[0] for line in err.splitlines() if "page-faults" in line), "?")
            out[f"perf_page_faults_procs{procs}"] = faults
            print(f"`{' '.join(cmd[:5])} procpool run --procs {procs} matmul --n {n}`: {faults} page faults "
                  f"(supervisor and workers; C alone is {n * n * 8 // 4096} pages of 4 KiB)")

    for threads in (1, 2):
        res = json.loads(subprocess.run([sys.executable, "-c", NUMPY_SCRIPT, str(n), str(threads),
                                         str(args.repeat)], capture_output=True, text=True, check=True,
                                        env=numpy_env()).stdout.strip().splitlines()[-1])
        out[f"numpy_{threads}"] = res
        print(f"numpy A@B, {threads} BLAS thread(s), best of {args.repeat} after a warm-up: "
              f"{res['gflops']:.1f} GFLOP/s ({res['blas'][0]['architecture']} kernel)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Single-thread dgemm kernels side by side: gemm's AVX2 and AVX-512 paths,
matrixmultiply, and numpy/OpenBLAS with one thread, in one run.

    python3 bench/kernels.py [--rounds 2]

Builds bench/kernels (a crate outside the workspace) twice, without and with gemm's
x86-v4 feature, then runs the two builds in alternation --rounds times; each run
measures gemm and matrixmultiply at n=1024 and 2048 (best of 3). numpy runs in the
same subprocess as bench/matmul.py (OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset).
Prints every measurement, then a Markdown table of the best per kernel. Needs numpy
and threadpoolctl.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from matmul import NUMPY_SCRIPT, numpy_env  # noqa: E402

CRATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels")
BUILDS = {"x86-v3": [], "x86-v4": ["--features", "x86-v4"]}


def build(path, features):
    manifest = os.path.join(CRATE, "Cargo.toml")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--manifest-path", manifest,
                    *features], check=True)
    binary = os.path.join(CRATE, "target", "release", "kbench")
    target = os.path.join(CRATE, "target", f"kbench-{path}")
    shutil.copy(binary, target)
    return target


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    binaries = {path: build(path, features) for path, features in BUILDS.items()}
    best = {}
    for _ in range(args.rounds):
        for path, binary in binaries.items():
            out = subprocess.run([binary], check=True, capture_output=True, text=True).stdout
            for line in out.splitlines():
                print(line)
                row = json.loads(line)
                label = f"gemm ({path})" if row["kernel"] == "gemm" else row["kernel"]
                key = (row["n"], label)
                best[key] = max(best.get(key, 0.0), row["gflops"])
        for n in (1024, 2048):
            result = json.loads(subprocess.run(
                [sys.executable, "-c", NUMPY_SCRIPT, str(n), "1", "3"], env=numpy_env(),
                check=True, capture_output=True, text=True).stdout)
            print(json.dumps({"n": n, "kernel": "numpy", "gflops": round(result["gflops"], 2),
                              "blas": result["blas"]}))
            key = (n, "numpy/OpenBLAS, 1 thread")
            best[key] = max(best.get(key, 0.0), result["gflops"])
    labels = ["gemm (x86-v3)", "gemm (x86-v4)", "matrixmultiply", "numpy/OpenBLAS, 1 thread"]
    print("\n| n | " + " | ".join(labels) + " | gemm x86-v4 / numpy |")
    print("|---|" + "---:|" * (len(labels) + 1))
    for n in (1024, 2048):
        cells = [f"{best[(n, label)]:.1f}" for label in labels]
        ratio = best[(n, "gemm (x86-v4)")] / best[(n, "numpy/OpenBLAS, 1 thread")]
        print(f"| {n} | " + " | ".join(cells) + f" | {ratio:.2f} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A protocol-v1 matmul worker in Python: fills row blocks of C = A @ B with numpy.

    procpool run matmul --child "python3 examples/python/matmul_worker.py" --check

A, B and C are the supervisor's shared arrays (PROCPOOL_ARRAYS); each path opens as a
complete .npy file, so np.load maps the same memory the other workers write.
"""
import json
import os
import sys
import time

# One BLAS thread per worker: procpool already runs one worker per core, and a
# multi-threaded BLAS in each would oversubscribe the cores. Must be set before numpy loads.
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

arrays = json.loads(os.environ["PROCPOOL_ARRAYS"])
a, b, c = (
    np.load(arrays[name]["path"], mmap_mode="r+" if arrays[name]["writable"] else "r")
    for name in ("a", "b", "c")
)


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


send({"type": "ready"})
for line in sys.stdin:
    message = json.loads(line)
    if message["type"] == "stop":
        break
    if message["type"] != "task":
        continue
    lo, hi = message["input"]["lo"], message["input"]["hi"]
    try:
        # Straight into C's shared pages: no copy, no flush needed (MAP_SHARED memfd).
        started = time.perf_counter()
        np.matmul(a[lo:hi], b, out=c[lo:hi])
        kernel_s = time.perf_counter() - started  # the run reports GFLOP/s per worker
        send({"type": "result", "id": message["id"],
              "output": {"rows": hi - lo, "kernel_s": kernel_s}})
    except Exception as err:  # the task failed; the worker is fine
        send({"type": "error", "id": message["id"], "message": repr(err)})

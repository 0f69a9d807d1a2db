"""Python peers for bench/foundation.py, run in a fresh interpreter each time.

Kept tiny on purpose: `spawn` and `forkserver` workers re-import this module, so it
imports nothing heavy at top level. Prints one JSON object on stdout.
"""
import sys
import time


def f(x):
    return x


def _out(**kw):
    import json
    print(json.dumps(kw), flush=True)


def ppe_map(n, procs, chunksize):
    from concurrent.futures import ProcessPoolExecutor
    t0 = time.perf_counter()
    with ProcessPoolExecutor(procs) as ex:
        t1 = time.perf_counter()
        count = sum(1 for _ in ex.map(f, range(n), chunksize=chunksize))
        t2 = time.perf_counter()
    t3 = time.perf_counter()
    assert count == n
    _out(wall_s=t3 - t0, map_s=t2 - t1, tasks_per_s=n / (t3 - t0))


def mp_map(n, procs, chunksize):
    import multiprocessing as mp
    t0 = time.perf_counter()
    pool = mp.Pool(procs)
    t1 = time.perf_counter()
    out = pool.map(f, range(n), chunksize=chunksize or None)
    t2 = time.perf_counter()
    pool.close()
    pool.join()
    t3 = time.perf_counter()
    assert len(out) == n
    _out(wall_s=t3 - t0, map_s=t2 - t1, tasks_per_s=n / (t3 - t0))


def ppe_rt(n):
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(1) as ex:
        for i in range(200):  # warm up: worker started and hot
            ex.submit(f, i).result()
        t0 = time.perf_counter()
        for i in range(n):
            ex.submit(f, i).result()
        t1 = time.perf_counter()
    _out(us_per_rt=(t1 - t0) / n * 1e6)


def apply_rt(n):
    import multiprocessing as mp
    with mp.Pool(1) as pool:
        for i in range(200):
            pool.apply(f, (i,))
        t0 = time.perf_counter()
        for i in range(n):
            pool.apply(f, (i,))
        t1 = time.perf_counter()
    _out(us_per_rt=(t1 - t0) / n * 1e6)


def pipe_rt(n):
    import os
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w1)
        os.close(r2)
        while True:
            b = os.read(r1, 1)
            if not b:
                os._exit(0)
            os.write(w2, b)
    os.close(r1)
    os.close(w2)
    for _ in range(1000):
        os.write(w1, b"x")
        os.read(r2, 1)
    t0 = time.perf_counter()
    for _ in range(n):
        os.write(w1, b"x")
        os.read(r2, 1)
    t1 = time.perf_counter()
    os.close(w1)
    os.waitpid(pid, 0)
    _out(us_per_rt=(t1 - t0) / n * 1e6)


def start(ctx, procs):
    import multiprocessing as mp
    t0 = time.perf_counter()
    with mp.get_context(ctx).Pool(procs) as pool:
        pool.apply(f, (1,))
        t1 = time.perf_counter()
    _out(first_result_s=t1 - t0)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode in ("ppe_map", "mp_map"):
        globals()[mode](int(args[0]), int(args[1]), int(args[2]))
    elif mode in ("ppe_rt", "apply_rt", "pipe_rt"):
        globals()[mode](int(args[0]))
    elif mode == "start":
        start(args[0], int(args[1]))
    else:
        sys.exit(f"unknown mode {mode}")

#!/usr/bin/env python3
"""procpool's Python package against Python's own pools and loky, in one run.

    .venv/bin/python bench/python.py             # 3 repeats, a few minutes on 2 cores
    .venv/bin/python bench/python.py --quick     # smaller N, 1 repeat (smoke test)
    .venv/bin/python bench/python.py --json out.json

Needs the package installed (`pip install ./python`); loky is measured when it imports.
Measures (medians over repeats):
  1. Pool.map(f, range(N)) with the default chunksize: procpool.Pool, multiprocessing.Pool
  2. Executor.map(f, range(M)) with chunksize 1: procpool.Executor, ProcessPoolExecutor
     (fork), loky
  3. pool start to first result: the same pools, created and asked for one result
  4. a worker SIGKILLed in the middle of 1,000 tasks: what each pool returns
Every pool has the same number of workers (--procs, default the cores).
"""

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import signal
import statistics
import sys
import time

import procpool

try:
    import loky
except ImportError:
    loky = None


def tiny(x):
    return x + 1


def die_on(x, poison=500):
    if x == poison:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def median_of(repeats, fn):
    return statistics.median(fn() for _ in range(repeats))


def pool_map(procs, n, repeats):
    def procpool_run():
        with procpool.Pool(procs) as pool:
            seconds, out = timed(lambda: pool.map(tiny, range(n)))
        assert out[-1] == n
        return seconds

    def multiprocessing_run():
        with multiprocessing.get_context("fork").Pool(procs) as pool:
            seconds, out = timed(lambda: pool.map(tiny, range(n)))
        assert out[-1] == n
        return seconds

    return {
        "procpool.Pool": n / median_of(repeats, procpool_run),
        "multiprocessing.Pool (fork)": n / median_of(repeats, multiprocessing_run),
    }


def executor_map(procs, m, repeats):
    def measure(make):
        def one():
            executor = make()
            try:
                executor.submit(tiny, 0).result()  # workers up before the clock starts
                seconds, out = timed(lambda: list(executor.map(tiny, range(m))))
            finally:
                executor.shutdown()
            assert out[-1] == m
            return seconds

        return m / median_of(repeats, one)

    rates = {
        "procpool.Executor": measure(lambda: procpool.Executor(procs)),
        "ProcessPoolExecutor (fork)": measure(
            lambda: concurrent.futures.ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("fork"))
        ),
    }
    if loky is not None:
        rates["loky"] = measure(lambda: loky.ProcessPoolExecutor(procs))
    return rates


def first_result(procs, repeats):
    def measure(make, submit):
        def one():
            started = time.perf_counter()
            pool = make()
            try:
                assert submit(pool) == 2
                return time.perf_counter() - started
            finally:
                pool.shutdown() if hasattr(pool, "shutdown") else pool.terminate()

        return median_of(repeats, one)

    def submit_future(pool):
        return pool.submit(tiny, 1).result()

    fork = multiprocessing.get_context("fork")
    times = {
        "procpool.Executor": measure(lambda: procpool.Executor(procs), submit_future),
        "procpool.Pool": measure(lambda: procpool.Pool(procs), lambda pool: pool.apply(tiny, (1,))),
        "ProcessPoolExecutor (fork)": measure(
            lambda: concurrent.futures.ProcessPoolExecutor(procs, mp_context=fork), submit_future
        ),
        "ProcessPoolExecutor (spawn)": measure(
            lambda: concurrent.futures.ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn")),
            submit_future,
        ),
        "multiprocessing.Pool (fork)": measure(lambda: fork.Pool(procs), lambda pool: pool.apply(tiny, (1,))),
    }
    if loky is not None:
        # loky reuses its executor across calls; a fresh one each time, as the others.
        times["loky"] = measure(lambda: loky.ProcessPoolExecutor(procs), submit_future)
    return times


def one_crash(procs):
    """Submit 1,000 tasks of which task 500 kills its worker; count what comes back."""

    def count(futures, wait_s):
        done = concurrent.futures.wait(futures, timeout=wait_s).done
        results = sum(1 for f in done if f.exception() is None)
        errors = sorted({type(f.exception()).__name__ for f in done if f.exception() is not None})
        return {"results": results, "errors": errors, "unfinished": len(futures) - len(done)}

    outcomes = {}
    with procpool.Executor(procs, max_attempts=1) as executor:
        outcomes["procpool.Executor"] = count([executor.submit(die_on, x) for x in range(1000)], 60)
    executor = concurrent.futures.ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("fork"))
    outcomes["ProcessPoolExecutor (fork)"] = count([executor.submit(die_on, x) for x in range(1000)], 60)
    executor.shutdown()
    if loky is not None:
        executor = loky.ProcessPoolExecutor(procs)
        outcomes["loky"] = count([executor.submit(die_on, x) for x in range(1000)], 60)
        executor.shutdown()
    pool = multiprocessing.get_context("fork").Pool(procs)
    pending = pool.map_async(die_on, range(1000), chunksize=1)
    pending.wait(10)
    outcomes["multiprocessing.Pool (fork)"] = (
        {"results": 1000 if pending.ready() else 0, "errors": [], "unfinished": 0 if pending.ready() else 1000}
        if not pending.ready() or pending.successful()
        else {"results": 0, "errors": ["raised"], "unfinished": 0}
    )
    pool.terminate()
    return outcomes


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="write the numbers here too")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    n = 100_000 if args.quick else 1_000_000
    m = 5_000 if args.quick else 50_000

    results = {
        "machine": "%s, %d cores, Python %s" % (platform.machine(), os.cpu_count(), platform.python_version()),
        "procs": args.procs,
        "pool_map_tasks_per_s": pool_map(args.procs, n, repeats),
        "executor_map_chunksize_1_tasks_per_s": executor_map(args.procs, m, repeats),
        "start_to_first_result_s": first_result(args.procs, repeats),
        "one_crash_in_1000": one_crash(args.procs),
    }
    pm, em, fr = (results[k] for k in ("pool_map_tasks_per_s", "executor_map_chunksize_1_tasks_per_s", "start_to_first_result_s"))
    print("## %s; %d workers, medians of %d" % (results["machine"], args.procs, repeats))
    print("\n| Pool.map(f, range(%d)), default chunksize | tasks/s | vs multiprocessing |\n|---|---|---|" % n)
    for name, rate in pm.items():
        print("| %s | %.0f | %.2f× |" % (name, rate, rate / pm["multiprocessing.Pool (fork)"]))
    print("\n| Executor.map(f, range(%d)), chunksize 1 | tasks/s | vs ProcessPoolExecutor |\n|---|---|---|" % m)
    for name, rate in em.items():
        print("| %s | %.0f | %.2f× |" % (name, rate, rate / em["ProcessPoolExecutor (fork)"]))
    print("\n| start to first result | ms | vs ProcessPoolExecutor (fork) |\n|---|---|---|")
    for name, seconds in fr.items():
        print("| %s | %.1f | %.2f× |" % (name, seconds * 1e3, seconds / fr["ProcessPoolExecutor (fork)"]))
    print("\n| one worker SIGKILLed among 1,000 tasks | results | errors | unfinished |\n|---|---|---|---|")
    for name, outcome in results["one_crash_in_1000"].items():
        print("| %s | %d | %s | %d |" % (name, outcome["results"], ", ".join(outcome["errors"]) or "-", outcome["unfinished"]))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()

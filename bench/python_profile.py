#!/usr/bin/env python3
"""Where the client's time goes in procpool.Executor.map(f, range(N)), chunksize 1:
the client's wall and CPU time, then cProfile's top functions by own time.

    .venv/bin/python bench/python_profile.py [N]     # default N = 50000
"""

import cProfile
import os
import pstats
import sys
import time

import procpool


def tiny(x):
    return x + 1


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50000
    with procpool.Executor(2) as executor:
        list(executor.map(tiny, range(100)))  # workers up and warm
        started, cpu = time.perf_counter(), os.times()
        profile = cProfile.Profile()
        profile.enable()
        list(executor.map(tiny, range(n)))
        profile.disable()
        wall, after = time.perf_counter() - started, os.times()
    client_cpu = (after.user - cpu.user) + (after.system - cpu.system)
    print(f"wall {wall:.2f} s, client CPU {client_cpu:.2f} s, {n / wall:.0f} tasks/s")
    pstats.Stats(profile).sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    main()

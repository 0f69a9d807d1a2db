#!/usr/bin/env python3
"""What the kernel operations behind a worker's cgroup cost by themselves, with no
procpool: `mkdir` of a cgroup v2 leaf, a fork whose child exits at once, the same
fork whose child first moves itself into a leaf (a write to its `cgroup.procs`), and
`rmdir` of the leaf. Root and a writable cgroup v2 hierarchy are needed.

    python3 bench/cgroup_ops.py [--leaves 500] [--repeat 3]

Prints microseconds per leaf, one line per repeat.
"""

import argparse
import os
import time


def own_v2_dir():
    with open("/proc/self/cgroup") as cgroups:
        path = next(line[3:].strip() for line in cgroups if line.startswith("0::"))
    for root in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        if os.path.exists(os.path.join(root, "cgroup.controllers")):
            return root + path.rstrip("/")
    raise SystemExit("no cgroup v2 hierarchy here")


def fork_all(count, child):
    pids = []
    for index in range(count):
        pid = os.fork()
        if pid == 0:
            child(index)
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)


def one_round(base, leaves):
    os.mkdir(base)
    started = time.perf_counter()
    for index in range(leaves):
        os.mkdir(f"{base}/l{index}")
    mkdir = time.perf_counter() - started
    procs = [os.open(f"{base}/l{index}/cgroup.procs", os.O_WRONLY) for index in range(leaves)]
    started = time.perf_counter()
    fork_all(leaves, lambda index: None)
    fork = time.perf_counter() - started
    started = time.perf_counter()
    fork_all(leaves, lambda index: os.write(procs[index], b"0\n"))
    fork_join = time.perf_counter() - started
    for fd in procs:
        os.close(fd)
    started = time.perf_counter()
    for index in range(leaves):
        os.rmdir(f"{base}/l{index}")
    rmdir = time.perf_counter() - started
    os.rmdir(base)
    per = lambda seconds: seconds / leaves * 1e6
    return (
        f"per leaf: mkdir {per(mkdir):.0f} us, fork+exit {per(fork):.0f} us, "
        f"fork+join+exit {per(fork_join):.0f} us, rmdir {per(rmdir):.0f} us"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    base = f"{own_v2_dir()}/cgroup-ops-{os.getpid()}"
    for _ in range(options.repeat):
        print(one_round(base, options.leaves), flush=True)


if __name__ == "__main__":
    main()

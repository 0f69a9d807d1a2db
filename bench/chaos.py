#!/usr/bin/env python3
"""Chaos benchmark: what a worker's death costs procpool, and what it does to Python's pools.

    python3 bench/chaos.py               # everything, 3 repeats of part A, ~2 minutes
    python3 bench/chaos.py --quick       # 1 repeat, smaller sizes (smoke test)
    python3 bench/chaos.py --json out.json
    python3 bench/chaos.py --limit-a 2e10  # part A on a longer run

A. Cost of a kill. `procpool run primes --limit 4e9` (1.3-5 s on 2 cores; --limit-a 2e10
   for ~6.5 s on an idle machine, so that --chaos 1 kills a few times) with no chaos,
   `--chaos 1` and `--chaos 5` (a random busy worker SIGKILLed 1 or 5 times a second).
   cost of one kill = (wall with chaos - wall without) / chaos kills: the lost half
   task plus detection, restart and re-dispatch.
   Detect + restart: a worker SIGKILLed from here, then /proc polled every 0.5 ms
   until the supervisor has a new child; the kills are spaced so that no replacement
   dies young (which would add restart backoff).
B. One worker SIGKILLed mid-run, the same pure-Python sieve in three pools:
   multiprocessing.Pool.map, concurrent.futures.ProcessPoolExecutor, and procpool
   with this file as its `--child` worker (protocol v1). Bounded by a timeout; a run
   that does not end in time is recorded as "hung".

stdlib only; needs a release build (`cargo build --release`; pass --binary otherwise).
Also serves as the procpool worker (`chaos.py worker`) and the peer runs
(`chaos.py peer pool|ppe LIMIT RANGE PROCS`).
"""
import argparse
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
THIS = os.path.abspath(__file__)

# pi(x) from the literature, to check every count.
PI = {10**8: 5_761_455, 10**9: 50_847_534, 2 * 10**9: 98_222_287, 4 * 10**9: 189_961_812,
      10**10: 455_052_511, 2 * 10**10: 882_206_716}


# --- the task: count primes in [lo, hi) with a segmented sieve, in pure Python ---

_small = []


def _small_primes(limit):
    global _small
    if _small and _small[-1] ** 2 > limit:
        return _small
    n = max(math.isqrt(limit) + 1, 1000) * 2
    sieve = bytearray([1]) * (n + 1)
    sieve[0:2] = b"\0\0"
    for p in range(2, math.isqrt(n) + 1):
        if sieve[p]:
            sieve[p * p :: p] = bytes(len(range(p * p, n + 1, p)))
    _small = [p for p in range(n + 1) if sieve[p]]
    return _small


def count_range(lo, hi):
    lo = max(lo, 2)
    if hi <= lo:
        return 0
    seg = bytearray([1]) * (hi - lo)
    for p in _small_primes(hi):
        if p * p >= hi:
            break
        start = max(p * p, (lo + p - 1) // p * p)
        seg[start - lo :: p] = bytes(len(range(start - lo, hi - lo, p)))
    return seg.count(1)


def count_task(bounds):
    return count_range(*bounds)


def serve():
    """A procpool worker (protocol v1) for the `primes` workload's tasks."""
    print(json.dumps({"type": "ready"}), flush=True)
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["type"] == "stop":
            break
        if msg["type"] == "task":
            n = count_range(msg["input"]["lo"], msg["input"]["hi"])
            print(json.dumps({"type": "result", "id": msg["id"], "output": n}), flush=True)


def ranges(limit, size):
    return [(lo, min(lo + size, limit)) for lo in range(0, limit, size)]


def peer(kind, limit, size, procs):
    """One run of a Python pool; prints {"count", "results", "error"} as JSON."""
    tasks = ranges(limit, size)
    out = {"count": None, "results": 0, "error": None}
    if kind == "pool":
        import multiprocessing

        with multiprocessing.Pool(procs) as pool:
            counts = pool.map(count_task, tasks, chunksize=1)
        out.update(count=sum(counts), results=len(counts))
    else:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        total = 0
        try:
            with ProcessPoolExecutor(procs) as pool:
                for future in as_completed([pool.submit(count_task, t) for t in tasks]):
                    total += future.result()
                    out["results"] += 1
            out["count"] = total
        except Exception as err:  # BrokenProcessPool, reported as data
            out["error"] = f"{type(err).__name__}: {err}"
    print(json.dumps(out), flush=True)


# --- measuring ---


def children(pid):
    """Live child pids of pid, from /proc."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in "ZXx":
            kids.append(int(entry))
    return kids


def wait_children(pid, count, timeout=20.0, exclude=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = [k for k in children(pid) if k not in exclude]
        if len(kids) >= count:
            return kids
        time.sleep(0.0005)
    return []


def procpool_json(binary, args):
    cmd = [binary, "run", *args, "--json", "--quiet"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if p.returncode not in (0, 1):
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr}")
    return json.loads(p.stdout), wall


def part_a(binary, limit, repeats):
    base = ["primes", "--limit", str(limit), "--procs", "2"]
    rows = []
    baseline = None
    for chaos in (None, 1, 5):
        args = base + (["--chaos", str(chaos)] if chaos else [])
        samples = []
        for _ in range(repeats):
            report, wall = procpool_json(binary, args)
            assert report["result"]["count"] == PI[limit], report["result"]
            cpu = report["workers_cpu"]["user_s"] + report["workers_cpu"]["sys_s"]
            samples.append((report["wall_s"], report["chaos_kills"], report["retries"], cpu))
        wall = statistics.median(s[0] for s in samples)
        kills = statistics.median(s[1] for s in samples)
        retries = statistics.median(s[2] for s in samples)
        cpu = statistics.median(s[3] for s in samples)
        if chaos is None:
            baseline, baseline_cpu = wall, cpu
            cost = cpu_cost = None
        else:
            killed = [s for s in samples if s[1]]  # runs with no kill say nothing per kill
            cost = statistics.median((w - baseline) / k for w, k, _, _ in killed) if killed else None
            cpu_cost = statistics.median((c - baseline_cpu) / k for _, k, _, c in killed) if killed else None
        rows.append({"chaos": chaos, "wall_s": wall, "kills": kills, "retries": retries,
                     "cost_per_kill_ms": None if cost is None else cost * 1000,
                     "cpu_s": cpu, "cpu_per_kill_ms": None if cpu_cost is None else cpu_cost * 1000,
                     "walls": [round(s[0], 3) for s in samples], "kills_runs": [s[1] for s in samples], "command": "procpool run " + " ".join(args)})
    return rows


def detect_restart(binary, kills):
    """Kills a worker from outside `kills` times; seconds until the replacement exists."""
    cmd = [binary, "run", "primes", "--limit", "1e12", "--range", "1e10", "--procs", "2",
           "--max-attempts", "1000"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    latencies = []
    try:
        workers = wait_children(p.pid, 2)
        time.sleep(1.2)  # past "dying young": no backoff for the first replacement
        for i in range(kills):
            victim = sorted(children(p.pid))[0] if i % 2 == 0 else sorted(children(p.pid))[-1]
            before = set(children(p.pid))
            t0 = time.perf_counter()
            os.kill(victim, signal.SIGKILL)
            new = wait_children(p.pid, 1, exclude=before)
            latencies.append(time.perf_counter() - t0 if new else float("nan"))
            time.sleep(0.7)  # each slot's process lives > 1 s before its next kill
    finally:
        p.kill()
        stderr = p.communicate()[1]
    backoffs = [line.rsplit("; ", 1)[-1] for line in stderr.splitlines()
                if "killed by SIGKILL" in line and "; " in line]
    return {"kills": kills, "median_ms": statistics.median(latencies) * 1000,
            "max_ms": max(latencies) * 1000, "restart_notes": sorted(set(backoffs)),
            "command": " ".join(cmd)}


def one_kill(cmd, kill_after, timeout, parent_of_workers=None):
    """Runs cmd, SIGKILLs one of its workers after kill_after s; returns what happened."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    killed = None
    if kill_after is not None:
        workers = wait_children(p.pid, 2, timeout=10)
        time.sleep(max(0.0, kill_after - (time.perf_counter() - t0)))
        workers = children(p.pid)
        if workers:
            killed = workers[0]
            os.kill(killed, signal.SIGKILL)
    try:
        out, err = p.communicate(timeout=timeout)
        wall = time.perf_counter() - t0
        status = "exit %d" % p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        wall = time.perf_counter() - t0
        status = "hung"
    return {"status": status, "wall_s": wall, "killed": killed, "stdout": out.strip(),
            "stderr_tail": err.strip().splitlines()[-1:] if err.strip() else []}


def part_b(binary, limit, size, kill_after, timeout):
    procs = "2"
    runs = {
        "multiprocessing.Pool.map": [PY, THIS, "peer", "pool", str(limit), str(size), procs],
        "ProcessPoolExecutor (as_completed)": [PY, THIS, "peer", "ppe", str(limit), str(size), procs],
        "procpool --child (same Python sieve)": [
            binary, "run", "primes", "--limit", str(limit), "--range", str(size), "--procs", procs,
            "--child", f"{PY} {THIS} worker", "--json", "--quiet"],
    }
    rows = []
    for name, cmd in runs.items():
        clean = one_kill(cmd, None, timeout)
        killed = one_kill(cmd, kill_after, timeout)
        row = {"pool": name, "clean_wall_s": clean["wall_s"], "clean_status": clean["status"]}
        for key, run in (("clean", clean), ("killed", killed)):
            count = results = error = None
            try:
                data = json.loads(run["stdout"].splitlines()[-1]) if run["stdout"] else {}
            except ValueError:
                data = {}
            if "result" in data:  # procpool's report
                count = (data["result"] or {}).get("count")
                results = data.get("tasks_ok")
                if data.get("workers"):
                    row[key + "_restarts"] = sum(w["restarts"] for w in data["workers"])
            else:
                count, results, error = data.get("count"), data.get("results"), data.get("error")
            row[key + "_count"] = count
            row[key + "_results"] = results
            row[key + "_error"] = error
        row.update(killed_status=killed["status"], killed_wall_s=killed["wall_s"],
                   killed_pid=killed["killed"], killed_correct=row["killed_count"] == PI[limit],
                   tasks=len(ranges(limit, size)), command=" ".join(cmd))
        rows.append(row)
    return rows


def machine():
    info = {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}
    try:
        lscpu = subprocess.run(["lscpu"], stdout=subprocess.PIPE, text=True).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "Thread(s) per core", "CPU(s)"):
                info[key.strip()] = value.strip()
    except OSError:
        pass
    try:
        info["nproc"] = int(subprocess.run(["nproc"], stdout=subprocess.PIPE, text=True).stdout)
    except (OSError, ValueError):
        pass
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "procpool"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds before a part-B run counts as hung")
    ap.add_argument("--json", help="also write every figure here")
    ap.add_argument("--limit-a", type=float, help="primes limit of part A (default 4e9; one of %s)"
                    % ", ".join(f"{k:.0e}" for k in PI))
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats
    limit_a = 10**9 if args.quick else 4 * 10**9
    if args.limit_a:
        limit_a = int(args.limit_a)
        if limit_a not in PI:
            sys.exit(f"--limit-a must be one of {sorted(PI)}")
    m = machine()
    print(f"Machine: {m.get('Model name', '?')}, nproc={m['nproc']}, Python {m['python']}, Linux {m['kernel']}")

    a = part_a(args.binary, limit_a, repeats)
    print("\nA. Cost of a kill (procpool primes, medians of %d)\n" % repeats)
    print("| chaos | wall s (runs) | kills | retries | workers CPU s | wall per kill | CPU per kill |")
    print("|---|---|---|---|---|---|---|")
    for r in a:
        cost = "-" if r["cost_per_kill_ms"] is None else "%.0f ms" % r["cost_per_kill_ms"]
        cpu = "-" if r["cpu_per_kill_ms"] is None else "%.0f ms" % r["cpu_per_kill_ms"]
        print(f"| {r['chaos'] or 'none'} | {r['wall_s']:.3f} {r['walls']} | {r['kills']:.0f} {r['kills_runs']} | {r['retries']:.0f} "
              f"| {r['cpu_s']:.2f} | {cost} | {cpu} |")
    d = detect_restart(args.binary, 4 if args.quick else 10)
    print(f"\nDetect + restart (SIGKILL from outside → new worker process exists), {d['kills']} kills: "
          f"median {d['median_ms']:.2f} ms, max {d['max_ms']:.2f} ms; procpool said: {d['restart_notes']}")

    limit_b, size_b = 10**9, 10**7
    b = part_b(args.binary, limit_b, size_b, kill_after=1.0, timeout=args.timeout)
    print(f"\nB. One worker SIGKILLed 1 s into the run (pi({limit_b:.0e}) in {len(ranges(limit_b, size_b))} tasks, 2 workers, timeout {args.timeout:.0f} s)\n")
    print("| pool | clean run | with one worker killed | results | count correct |")
    print("|---|---|---|---|---|")
    for r in b:
        what = r["killed_status"]
        if r["killed_error"]:
            what += f", {r['killed_error'].split(':')[0]}"
        if "killed_restarts" in r:
            what += f", {r['killed_restarts']} restart(s)"
        print(f"| {r['pool']} | {r['clean_wall_s']:.2f} s ({r['clean_status']}) | {what} after {r['killed_wall_s']:.2f} s "
              f"| {r['killed_results']}/{r['tasks']} | {'yes' if r['killed_correct'] else 'no'} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": m, "a": a, "detect_restart": d, "b": b}, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        serve()
    elif len(sys.argv) > 1 and sys.argv[1] == "peer":
        peer(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        main()

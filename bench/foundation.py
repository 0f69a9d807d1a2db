#!/usr/bin/env python3
"""Foundation benchmark: procpool against Python's process pools, in one run.

    python3 bench/foundation.py                 # everything, 3 repeats, ~4 minutes on 2 cores
    python3 bench/foundation.py --repeats 5     # more repeats
    python3 bench/foundation.py --quick         # smaller N, 1 repeat (smoke test)
    python3 bench/foundation.py --json out.json # also write every raw sample

Measures (medians over repeats; min..max shown):
  1. tiny-task throughput   procpool noop vs ProcessPoolExecutor / multiprocessing.Pool
  2. one-task round trip    procpool --procs 1 --prefetch 1 vs PPE submit/result,
                            Pool.apply, and a bare pipe ping-pong (C and Python)
  3. start to first result  whole process, fresh interpreter each time
  4. prefetch sweep         noop throughput for --prefetch 1..128
and prints a markdown table with the target ratios. stdlib only; needs `cc` and a
release build (`cargo build --release`; pass --binary otherwise).
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEER = os.path.join(HERE, "peer.py")
PY = sys.executable


def run(cmd, **kw):
    """Runs cmd; returns (stdout, whole-process wall seconds measured here)."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr}")
    return p.stdout, wall


def run_json(cmd):
    out, wall = run(cmd)
    return json.loads(out.strip().splitlines()[-1]), wall


class Stat:
    """Samples of one measurement, summarised by the median."""

    def __init__(self, name, unit, samples, note=""):
        self.name, self.unit, self.samples, self.note = name, unit, samples, note

    @property
    def med(self):
        return statistics.median(self.samples)

    def row(self):
        lo, hi = min(self.samples), max(self.samples)
        return f"| {self.name} | {fmt(self.med)} | {fmt(lo)} .. {fmt(hi)} | {self.unit} | {self.note} |"


def fmt(x):
    if x >= 1000:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def machine():
    info = {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}
    try:
        lscpu = subprocess.run(["lscpu"], stdout=subprocess.PIPE, text=True).stdout
        for line in lscpu.splitlines():
            key, _, val = line.partition(":")
            if key.strip() in ("Model name", "Hypervisor vendor"):
                info[key.strip()] = val.strip()
    except OSError:
        pass
    try:
        info["nproc"] = int(subprocess.run(["nproc"], stdout=subprocess.PIPE, text=True).stdout)
    except OSError:
        pass
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="runs per measurement (median reported)")
    ap.add_argument("--quick", action="store_true", help="smaller N and 1 repeat, a smoke test")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "procpool"))
    ap.add_argument("--json", metavar="FILE", help="write all raw samples to FILE")
    ap.add_argument("--only", help="comma list of sections: throughput,latency,start,sweep")
    a = ap.parse_args()
    reps = 1 if a.quick else a.repeats
    s = 10 if a.quick else 1  # N divisor
    sections = set((a.only or "throughput,latency,start,sweep").split(","))
    pp = a.binary
    if not os.access(pp, os.X_OK):
        sys.exit(f"no procpool binary at {pp}: run `cargo build --release` first")

    tmp = tempfile.mkdtemp(prefix="procpool-bench-")
    pingpong = os.path.join(tmp, "pingpong")
    subprocess.run(["cc", "-O2", "-o", pingpong, os.path.join(HERE, "pingpong.c")], check=True)

    stats = {}

    def rec(key, name, unit, samples, note=""):
        stats[key] = Stat(name, unit, samples, note)
        print(f"  {name}: {fmt(stats[key].med)} {unit}", file=sys.stderr, flush=True)

    def procpool_noop(n, procs=2, prefetch=None, start=None):
        cmd = [pp, "run", "--procs", str(procs), "--json"]
        if prefetch:
            cmd += ["--prefetch", str(prefetch)]
        if start:
            cmd += ["--start", start]
        return run_json(cmd + ["noop", "--tasks", str(n)])

    t_all = time.perf_counter()
    # ---------------------------------------------------------------- 1. throughput
    if "throughput" in sections:
        print("1. tiny-task throughput", file=sys.stderr)
        n_pp, n_ppe, n_mp1, n_mpb = 400_000 // s, 20_000 // s, 50_000 // s, 400_000 // s
        js, pw = [], []
        for _ in range(reps):
            j, w = procpool_noop(n_pp)
            js.append(j["result"]["tasks_per_s"])
            pw.append(n_pp / w)
        rec("pp_tput", f"procpool noop, 2 procs, default prefetch (N={n_pp:,}), JSON wall_s", "tasks/s", js,
            "pool start to last worker reaped")
        rec("pp_tput_proc", f"procpool noop, same runs, whole process", "tasks/s", pw, "exec to exit")
        for key, name, mode, n, cs in [
            ("ppe1", "ProcessPoolExecutor(2).map chunksize=1", "ppe_map", n_ppe, 1),
            ("mp1", "multiprocessing.Pool(2).map chunksize=1", "mp_map", n_mp1, 1),
            ("mpb", "multiprocessing.Pool(2).map default chunksize (= ceil(N/(4*procs)))", "mp_map", n_mpb, 0),
        ]:
            inner, outer = [], []
            for _ in range(reps):
                j, w = run_json([PY, PEER, mode, str(n), "2", str(cs)])
                inner.append(j["tasks_per_s"])
                outer.append(n / w)
            rec(key, f"{name} (N={n:,}), pool create to join", "tasks/s", inner)
            rec(key + "_proc", f"{name}, same runs, whole process", "tasks/s", outer)

    # ---------------------------------------------------------------- 2. latency
    if "latency" in sections:
        print("2. one-task round trip", file=sys.stderr)
        # procpool and the C floors are interleaved in every repeat, so that both sides of
        # each ratio see the same load on a shared machine; the verdict uses the median of
        # the per-repeat ratios.
        n_rt, n_c = 100_000 // s, 200_000 // s
        lat = {k: [] for k in ("pp_rt", "pp_rt_start", "c_rt", "c_rt_pin", "c_rt_poll", "c_rt_wait4", "rt_ratio")}
        for _ in range(max(reps, 5)):
            big, _ = procpool_noop(n_rt, procs=1, prefetch=1)
            small, _ = procpool_noop(1, procs=1, prefetch=1)
            lat["pp_rt"].append((big["wall_s"] - small["wall_s"]) / (n_rt - 1) * 1e6)
            lat["pp_rt_start"].append(small["wall_s"] * 1e3)
            for key, mode in (("c_rt", "bare"), ("c_rt_pin", "pin"), ("c_rt_poll", "poll"), ("c_rt_wait4", "poll-wait4")):
                lat[key].append(float(run([pingpong, str(n_c), mode])[0]) / 1e3)
            lat["rt_ratio"].append(lat["pp_rt"][-1] / lat["c_rt"][-1])
        rec("pp_rt", f"procpool --procs 1 --prefetch 1: (wall_s(N={n_rt:,}) - wall_s(N=1)) / (N-1)", "µs",
            lat["pp_rt"], "start and shutdown subtracted")
        rec("pp_rt_start", "procpool --procs 1 --prefetch 1, wall_s of N=1 (the part subtracted)", "ms",
            lat["pp_rt_start"])
        rec("c_rt", "bare pipe ping-pong, C, 1 byte each way (the floor)", "µs", lat["c_rt"])
        rec("c_rt_pin", "bare pipe ping-pong, C, both pinned to CPU 0", "µs", lat["c_rt_pin"])
        rec("c_rt_poll", "C ping-pong shaped like procpool: poll 4 fds + read + write, 48/39-byte lines", "µs",
            lat["c_rt_poll"])
        rec("c_rt_wait4", "  same + wait4(WNOHANG) every turn (procpool's syscalls exactly)", "µs",
            lat["c_rt_wait4"])
        rec("rt_ratio", "procpool round trip / bare C ping-pong, paired per repeat", "×", lat["rt_ratio"])
        for key, name, mode, n in [
            ("py_rt", "bare pipe ping-pong, Python os.pipe", "pipe_rt", 100_000 // s),
            ("ppe_rt", "ProcessPoolExecutor(1) submit().result()", "ppe_rt", 5_000 // s),
            ("apply_rt", "multiprocessing.Pool(1).apply", "apply_rt", 5_000 // s),
        ]:
            rec(key, name, "µs", [run_json([PY, PEER, mode, str(n)])[0]["us_per_rt"] for _ in range(reps)])

    # ---------------------------------------------------------------- 3. start-up
    if "start" in sections:
        print("3. start to first result (whole process)", file=sys.stderr)
        k = max(3, reps * (5 if not a.quick else 1))
        for mode in ("spawn", "fork"):
            samples = [procpool_noop(1, procs=2, start=mode)[1] * 1e3 for _ in range(k)]
            rec(f"pp_start_{mode}", f"procpool run noop --tasks 1 --procs 2 --start {mode}", "ms", samples)
        rec("py_pass", "python3 -c pass (interpreter start, context)", "ms",
            [run([PY, "-c", "pass"])[1] * 1e3 for _ in range(k)])
        for ctx in ("fork", "spawn", "forkserver"):
            outer, inner = [], []
            for _ in range(k):
                j, w = run_json([PY, PEER, "start", ctx, "2"])
                outer.append(w * 1e3)
                inner.append(j["first_result_s"] * 1e3)
            rec(f"py_start_{ctx}", f"python3: {ctx} Pool(2) + first apply, whole process", "ms", outer)
            rec(f"py_start_{ctx}_in", f"python3: {ctx} Pool(2) + first apply, inside interpreter", "ms", inner)

    # ---------------------------------------------------------------- 4. prefetch sweep
    if "sweep" in sections:
        print("4. prefetch sweep", file=sys.stderr)
        n_sw = 200_000 // s
        ks = (1, 2, 4, 8, 16, 32, 64, 128)
        sw = {k: [] for k in ks}
        for _ in range(reps):  # values interleaved within each repeat: same load for all
            for k in ks:
                sw[k].append(procpool_noop(n_sw, prefetch=k)[0]["result"]["tasks_per_s"])
        for k in ks:
            rec(f"sweep_{k}", f"procpool noop 2 procs --prefetch {k} (N={n_sw:,})", "tasks/s", sw[k])

    elapsed = time.perf_counter() - t_all
    shutil.rmtree(tmp, ignore_errors=True)

    # ---------------------------------------------------------------- report
    m = machine()
    print(f"## procpool foundation benchmark\n")
    print(f"Machine: {m.get('Model name', '?')}, nproc={m['nproc']}, "
          f"hypervisor={m.get('Hypervisor vendor', 'none')}, kernel {m['kernel']}, Python {m['python']}. "
          f"Repeats: {reps}; run took {elapsed:.0f} s.\n")
    print("| measurement | median | min .. max | unit | note |")
    print("|---|---:|---|---|---|")
    for st in stats.values():
        print(st.row())

    def ratio(num, den, target, name, better="higher"):
        if num not in stats or den not in stats:
            return None
        r = stats[num].med / stats[den].med
        ok = r >= target if better == "higher" else r <= target
        return f"| {name} | {r:.1f}× | {'≥' if better == 'higher' else '≤'} {target}× | {'MET' if ok else 'MISSED'} |"

    rows = [
        ratio("pp_tput", "ppe1", 20, "noop throughput: procpool / ProcessPoolExecutor chunksize=1"),
        ratio("pp_tput_proc", "ppe1_proc", 20, "  same, whole-process wall on both sides"),
        (f"| round trip: procpool prefetch 1 / bare C pipe ping-pong (median of paired ratios) | "
         f"{stats['rt_ratio'].med:.1f}× | ≤ 3× | {'MET' if stats['rt_ratio'].med <= 3 else 'MISSED'} |"
         if "rt_ratio" in stats else None),
        (f"|   same, best of each side (min / min) | {min(stats['pp_rt'].samples) / min(stats['c_rt'].samples):.1f}× "
         f"| ≤ 3× | {'MET' if min(stats['pp_rt'].samples) / min(stats['c_rt'].samples) <= 3 else 'MISSED'} |"
         if "rt_ratio" in stats else None),
        ratio("py_start_forkserver", "pp_start_spawn", 5, "start to first result: forkserver Pool(2) / procpool spawn"),
        ratio("py_start_forkserver", "pp_start_fork", 5, "  same, procpool --start fork"),
    ]
    extra = [
        ("pp_tput", "mp1", "procpool / mp.Pool chunksize=1"),
        ("pp_tput", "mpb", "procpool / mp.Pool chunksize=N/(4*procs) (batched; not a target)"),
        ("c_rt_wait4", "c_rt", "round trip: C with procpool's exact syscalls / bare C"),
        ("pp_rt", "c_rt_wait4", "round trip: procpool / C with procpool's exact syscalls (userspace share)"),
        ("ppe_rt", "pp_rt", "round trip: PPE / procpool"),
        ("apply_rt", "pp_rt", "round trip: Pool.apply / procpool"),
        ("py_start_spawn", "pp_start_spawn", "start: Python spawn Pool / procpool spawn"),
        ("py_start_fork", "pp_start_fork", "start: Python fork Pool / procpool fork"),
        ("sweep_64", "sweep_1", "prefetch 64 / prefetch 1"),
    ]
    print("\n| target | measured | target | verdict |")
    print("|---|---:|---:|---|")
    for r in rows:
        if r:
            print(r)
    for num, den, name in extra:
        if num in stats and den in stats:
            print(f"| {name} | {stats[num].med / stats[den].med:.1f}× | — | context |")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"machine": m, "repeats": reps,
                       "stats": {k: {"name": v.name, "unit": v.unit, "samples": v.samples}
                                 for k, v in stats.items()}}, fh, indent=1)


if __name__ == "__main__":
    main()

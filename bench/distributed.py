#!/usr/bin/env python3
"""procpool through Redis against procpool locally and against rq, in one run.

    python3 bench/distributed.py               # a few minutes on 2 cores
    python3 bench/distributed.py --quick       # smaller N (smoke test)
    python3 bench/distributed.py --json out.json
    python3 bench/distributed.py --part kill    # one part alone: tiny, python, primes, kill

Needs target/release/procpool (cargo build --release) and redis-server on PATH; rq is
measured when it imports (pip install rq). Starts its own Redis on a free loopback
port, no persistence, and stops it at the end. Measures:
  1. tiny tasks/s: `run noop` locally, and through Redis with one node, its claims
     batched (the default window) and one at a time (--procs 1 --prefetch 1)
  2. the same tiny Python task (return its input): procpool nodes with a Python
     --child worker against rq workers (default forking Worker, and SimpleWorker),
     the same number of workers on the same Redis
  3. primes --limit 3e9 on 1, 2 and 3 nodes (one worker each)
  4. kill -9 of a node holding two tasks (lease 1 s): time until they are done by
     another node; and rq: is a job whose worker was killed run again, and when?
"""

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCPOOL = os.path.join(ROOT, "target", "release", "procpool")

ECHO_WORKER = """import json, os, sys, time
def send(message): print(json.dumps(message), flush=True)
send({"type": "ready"})
for line in sys.stdin:
    m = json.loads(line)
    if m["type"] == "stop":
        break
    if m["type"] == "task":
        time.sleep(float(os.environ.get("SLEEP", "0")))
        send({"type": "result", "id": m["id"], "output": m["input"]})
"""

RQ_TASKS = """import time
def echo(x):
    return x
def slow(x):
    time.sleep(2)
    return x
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    def __init__(self, workdir):
        self.port = free_port()
        self.server = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port)).close()
                break
            except OSError:
                time.sleep(0.05)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self):
        self.server.kill()
        self.server.wait()


def node(url, queue, *args, env=None):
    return subprocess.Popen([PROCPOOL, "node", "--broker", url, "--queue", queue, *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})


def stop(nodes):
    for n in nodes:
        n.send_signal(signal.SIGTERM)
    for n in nodes:
        n.wait()


def run_json(args, stdin=None):
    started = time.perf_counter()
    out = subprocess.run([PROCPOOL, "run", *args, "--json"], input=stdin, capture_output=True,
                         text=True, check=True)
    seconds = time.perf_counter() - started
    lines = (out.stdout + "\n" + out.stderr).splitlines()
    report = next(json.loads(line) for line in lines if line.startswith("{") and "tasks_ok" in line)
    return seconds, report


def tiny_tasks(url, n):
    local_s, _ = run_json(["noop", "--tasks", str(n), "--procs", "2"])
    figures = {"local": n / local_s}
    for label, args in [("redis_batched", ["--procs", "2"]),
                        ("redis_one_at_a_time", ["--procs", "1", "--prefetch", "1"])]:
        queue = f"noop-{label}"
        nodes = [node(url, queue, *args)]
        count = n if label == "redis_batched" else n // 20
        seconds, report = run_json(["noop", "--tasks", str(count), "--broker", url, "--queue", queue])
        assert report["tasks_ok"] == count, report
        figures[label] = count / seconds
        stop(nodes)
    return figures


def write_workers(workdir):
    """The Python worker of the procpool nodes and rq's task module, in `workdir`."""
    with open(os.path.join(workdir, "echo_worker.py"), "w") as f:
        f.write(ECHO_WORKER)
    with open(os.path.join(workdir, "rq_tasks.py"), "w") as f:
        f.write(RQ_TASKS)
    sys.path.insert(0, workdir)


def python_tasks(url, n, workers, workdir):
    worker = os.path.join(workdir, "echo_worker.py")
    lines = "".join(f"{i}\n" for i in range(n))
    queue = "python-echo"
    nodes = [node(url, queue, "--procs", "1", "--child", f"python3 {worker}") for _ in range(workers)]
    seconds, report = run_json(["tasks", "--broker", url, "--queue", queue, "--output", "/dev/null"],
                               stdin=lines)
    assert report["tasks_ok"] == n, report
    stop(nodes)
    figures = {"procpool": n / seconds}
    try:
        import redis as redis_py
        import rq
    except ImportError:
        figures["rq"] = None
        return figures
    import rq_tasks
    connection = redis_py.Redis.from_url(url)
    for worker_class, rq_n in [("rq.worker.Worker", max(n // 20, 200)), ("rq.worker.SimpleWorker", max(n // 5, 1000))]:
        queue = rq.Queue(f"echo-{worker_class}", connection=connection)
        jobs = queue.enqueue_many([rq.Queue.prepare_data(rq_tasks.echo, (i,)) for i in range(rq_n)])
        started = time.perf_counter()
        rq_workers = [subprocess.Popen(["rq", "worker", "--burst", "--url", url, "-w", worker_class, "-q", queue.name],
                                       cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                      for _ in range(workers)]
        for w in rq_workers:
            w.wait()
        seconds = time.perf_counter() - started
        done = sum(1 for job in jobs if job.get_status(refresh=True) == "finished")
        assert done == rq_n, (done, rq_n)
        figures["rq_" + worker_class.rsplit(".", 1)[1]] = rq_n / seconds
    return figures


def primes_scaling(url, limit):
    figures = {}
    for count in (1, 2, 3):
        queue = f"primes-{count}"
        nodes = [node(url, queue, "--procs", "1") for _ in range(count)]
        time.sleep(0.3)
        seconds, report = run_json(["primes", "--limit", limit, "--broker", url, "--queue", queue])
        figures[f"{count}_nodes_s"] = seconds
        figures["count"] = report["result"]["count"]
        stop(nodes)
    return figures


def kill_recovery(url, workdir):
    worker = os.path.join(workdir, "echo_worker.py")
    queue = "killed"
    args = ["--procs", "2", "--prefetch", "1", "--lease", "1", "--child", f"python3 {worker}"]
    victim = node(url, queue, *args, env={"SLEEP": "0.5"})
    time.sleep(0.5)
    lines = "0\n1\n"  # both taken by the victim before the survivor starts
    run = subprocess.Popen([PROCPOOL, "run", "tasks", "--broker", url, "--queue", queue, "--json"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run.stdin.write(lines)
    run.stdin.close()
    time.sleep(0.3)  # the victim holds two tasks, half done
    killed = time.perf_counter()
    victim.kill()
    survivor = node(url, queue, *args, env={"SLEEP": "0.5"})
    run.wait()
    # The survivor takes both over once their lease runs out, and runs them (0.5 s).
    figures = {"procpool_kill_to_done_s": time.perf_counter() - killed, "work_left_s": 0.5,
               "lease_s": 1.0, "tasks_ok": sum(1 for line in run.stdout.read().splitlines() if '"output"' in line)}
    stop([survivor])
    try:
        import redis as redis_py
        import rq
        import rq_tasks
    except ImportError:
        return figures
    connection = redis_py.Redis.from_url(url)
    queue = rq.Queue("rq-killed", connection=connection)
    job = queue.enqueue(rq_tasks.slow, 1)
    worker = subprocess.Popen(["rq", "worker", "--url", url, "-q", "rq-killed"], cwd=workdir,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(1.5)
    # The worker and its work horse (which runs in a session of its own): the whole
    # machine's share of rq, as a node's kill -9 is procpool's.
    for pid in [worker.pid, *descendants(worker.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    worker.wait()
    again = subprocess.Popen(["rq", "worker", "--url", url, "-q", "rq-killed"], cwd=workdir,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    killed = time.perf_counter()
    while time.perf_counter() < killed + 60 and job.get_status(refresh=True) != "finished":
        time.sleep(0.1)
    status = job.get_status(refresh=True)
    figures["rq_job_status_60s_after_kill"] = str(status)
    figures["rq_kill_to_done_s"] = time.perf_counter() - killed if status == "finished" else None
    os.killpg(again.pid, signal.SIGKILL)
    return figures


def descendants(pid):
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    found = [int(child) for child in children]
    return found + [grandchild for child in found for grandchild in descendants(child)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    parser.add_argument("--part", choices=["tiny", "python", "primes", "kill"],
                        help="measure only this part")
    args = parser.parse_args()
    n = 20000 if args.quick else 300000
    parts = {
        "tiny": ("tiny_tasks_per_s", lambda url, _: tiny_tasks(url, n)),
        "python": ("python_echo_per_s_2_workers", lambda url, workdir: python_tasks(url, n // 10, 2, workdir)),
        "primes": ("primes", lambda url, _: primes_scaling(url, "3e8" if args.quick else "3e9")),
        "kill": ("kill_recovery", kill_recovery),
    }
    chosen = [args.part] if args.part else list(parts)
    with tempfile.TemporaryDirectory() as workdir:
        write_workers(workdir)
        redis = Redis(workdir)
        try:
            results = {"machine": f"{platform.node()}, {os.cpu_count()} cores, {platform.platform()}"}
            for part in chosen:
                name, measure = parts[part]
                results[name] = measure(redis.url, workdir)
        finally:
            redis.stop()
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

"""Crashes, hangs, Ctrl-C and kill -9: real processes die, and the pool copes."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import alive, descendants, wait_until

import procpool


def kill_myself_on(x, poison):
    if x == poison:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 2


def segfault():
    import ctypes

    ctypes.string_at(0)


def start_sleep_then_hang(pid_file):
    child = subprocess.Popen(["sleep", "600"])
    with open(pid_file, "w") as out:
        out.write(str(child.pid))
    time.sleep(600)


def test_a_task_that_kills_its_worker_fails_alone_with_the_crash_details():
    with procpool.Executor(max_workers=2, max_attempts=2) as executor:
        futures = [executor.submit(kill_myself_on, x, 7) for x in range(40)]
        for x, future in enumerate(futures):
            if x == 7:
                with pytest.raises(procpool.WorkerCrashed) as caught:
                    future.result(timeout=60)
                crashed = caught.value
                assert crashed.attempts == 2
                assert crashed.signal == "SIGKILL" and crashed.exitcode is None
                assert crashed.pid > 0 and len(crashed.crashes) == 2
            else:
                assert future.result(timeout=60) == x * 2


def exit_with(code):
    os._exit(code)


def test_a_worker_that_exits_is_a_crash_with_its_exit_code():
    with procpool.Executor(max_workers=1, max_attempts=1) as executor:
        with pytest.raises(procpool.WorkerCrashed) as caught:
            executor.submit(exit_with, 3).result(timeout=60)
        crashed = caught.value
        assert (crashed.exitcode, crashed.signal, crashed.oom_killed) == (3, None, False)
        assert executor.submit(abs, -4).result(timeout=60) == 4


def test_the_oom_killer_is_named_only_on_the_kernels_word():
    sigkill = {"signaled": {"signal": "SIGKILL", "core_dumped": False}}
    crash = {"slot": 0, "pid": 42, "status": sigkill}
    for oom, named in [
        (None, False),
        ({"not_oom": "the kernel log"}, False),
        ({"kernel_log": "Out of memory: Killed process 42 (python3)"}, True),
        ({"cgroup_count": "/sys/fs/cgroup/memory.events"}, True),
    ]:
        crashes = [dict(crash, oom=oom)] if oom else [crash]
        crashed = procpool.WorkerCrashed("died", 1, crashes)
        assert (crashed.signal, crashed.oom_killed) == ("SIGKILL", named)
    unknown = procpool.WorkerCrashed("died", 1, [dict(crash, status="unknown")])
    assert (unknown.exitcode, unknown.signal) == (None, None)


def test_a_segfault_is_a_crash_of_its_own_task_only():
    with procpool.Executor(max_workers=2, max_attempts=1) as executor:
        crash = executor.submit(segfault)
        fine = executor.submit(sum, [1, 2, 3])
        with pytest.raises(procpool.WorkerCrashed) as caught:
            crash.result(timeout=60)
        assert caught.value.signal == "SIGSEGV"
        assert fine.result(timeout=60) == 6


def test_pool_map_raises_instead_of_hanging_when_a_worker_is_killed():
    with procpool.Pool(2, max_attempts=1) as pool:
        with pytest.raises(procpool.WorkerCrashed):
            pool.starmap(kill_myself_on, [(x, 50) for x in range(100)], chunksize=5)
        # The pool itself goes on.
        assert pool.map(abs, [-1, -2]) == [1, 2]


def test_a_timeout_kills_the_task_and_the_processes_it_started(tmp_path):
    pid_file = tmp_path / "sleep.pid"
    with procpool.Executor(max_workers=1) as executor:
        started = time.monotonic()
        hung = executor.submit_task(start_sleep_then_hang, (str(pid_file),), timeout=1)
        with pytest.raises(TimeoutError):
            hung.result(timeout=30)
        assert time.monotonic() - started < 10
        # Not retried by default; the pool goes on.
        assert executor.submit(abs, -3).result(timeout=30) == 3
    sleep_pid = int(pid_file.read_text())
    assert wait_until(lambda: not alive(sleep_pid), 2), "the task's sleep outlived its timeout"


INTERRUPTED_PROGRAM = """
import signal, time, procpool
# A shell's background job starts with SIGINT ignored; a terminal's program has it.
signal.signal(signal.SIGINT, signal.default_int_handler)
def nap(seconds):
    time.sleep(seconds)
    return seconds
try:
    with procpool.Executor(max_workers=2, grace={grace}) as executor:
        futures = [executor.submit(nap, {nap}) for _ in range(20)]
        print("submitted", executor._client.pid, flush=True)
        for f in futures:
            f.result()
except KeyboardInterrupt:
    print("interrupted", sum(f.done() and not f.cancelled() for f in futures),
          sum(f.cancelled() for f in futures), flush=True)
    raise SystemExit(130)
"""


def _start_interrupted(script, nap, grace):
    program = script(INTERRUPTED_PROGRAM.format(nap=nap, grace=grace))
    line = program.stdout.readline().split()
    assert line[0] == "submitted", program.stderr.read()
    serve = int(line[1])
    assert wait_until(lambda: len(descendants(serve)) >= 2, 10)
    time.sleep(0.3)
    return program, serve, descendants(serve)


def test_ctrl_c_lets_running_tasks_finish_and_cancels_the_rest(script):
    program, serve, workers = _start_interrupted(script, nap=1, grace=10)
    program.send_signal(signal.SIGINT)
    out, err = program.communicate(timeout=30)
    assert program.returncode == 130, err
    _, finished, cancelled = out.split()
    assert int(finished) == 2 and int(cancelled) == 18, out + err
    assert not alive(serve) and not any(alive(pid) for pid in workers)


def test_a_second_ctrl_c_kills_the_workers_now(script):
    program, serve, workers = _start_interrupted(script, nap=60, grace=60)
    program.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert program.poll() is None, "the first Ctrl-C did not wait for the running tasks"
    sent = time.monotonic()
    program.send_signal(signal.SIGINT)
    program.communicate(timeout=30)
    assert time.monotonic() - sent < 5
    assert wait_until(lambda: not alive(serve) and not any(alive(pid) for pid in workers), 2)


def test_kill_9_of_the_caller_leaves_no_process_within_a_second(script):
    program, serve, workers = _start_interrupted(script, nap=60, grace=60)
    program.kill()
    program.wait()
    assert wait_until(lambda: not alive(serve) and not any(alive(pid) for pid in workers), 1)


def test_a_forked_child_does_not_keep_the_pool_alive(script, tmp_path):
    program = script(
        """
        import os, time, procpool
        executor = procpool.Executor(max_workers=1)
        assert executor.submit(abs, -1).result() == 1
        child = os.fork()
        if child == 0:
            try:
                executor.submit(abs, -2)
            except procpool.PoolBroken as error:
                with open("child.txt", "w") as out:
                    out.write("child refused: %s" % error)
            time.sleep(60)
            os._exit(0)
        print("serve", executor._client.pid, child, flush=True)
        time.sleep(60)
        """
    )
    words = program.stdout.readline().split()
    assert words[0] == "serve", words
    serve, child = int(words[1]), int(words[2])
    refusal = tmp_path / "child.txt"
    assert wait_until(refusal.exists, 10)
    assert wait_until(lambda: "child refused: a pool does not cross os.fork()" in refusal.read_text(), 1)
    program.kill()
    program.wait()
    try:
        assert wait_until(lambda: not alive(serve), 1), "the forked child kept serve's channel open"
    finally:
        os.kill(child, signal.SIGKILL)


def test_workers_run_python_c_code_and_a_notebook_like_main(tmp_path):
    code = (
        "import procpool\n"
        "def triple(x):\n    return 3 * x\n"
        "with procpool.Executor(max_workers=2) as ex:\n    print(list(ex.map(triple, range(4))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.stdout.strip() == "[0, 3, 6, 9]", out.stderr
    # A notebook runs cells with exec() in __main__'s namespace.
    cell = "def quadruple(x):\n    return 4 * x\nresult = list(ex.map(quadruple, range(3)))\n"
    kernel = (
        "import procpool, __main__\n"
        "ex = procpool.Executor(max_workers=1)\n"
        "exec(compile(%r, '<cell 1>', 'exec'), __main__.__dict__)\n"
        "print(result)\nex.shutdown()\n" % cell
    )
    out = subprocess.run([sys.executable, "-c", kernel], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.stdout.strip() == "[0, 4, 8]", out.stderr

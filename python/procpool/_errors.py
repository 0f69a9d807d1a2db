"""The exceptions a task's caller can meet, besides the task's own."""

import concurrent.futures


class WorkerCrashed(Exception):
    """The task was running in a worker that died, `attempts` times in a row (the
    pool's or the task's `max_attempts`); every other task went on.

    `pid`, `exitcode` and `signal` describe the last death (`exitcode` is None when a
    signal killed it, `signal` the signal's name then); `oom_killed` says whether the
    kernel log or the memory cgroup's count names the OOM killer as its sender;
    `crashes` lists every death charged to the task, as the supervisor reported them."""

    def __init__(self, message, attempts, crashes):
        super().__init__(message)
        self.attempts = attempts
        self.crashes = crashes
        last = crashes[-1] if crashes else {}
        self.pid = last.get("pid")
        # {"exited": 3}, {"signaled": {"signal": "SIGKILL", ...}}, or "unknown".
        status = last.get("status")
        status = status if isinstance(status, dict) else {}
        exited = status.get("exited")
        self.exitcode = exited if isinstance(exited, int) else None
        self.signal = (status.get("signaled") or {}).get("signal")
        oom = last.get("oom")
        self.oom_killed = isinstance(oom, dict) and bool({"kernel_log", "cgroup_count"} & set(oom))


class RemoteError(Exception):
    """A task failed in a way that has no exception object here: its exception did not
    unpickle in the caller, or the worker's answer was not one (the message says)."""

    def __init__(self, message, traceback_text=None):
        super().__init__(message)
        self.traceback_text = traceback_text

    def __str__(self):
        text = super().__str__()
        return text + "\n\n" + self.traceback_text if self.traceback_text else text


class NotRun(Exception):
    """The task never ran: the pool was interrupted or gave up before a worker took it."""


class PoolBroken(concurrent.futures.BrokenExecutor):
    """The pool's supervisor stopped (it gave up on workers that die before they are
    ready, or it was killed); tasks still open end with this."""


class RemoteTraceback(Exception):
    """Set as a re-raised task exception's `__cause__`: the traceback in the worker."""

    def __init__(self, text):
        super().__init__(text)
        self.text = text

    def __str__(self):
        return self.text

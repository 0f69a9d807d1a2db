"""One pool's private supervisor, `procpool serve`, and the channel to it.

serve runs in a session of its own (the terminal's Ctrl-C reaches this process only)
and is steered over its stdin and stdout with the control protocol of
child/PROTOCOL.md ("procpool serve"). A reader thread takes serve's messages and
settles each task through the callback it was submitted with; worker log lines go to
this process's stderr. When this process dies, even by `kill -9`, serve reads EOF and
kills every worker at once; a child forked from this process closes its copies of the
channel (`os.register_at_fork`), so that it cannot keep a pool alive.
"""

import base64
import itertools
import json
import logging
import os
import pickle
import shlex
import subprocess
import sys
import threading
import weakref

from . import _worker
from ._arrays import array_fd
from ._binary import find_binary
from ._errors import PoolBroken
from ._version import __version__

log = logging.getLogger("procpool")

# Environment variables hold at most 128 KiB each (MAX_ARG_STRLEN).
_MAX_INIT_BYTES = 96 * 1024
_ENDS = ("result", "error", "failed", "cancelled", "not_run")

_open_clients = weakref.WeakSet()


def _forget_in_forked_child():
    for client in list(_open_clients):
        client._close_in_forked_child()


os.register_at_fork(after_in_child=_forget_in_forked_child)


def default_procs():
    """The cores this process may use, as procpool counts them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class Client:
    """A running `procpool serve` and the tasks submitted to it.

    `on_end(kind, message)` callbacks run in the reader thread, once per task; after
    serve stops, every task still open ends with kind `"broken"`."""

    def __init__(
        self,
        procs=None,
        initializer=None,
        initargs=(),
        max_tasks_per_child=None,
        max_attempts=3,
        task_timeout=None,
        grace=None,
        arrays=None,
    ):
        if procs is not None and procs < 1:
            raise ValueError("the number of workers must be at least 1, not %r" % procs)
        if max_tasks_per_child is not None and max_tasks_per_child < 1:
            raise ValueError("max_tasks_per_child must be at least 1, not %r" % max_tasks_per_child)
        env = dict(os.environ, PROCPOOL_PY_SYSPATH=json.dumps(sys.path))
        if initializer is not None:
            if not callable(initializer):
                raise TypeError("initializer must be callable, not %r" % (initializer,))
            import cloudpickle

            init = base64.b64encode(cloudpickle.dumps((initializer, tuple(initargs)))).decode()
            if len(init) > _MAX_INIT_BYTES:
                raise ValueError(
                    "initializer and initargs pickle to %d bytes, more than the %d that reach "
                    "a worker; load big data inside the initializer instead" % (len(init), _MAX_INIT_BYTES)
                )
            env["PROCPOOL_PY_INIT"] = init
        child = "%s -c %s" % (shlex.quote(sys.executable), shlex.quote(_worker.BOOTSTRAP))
        argv = [find_binary(), "serve", "--child", child, "--max-attempts", str(max_attempts)]
        if procs is not None:
            argv += ["--procs", str(procs)]
        if max_tasks_per_child is not None:
            argv += ["--max-tasks-per-child", str(max_tasks_per_child)]
        if task_timeout is not None:
            argv += ["--task-timeout", repr(float(task_timeout))]
        if grace is not None:
            argv += ["--grace", repr(float(grace))]
        fds = []
        for name, array in (arrays or {}).items():
            fd = array_fd(name, array)
            fds.append(fd)
            argv += ["--array", "%s=%d" % (name, fd)]
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            pass_fds=fds,
            env=env,
        )
        self._write_lock = threading.Lock()
        self._lock = threading.Lock()
        self._open = {}
        self._ids = itertools.count()
        self._closed = threading.Event()
        self.report = None
        self.broken_reason = None
        self.forked_away = False
        hello = self._read_message()
        if hello is None or hello.get("type") != "hello":
            self._proc.kill()
            self._proc.wait()
            stderr = self._proc.stderr.read().decode(errors="replace").strip()
            raise RuntimeError("procpool serve did not start: %s" % (stderr or "no greeting"))
        if hello.get("version") != __version__:
            self.kill()
            raise RuntimeError(
                "procpool serve is version %s, this package %s; reinstall the package"
                % (hello.get("version"), __version__)
            )
        self.procs = hello["procs"]
        self.pid = hello["pid"]
        _open_clients.add(self)
        self._reader = threading.Thread(target=self._read_all, name="procpool-reader", daemon=True)
        self._reader.start()

    # Requests.

    def submit_many(self, tasks):
        """Submit `(input_json, on_end, timeout_s, max_attempts)` tuples in one write
        (each input as JSON text); their ids, in order."""
        ids, lines = [], []
        if self.forked_away:
            raise PoolBroken(self.broken_reason)
        with self._lock:
            if self._closed.is_set():
                raise PoolBroken(self.broken_reason or "the pool is shut down")
            for input_json, on_end, timeout_s, max_attempts in tasks:
                task_id = next(self._ids)
                options = ""
                if timeout_s is not None:
                    options += ',"timeout_s":%s' % json.dumps(float(timeout_s))
                if max_attempts is not None:
                    options += ',"max_attempts":%d' % max_attempts
                lines.append('{"type":"submit","id":%d%s,"input":%s}' % (task_id, options, input_json))
                self._open[task_id] = on_end
                ids.append(task_id)
        self._send_lines(lines)
        return ids

    def submit(self, input_json, on_end, timeout_s=None, max_attempts=None):
        return self.submit_many([(input_json, on_end, timeout_s, max_attempts)])[0]

    def cancel(self, task_id):
        self._send({"type": "cancel", "id": task_id})

    def shutdown(self, cancel_futures=False):
        self._send({"type": "shutdown", "cancel_futures": cancel_futures})

    def interrupt(self):
        self._send({"type": "interrupt"})

    def wait(self, timeout=None):
        """Wait for serve to end; whether it did."""
        if not self._closed.wait(timeout):
            return False
        self._reader.join()
        return True

    def interrupt_and_wait(self):
        """Ctrl-C, as the terminal gives it to a local run: the first interrupt cancels
        what waits and lets running tasks end within the grace; a second
        KeyboardInterrupt while waiting kills the workers now."""
        self.interrupt()
        try:
            self.wait()
        except KeyboardInterrupt:
            self.interrupt()
            if not self.wait(2):
                self.kill()
            raise

    def kill(self):
        """End serve now: closing its stdin makes it kill every worker and exit."""
        with self._write_lock:
            if not self._proc.stdin.closed:
                try:
                    self._proc.stdin.close()
                except OSError:
                    pass
        self.wait()
        self._proc.wait()

    @property
    def closed(self):
        return self._closed.is_set()

    def _send(self, request):
        self._send_lines([json.dumps(request, separators=(",", ":"))])

    def _send_lines(self, lines):
        data = ("\n".join(lines) + "\n").encode()
        with self._write_lock:
            try:
                self._proc.stdin.write(data)
                self._proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                # serve is gone; the reader thread ends what was open.
                pass

    # serve's messages.

    def _read_message(self):
        line = self._proc.stdout.readline()
        if not line:
            return None
        return json.loads(line)

    def _read_all(self):
        try:
            while True:
                message = self._read_message()
                if message is None:
                    break
                self._dispatch(message)
        finally:
            self._end_open_tasks()

    def _dispatch(self, message):
        kind = message.get("type")
        if kind in _ENDS:
            if kind == "not_run" and self.broken_reason is not None:
                kind, message = "broken", {"message": self.broken_reason}
            with self._lock:
                on_end = self._open.pop(message.get("id"), None)
            if on_end is not None:
                on_end(kind, message)
        elif kind == "log":
            sys.stderr.write("[w%s] %s\n" % (message.get("slot"), message.get("line")))
            sys.stderr.flush()
        elif kind == "worker_died":
            log.warning("%s", message.get("message"))
        elif kind == "warning":
            log.warning("procpool serve: %s", message.get("message"))
        elif kind == "aborted":
            self.broken_reason = "the pool gave up: %s" % message.get("reason")
            log.error("%s", self.broken_reason)
        elif kind == "bye":
            self.report = message.get("report")

    def _end_open_tasks(self):
        code = self._proc.wait()
        if self.broken_reason is None and self.report is None:
            stderr = self._proc.stderr.read().decode(errors="replace").strip()
            self.broken_reason = "procpool serve (pid %d) ended with exit code %s%s" % (
                self.pid,
                code,
                ": " + stderr if stderr else "",
            )
        with self._lock:
            self._closed.set()
            still_open, self._open = self._open, {}
        for on_end in still_open.values():
            on_end("broken", {"message": self.broken_reason or "the pool is shut down"})
        _open_clients.discard(self)

    def _close_in_forked_child(self):
        # The parent's pool is not this process's: drop the descriptors without a
        # flush, so serve still sees EOF when the parent goes.
        # No lock is taken here: another thread of the parent may have held one.
        for stream in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            try:
                getattr(stream, "raw", stream).close()
            except (OSError, ValueError):
                pass
        self.forked_away = True
        self.broken_reason = "a pool does not cross os.fork(); create one in the child"

"""`procpool.Executor`: a `concurrent.futures.Executor` whose workers are procpool's."""

import atexit
import collections
import concurrent.futures
import itertools
import threading
import time
import weakref

from . import _codec
from ._client import Client
from ._outcome import settle

_live_executors = weakref.WeakSet()


@atexit.register
def _finish_at_exit():
    # As ProcessPoolExecutor does: the interpreter's exit waits for submitted work.
    for executor in list(_live_executors):
        executor.shutdown(wait=True)


class _Future(concurrent.futures.Future):
    def __init__(self, client):
        super().__init__()
        self._client = client
        self._task_id = None

    def cancel(self):
        """Withdraw the task. It is cancelled here at once; a worker that already
        holds it runs it on, and its result is dropped."""
        if not super().cancel():
            return False
        if self._task_id is not None:
            self._client.cancel(self._task_id)
        return True

    def _settle(self, kind, message):
        outcome = settle(kind, message)
        if outcome is None or self.cancelled():
            # Not self.cancel(): serve has ended the task, there is nothing to withdraw.
            concurrent.futures.Future.cancel(self)
            # Tells waiters (wait, as_completed) that the cancel took.
            self.set_running_or_notify_cancel()
            return
        ok, value = outcome
        try:
            if ok:
                self.set_result(value)
            else:
                self.set_exception(value)
        except concurrent.futures.InvalidStateError:
            # Cancelled by the caller meanwhile.
            self.set_running_or_notify_cancel()


class Executor(concurrent.futures.Executor):
    """Runs calls in a pool of `max_workers` worker processes (default: the cores this
    process may use), like `ProcessPoolExecutor`, except that a worker's death fails
    or retries only the task it was running:

    - a task whose worker dies is retried, and after `max_attempts` deaths raises
      `procpool.WorkerCrashed`; every other future completes;
    - `task_timeout` (seconds, or per task in `submit_task`) kills a task's worker and
      its whole process tree and raises `TimeoutError`; a task with a timeout is tried
      once unless its `max_attempts` says otherwise;
    - functions and arguments travel by cloudpickle: lambdas, closures and functions
      defined in `__main__` work, with no `if __name__ == "__main__"` guard;
    - `arrays` shares arrays made by `procpool.shared_array` with every worker.

    Ctrl-C inside `with Executor() as ex:` cancels what waits, lets running tasks end
    within `grace` seconds, and raises KeyboardInterrupt; a second Ctrl-C kills the
    workers at once.
    """

    def __init__(
        self,
        max_workers=None,
        initializer=None,
        initargs=(),
        max_tasks_per_child=None,
        max_attempts=3,
        arrays=None,
        *,
        task_timeout=None,
        grace=None,
    ):
        self._task_timeout = task_timeout
        self._client = Client(
            procs=max_workers,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_child=max_tasks_per_child,
            max_attempts=max_attempts,
            grace=grace,
            arrays=arrays,
        )
        self._functions = _codec.FunctionCache()
        self._shutdown_lock = threading.Lock()
        self._shut_down = False
        _live_executors.add(self)

    @property
    def max_workers(self):
        return self._client.procs

    def submit(self, fn, /, *args, **kwargs):
        return self.submit_task(fn, args, kwargs)

    def submit_task(self, fn, args=(), kwargs=None, *, timeout=None, max_attempts=None):
        """`submit`, with this task's own `timeout` (seconds; its worker is killed past
        it) and `max_attempts`."""
        return self._submit_inputs([_codec.call(self._functions, fn, args, kwargs)], timeout, max_attempts)[0]

    def _submit_inputs(self, inputs, timeout=None, max_attempts=None):
        timeout = self._task_timeout if timeout is None else timeout
        if timeout is not None and max_attempts is None:
            max_attempts = 1
        with self._shutdown_lock:
            if self._shut_down:
                raise RuntimeError("cannot schedule new futures after shutdown")
            futures = [_Future(self._client) for _ in inputs]
            ids = self._client.submit_many(
                [(input_json, future._settle, timeout, max_attempts) for input_json, future in zip(inputs, futures)]
            )
        for future, task_id in zip(futures, ids):
            future._task_id = task_id
        return futures

    def map(self, fn, *iterables, timeout=None, chunksize=1, buffersize=None):
        """As `Executor.map`: results in order, `timeout` for the whole iteration.
        `chunksize` calls travel as one task. With `buffersize`, at most that many
        tasks are submitted ahead of the one being consumed, so an endless iterable
        is read lazily."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or >= 1")
        deadline = None if timeout is None else time.monotonic() + timeout
        calls = zip(*iterables)
        if chunksize == 1:
            inputs = (_codec.call(self._functions, fn, args, None) for args in calls)
        else:
            inputs = (_codec.chunk(self._functions, fn, batch, star=True) for batch in _codec.batched(calls, chunksize))
        window = collections.deque(self._submit_batches(inputs, buffersize))
        return self._results(window, inputs, buffersize, deadline, chunksize > 1)

    def _submit_batches(self, inputs, limit):
        """Submit up to `limit` inputs (all when None), a thousand per write."""
        futures = []
        while limit is None or len(futures) < limit:
            room = 1000 if limit is None else min(1000, limit - len(futures))
            batch = list(itertools.islice(inputs, room))
            if not batch:
                break
            futures += self._submit_inputs(batch)
        return futures

    def _results(self, window, inputs, buffersize, deadline, chunked):
        try:
            while window:
                if buffersize is not None:
                    window.extend(self._submit_batches(inputs, 1))
                future = window.popleft()
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                value = future.result(remaining)
                if chunked:
                    yield from value
                else:
                    yield value
        except KeyboardInterrupt:
            self._interrupt()
            raise
        finally:
            for future in window:
                future.cancel()

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self._shutdown_lock:
            first = not self._shut_down
            self._shut_down = True
        if first and not self._client.closed:
            self._client.shutdown(cancel_futures)
        if wait:
            try:
                self._client.wait()
            except KeyboardInterrupt:
                self._interrupt()
                raise
        _live_executors.discard(self)

    def _interrupt(self):
        with self._shutdown_lock:
            self._shut_down = True
        _live_executors.discard(self)
        self._client.interrupt_and_wait()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self._interrupt()
        else:
            self.shutdown(wait=True)
        return False

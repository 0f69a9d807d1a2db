"""`procpool.Pool`: the `multiprocessing.Pool` interface on procpool's workers."""

import collections
import itertools
import threading

from . import _codec
from ._client import Client
from ._errors import PoolBroken
from ._outcome import not_run, settle

# Chunks of imap/imap_unordered in flight per worker: enough to keep every worker
# busy, few enough that an endless iterable is read only as results are taken.
_IMAP_WINDOW_PER_WORKER = 8


class AsyncResult:
    """As `multiprocessing.pool.AsyncResult`: `get`, `wait`, `ready`, `successful`."""

    def __init__(self, parts, callback=None, error_callback=None, flatten=False):
        self._remaining = parts
        self._values = [None] * parts
        self._error = None
        self._callback = callback
        self._error_callback = error_callback
        self._flatten = flatten
        self._lock = threading.Lock()
        self._done = threading.Event()
        if parts == 0:
            self._finish()

    def _part_ended(self, index, kind, message):
        outcome = settle(kind, message) or (False, not_run())
        with self._lock:
            ok, value = outcome
            if ok:
                self._values[index] = value
            elif self._error is None:
                self._error = value
            self._remaining -= 1
            last = self._remaining == 0
        if last:
            self._finish()

    def _finish(self):
        if self._error is None:
            if self._flatten:
                self._values = list(itertools.chain.from_iterable(self._values))
            if self._callback is not None:
                self._callback(self._value())
        elif self._error_callback is not None:
            self._error_callback(self._error)
        self._done.set()

    def _value(self):
        return self._values if self._flatten or len(self._values) != 1 else self._values[0]

    def ready(self):
        return self._done.is_set()

    def successful(self):
        if not self.ready():
            raise ValueError("%r not ready" % self)
        return self._error is None

    def wait(self, timeout=None):
        self._done.wait(timeout)

    def get(self, timeout=None):
        if not self._done.wait(timeout):
            raise TimeoutError("the result is not ready after %s s" % timeout)
        if self._error is not None:
            raise self._error
        return self._value()


class _MapResult(AsyncResult):
    def __init__(self, chunks, callback, error_callback):
        super().__init__(chunks, callback, error_callback, flatten=True)


class _Imap:
    """The iterator of imap (in order) and imap_unordered: it reads the input only as
    results are taken, keeping a bounded window of chunks in flight."""

    def __init__(self, pool, inputs, window, ordered):
        self._pool = pool
        self._inputs = inputs
        self._window = window
        self._ordered = ordered
        self._in_flight = collections.deque()
        self._ready = collections.deque()
        self._buffered = collections.deque()
        self._cond = threading.Condition()

    def _top_up(self):
        while len(self._in_flight) < self._window:
            input_json = next(self._inputs, None)
            if input_json is None:
                return
            slot = _Slot()
            self._in_flight.append(slot)
            self._pool._client.submit(input_json, lambda kind, message, slot=slot: self._ended(slot, kind, message))

    def _ended(self, slot, kind, message):
        with self._cond:
            slot.outcome = settle(kind, message) or (False, not_run())
            self._ready.append(slot)
            self._cond.notify_all()

    def __iter__(self):
        return self

    def next(self, timeout=None):
        if self._buffered:
            return self._buffered.popleft()
        self._top_up()
        if not self._in_flight:
            raise StopIteration
        with self._cond:
            if self._ordered:
                head = self._in_flight[0]
                found = self._cond.wait_for(lambda: head.outcome is not None, timeout)
            else:
                found = self._cond.wait_for(lambda: bool(self._ready), timeout)
            if not found:
                raise TimeoutError("no result within %s s" % timeout)
            slot = self._in_flight[0] if self._ordered else self._ready.popleft()
            if self._ordered:
                self._ready.remove(slot)
            self._in_flight.remove(slot)
        ok, value = slot.outcome
        if not ok:
            raise value
        self._buffered.extend(value)
        return self.next(timeout)

    __next__ = next


class _Slot:
    __slots__ = ("outcome",)

    def __init__(self):
        self.outcome = None


class Pool:
    """A process pool like `multiprocessing.Pool(processes, initializer, initargs,
    maxtasksperchild)` whose workers may die: a task whose worker was killed is
    retried and, after `max_attempts` deaths, its result raises
    `procpool.WorkerCrashed` instead of hanging the pool. Functions travel by
    cloudpickle (lambdas and `__main__` functions work). `imap` and `imap_unordered`
    read their input lazily, a bounded window ahead."""

    def __init__(
        self,
        processes=None,
        initializer=None,
        initargs=(),
        maxtasksperchild=None,
        *,
        max_attempts=3,
        arrays=None,
    ):
        self._client = Client(
            procs=processes,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_child=maxtasksperchild,
            max_attempts=max_attempts,
            arrays=arrays,
        )
        self._processes = self._client.procs
        self._functions = _codec.FunctionCache()
        self._state = "run"

    def _check_running(self):
        if self._state != "run":
            raise ValueError("Pool not running")

    def apply(self, func, args=(), kwds=None):
        return self._get(self.apply_async(func, args, kwds))

    def apply_async(self, func, args=(), kwds=None, callback=None, error_callback=None):
        self._check_running()
        input_json = _codec.call(self._functions, func, args, kwds)
        result = AsyncResult(1, callback, error_callback)
        self._client.submit(input_json, lambda kind, message: result._part_ended(0, kind, message))
        return result

    def map(self, func, iterable, chunksize=None):
        return self._get(self._map_async(func, iterable, chunksize, star=False))

    def starmap(self, func, iterable, chunksize=None):
        return self._get(self._map_async(func, iterable, chunksize, star=True))

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        return self._map_async(func, iterable, chunksize, False, callback, error_callback)

    def starmap_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        return self._map_async(func, iterable, chunksize, True, callback, error_callback)

    def _map_async(self, func, iterable, chunksize, star, callback=None, error_callback=None):
        self._check_running()
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        if chunksize is None:
            # multiprocessing's default: about four chunks per worker.
            chunksize, extra = divmod(len(iterable), self._processes * 4)
            if extra:
                chunksize += 1
        chunksize = max(1, chunksize)
        inputs = [_codec.chunk(self._functions, func, batch, star) for batch in _codec.batched(iterable, chunksize)]
        result = _MapResult(len(inputs), callback, error_callback)
        self._client.submit_many(
            [
                (input_json, lambda kind, message, index=index: result._part_ended(index, kind, message), None, None)
                for index, input_json in enumerate(inputs)
            ]
        )
        return result

    def imap(self, func, iterable, chunksize=1):
        return self._imap(func, iterable, chunksize, ordered=True)

    def imap_unordered(self, func, iterable, chunksize=1):
        return self._imap(func, iterable, chunksize, ordered=False)

    def _imap(self, func, iterable, chunksize, ordered):
        self._check_running()
        if chunksize < 1:
            raise ValueError("Chunksize must be 1+, not %r" % chunksize)
        inputs = (_codec.chunk(self._functions, func, batch, False) for batch in _codec.batched(iterable, chunksize))
        return _Imap(self, inputs, self._processes * _IMAP_WINDOW_PER_WORKER, ordered)

    def _get(self, result):
        try:
            return result.get()
        except KeyboardInterrupt:
            self._state = "terminate"
            self._client.interrupt_and_wait()
            raise

    def close(self):
        """No more tasks; those submitted run to their end."""
        if self._state == "run":
            self._state = "close"
            self._client.shutdown()

    def terminate(self):
        """Stop the workers now; open tasks end with PoolBroken."""
        self._state = "terminate"
        self._client.kill()

    def join(self):
        if self._state == "run":
            raise ValueError("Pool is still running")
        try:
            self._client.wait()
        except KeyboardInterrupt:
            self._client.interrupt_and_wait()
            raise

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self._state = "terminate"
            self._client.interrupt_and_wait()
        else:
            self.terminate()
        return False

    def __del__(self):
        client = getattr(self, "_client", None)
        if client is not None and not client.closed and not client.forked_away:
            try:
                client.kill()
            except Exception:
                pass



__all__ = ["Pool", "AsyncResult", "PoolBroken"]

"""How calls and their outcomes travel: pickled with cloudpickle (so lambdas, closures
and functions from `__main__` work), base64 inside the JSON lines of the protocol.

A task's input is `{"f": FUNCTION, "a": ARGS}` for one call, or `{"f": FUNCTION,
"chunk": [ARGS, ...]}` for a chunk of calls answered by one list; ARGS is the pickled
`(args, kwargs)`. The answer's output is `{"v": VALUE}` or, when the call raised,
`{"x": EXCEPTION, "tb": TRACEBACK, "r": REPR}` (`x` is null when the exception itself
would not pickle). A function is pickled once per caller and unpickled once per worker:
its text is the cache key on both sides.
"""

import base64
import itertools
import pickle
import traceback
from collections import OrderedDict

import cloudpickle

from ._errors import RemoteError, RemoteTraceback

_CACHE_SIZE = 128


def _dump(obj):
    return base64.b64encode(cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)).decode("ascii")


def _load(text):
    return pickle.loads(base64.b64decode(text))


class FunctionCache:
    """Pickled functions by identity. The function is kept with its text, so that its
    id is not reused by another object while it is cached."""

    def __init__(self):
        self._texts = OrderedDict()

    def text(self, fn):
        key = id(fn)
        hit = self._texts.get(key)
        if hit is not None and hit[0] is fn:
            self._texts.move_to_end(key)
            return hit[1]
        text = _dump(fn)
        self._texts[key] = (fn, text)
        if len(self._texts) > _CACHE_SIZE:
            self._texts.popitem(last=False)
        return text


def batched(iterable, size):
    """Lists of `size` items (the last may be shorter)."""
    iterator = iter(iterable)
    while True:
        batch = list(itertools.islice(iterator, size))
        if not batch:
            return
        yield batch


def call(functions, fn, args, kwargs):
    """The input of a task that runs `fn(*args, **kwargs)`; raises if any of it does
    not pickle, so that the caller learns at submit time."""
    return {"f": functions.text(fn), "a": _dump((tuple(args), kwargs or {}))}


def chunk(functions, fn, arg_tuples):
    """The input of a task that runs `fn(*args)` for each tuple and answers the list."""
    return {"f": functions.text(fn), "chunk": [_dump((tuple(args), {})) for args in arg_tuples]}


class Loader:
    """The worker's side: functions unpickled once, by their text."""

    def __init__(self):
        self._functions = OrderedDict()

    def function(self, text):
        fn = self._functions.get(text)
        if fn is None:
            fn = _load(text)
            self._functions[text] = fn
            if len(self._functions) > _CACHE_SIZE:
                self._functions.popitem(last=False)
        return fn

    def run(self, task_input):
        """Run a task's call (or chunk) and return its output, never raising for what
        the call did."""
        try:
            fn = self.function(task_input["f"])
            if "chunk" in task_input:
                value = []
                for text in task_input["chunk"]:
                    args, kwargs = _load(text)
                    value.append(fn(*args, **kwargs))
            else:
                args, kwargs = _load(task_input["a"])
                value = fn(*args, **kwargs)
            return {"v": _dump(value)}
        except Exception as exc:  # the task's failure, not the worker's
            return _failure(exc)


def _failure(exc):
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        pickled = _dump(exc)
        pickle.loads(base64.b64decode(pickled))  # an exception may pickle, not unpickle
    except Exception:
        pickled = None
    return {"x": pickled, "tb": tb, "r": repr(exc)}


def outcome(output):
    """The caller's side of an answer: `(True, value)` or `(False, exception)`, with the
    remote traceback as the exception's `__cause__`."""
    if not isinstance(output, dict) or not ("v" in output or "r" in output):
        return False, RemoteError("the worker's answer is not one of procpool's: %.200r" % (output,))
    if "v" in output:
        try:
            return True, _load(output["v"])
        except Exception as exc:
            return False, RemoteError("the task's return value does not unpickle here: %r" % exc)
    exc = None
    if output.get("x") is not None:
        try:
            exc = _load(output["x"])
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        return False, RemoteError(output.get("r", "the task raised"), output.get("tb"))
    exc.__cause__ = RemoteTraceback(output.get("tb", ""))
    return False, exc

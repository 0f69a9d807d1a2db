"""How calls and their outcomes travel: pickled, base64 inside the JSON lines of the
protocol.

Everything is pickled with the standard pickler first (several times faster, and a
worker then need not import cloudpickle, 30 ms of its start), and by cloudpickle when
that fails (a lambda, a closure) or names `__main__` (a function or class defined
there, which a worker cannot import by name): cloudpickle takes those by value. A
function is pickled once per caller and unpickled once per worker (its text is the
cache key on both sides).

A task's input is `{"f": FUNCTION, "a": ARGS}` for one call, ARGS the pickled
`(args, kwargs)`, or `{"f": FUNCTION, "chunk": ITEMS}` for a chunk of calls answered by
one list, ITEMS the pickled list of single arguments (`"starchunk"`: of argument
tuples). The answer's output is
`{"v": VALUE}` or, when the call raised, `{"x": EXCEPTION, "tb": TRACEBACK, "r": REPR}`
(`x` is null when the exception itself would not pickle). Inputs are built as JSON text
directly: base64 needs no escaping.
"""

import binascii
import itertools
import json
import pickle
from collections import OrderedDict

_CACHE_SIZE = 128


def _b64(data):
    # binascii, not base64: the base64 module costs a worker's start 10 ms of imports.
    return binascii.b2a_base64(data, newline=False)


def _dump(obj):
    try:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        data = None
    if data is None or b"__main__" in data:
        import cloudpickle

        data = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _b64(data).decode("ascii")


def _load(text):
    return pickle.loads(binascii.a2b_base64(text))


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
    """The input (JSON text) of a task that runs `fn(*args, **kwargs)`; raises if any
    of it does not pickle, so that the caller learns at submit time."""
    return '{"f":"%s","a":"%s"}' % (functions.text(fn), _dump((tuple(args), kwargs or {})))


def chunk(functions, fn, items, star):
    """The input (JSON text) of a task that runs `fn(item)` for each item (`fn(*item)`
    with `star`) and answers the list of results."""
    kind = "starchunk" if star else "chunk"
    return '{"f":"%s","%s":"%s"}' % (functions.text(fn), kind, _dump(items))


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

    def answer(self, task_id, task_input):
        """Run task `task_id`'s call (or chunk) and return its `result` line, never
        raising for what the call did."""
        try:
            fn = self.function(task_input["f"])
            if "chunk" in task_input:
                value = [fn(item) for item in _load(task_input["chunk"])]
            elif "starchunk" in task_input:
                value = [fn(*args) for args in _load(task_input["starchunk"])]
            else:
                args, kwargs = _load(task_input["a"])
                value = fn(*args, **kwargs)
            return b'{"type":"result","id":%d,"output":{"v":"%s"}}\n' % (task_id, _dump(value).encode())
        except Exception as exc:  # the task's failure, not the worker's
            output = _failure(exc)
        return json.dumps({"type": "result", "id": task_id, "output": output}).encode() + b"\n"


def _failure(exc):
    import traceback

    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        pickled = _dump(exc)
        pickle.loads(binascii.a2b_base64(pickled))  # an exception may pickle, not unpickle
    except Exception:
        pickled = None
    return {"x": pickled, "tb": tb, "r": repr(exc)}


def outcome(output):
    """The caller's side of an answer: `(True, value)` or `(False, exception)`, with the
    remote traceback as the exception's `__cause__`."""
    from ._errors import RemoteError, RemoteTraceback

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

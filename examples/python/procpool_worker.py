"""procpool worker SDK for Python: stdlib only, one file, importable.

    from procpool_worker import serve

    def handle(task_input):
        return {"doubled": task_input * 2}   # any JSON value

    serve(handle)

`serve(handler)` speaks procpool protocol v1 (child/PROTOCOL.md) on stdin/stdout:
it sends `ready`, calls `handler(input)` for every task and answers with its return
value; an exception becomes an `error` answer with the exception's text (the task
failed, the worker goes on). `stop` or EOF ends it with exit status 0. A
`BaseException` that is not an `Exception` (`sys.exit`, `KeyboardInterrupt`) is not
caught: the worker dies and procpool retries the task, as for any crash. Before each
task it sends `started`, so a crash is charged to the task that caused it and to no
other; that line goes out in the same write as the previous answer.

While `serve` runs, `print()` and anything else written to `sys.stdout` goes to the
worker's stderr, which procpool forwards as its log: stdout carries protocol only.

`arrays()` maps the workload's shared arrays (`PROCPOOL_ARRAYS`) as numpy memmaps
when numpy is importable, else returns their descriptions (path, dtype, shape,
writable). `worker_index()` and `procs()` say which slot of how many this is.

Run as a program (`python3 procpool_worker.py`) it is an echo worker: every task's
output is its input.
"""

import json
import os
import sys

__all__ = ["serve", "arrays", "array_specs", "worker_index", "procs"]

PROTOCOL_VERSION = 1

def worker_index():
    """This worker's slot, 0..procs()-1 (PROCPOOL_WORKER)."""
    return int(os.environ.get("PROCPOOL_WORKER", "0"))


def procs():
    """The number of worker slots in the pool (PROCPOOL_PROCS)."""
    return int(os.environ.get("PROCPOOL_PROCS", "1"))


def array_specs():
    """PROCPOOL_ARRAYS parsed: name -> {"path", "dtype", "shape", "writable"}."""
    return json.loads(os.environ.get("PROCPOOL_ARRAYS") or "{}")


_arrays = None


def arrays():
    """The shared arrays by name: numpy memmaps (writes land in shared memory) when
    numpy is importable, else the descriptions from array_specs()."""
    global _arrays
    if _arrays is None:
        specs = array_specs()
        try:
            import numpy
        except ImportError:
            return specs
        _arrays = {
            name: numpy.load(spec["path"], mmap_mode="r+" if spec.get("writable") else "r")
            for name, spec in specs.items()
        }
    return _arrays


def _log(text):
    sys.stderr.write("procpool_worker: %s\n" % text)
    sys.stderr.flush()


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _answer(handler, message):
    task_id = message.get("id")
    try:
        output = handler(message.get("input"))
        # Strict JSON: NaN and Infinity are no JSON values, and the task ends with this
        # error rather than with a line the supervisor cannot read.
        return json.dumps({"type": "result", "id": task_id, "output": output}, allow_nan=False)
    except Exception as exc:  # the task failed; the worker goes on
        text = "%s: %s" % (type(exc).__name__, exc) if str(exc) else type(exc).__name__
        return json.dumps({"type": "error", "id": task_id, "message": text})


def serve(handler, infd=0, outfd=1):
    """Answers tasks from `infd` on `outfd` with handler(input) until stop or EOF."""
    version = os.environ.get("PROCPOOL_PROTOCOL")
    if version is not None and version != str(PROTOCOL_VERSION):
        _log("procpool speaks protocol %s; this SDK speaks %d" % (version, PROTOCOL_VERSION))
        sys.exit(2)
    if outfd == 1:
        # Keep the protocol on a private copy of stdout and point fd 1 (print, stray
        # C-library output) at stderr, where procpool forwards it as the log.
        sys.stdout.flush()
        outfd = os.dup(1)
        os.dup2(2, 1)
    # Written before each read that may block; in between, an answer waits only for
    # the next task's `started`, so that both go out in one write.
    unsent = b'{"type":"ready"}\n'
    partial = []
    while True:
        _write_all(outfd, unsent)
        unsent = b""
        chunk = os.read(infd, 1 << 16)
        if not chunk:
            return  # EOF means stop
        if b"\n" not in chunk:
            partial.append(chunk)
            continue
        partial.append(chunk)
        data = b"".join(partial)
        lines = data.split(b"\n")
        partial = [lines.pop()] if lines[-1] else []
        for line in lines:
            if not line.strip():
                continue
            try:
                message = json.loads(line)
            except ValueError as exc:
                _log("ignoring a line that is not JSON (%s): %.200r" % (exc, line))
                continue
            kind = message.get("type") if isinstance(message, dict) else None
            if kind == "stop":
                _write_all(outfd, unsent)
                return
            if kind != "task":
                continue  # a message type from a newer protocol: ignore it
            # `started` is out before the handler runs: if it kills the process,
            # procpool charges this task and retries the others uncharged.
            started = json.dumps({"type": "started", "id": message.get("id")})
            _write_all(outfd, unsent + started.encode() + b"\n")
            unsent = (_answer(handler, message) + "\n").encode()


if __name__ == "__main__":
    serve(lambda task_input: task_input)

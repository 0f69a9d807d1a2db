"""The worker program of a Python pool: procpool protocol v1 (child/PROTOCOL.md) on
stdin and stdout, each task's input a pickled call (see `_codec`).

The supervisor starts it as `python -c BOOTSTRAP`, where the bootstrap first takes the
caller's `sys.path` (PROCPOOL_PY_SYSPATH), so that this package and the caller's
modules import as they do in the caller, whatever the install. PROCPOOL_PY_INIT holds
the pickled `(initializer, initargs)`, run once before `ready`.

The protocol's stdout is a private duplicate: descriptor 1 becomes stderr, so a task's
`print` (and a C library's writes) land in the worker's log, not in the protocol.
"""

import binascii
import json
import os
import pickle
import sys

from ._codec import Loader

_READ_SIZE = 1 << 20

# The bootstrap the supervisor runs: the caller's sys.path, then this module.
BOOTSTRAP = (
    "import json, os, sys; sys.path[:] = json.loads(os.environ['PROCPOOL_PY_SYSPATH']); "
    "import procpool._worker; procpool._worker.main()"
)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _encode(message):
    return json.dumps(message, allow_nan=False, separators=(",", ":")).encode() + b"\n"


def _run_initializer():
    text = os.environ.pop("PROCPOOL_PY_INIT", None)
    if text:
        initializer, initargs = pickle.loads(binascii.a2b_base64(text))
        initializer(*initargs)


def _lines(fd):
    """The lines of `fd`, and after each read's last complete line a None: the moment
    to send what is answered before blocking on the next read. A long line is
    gathered in pieces and joined once (a 100 MB argument is one line)."""
    pieces = []
    while True:
        data = os.read(fd, _READ_SIZE)
        if not data:
            return
        start = 0
        end = data.find(b"\n")
        while end >= 0:
            pieces.append(data[start:end])
            yield b"".join(pieces)
            pieces = []
            start = end + 1
            end = data.find(b"\n", start)
        if start < len(data):
            pieces.append(data[start:])
        yield None


def main():
    protocol_out = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if os.environ.get("PROCPOOL_PROTOCOL") != "1":
        sys.exit("procpool worker: protocol %r is not 1" % os.environ.get("PROCPOOL_PROTOCOL"))
    _run_initializer()
    loader = Loader()
    _write_all(protocol_out, _encode({"type": "ready"}))
    answered = b""
    for line in _lines(0):
        if line is None:
            _write_all(protocol_out, answered)
            answered = b""
            continue
        if not line.strip():
            continue
        message = json.loads(line)
        kind = message.get("type")
        if kind == "stop":
            break
        if kind != "task":
            continue
        # `started` goes out with the answers before it, just as the work begins, so a
        # crash is charged to this task and to no other.
        _write_all(protocol_out, answered + _encode({"type": "started", "id": message["id"]}))
        answered = loader.answer(message["id"], message["input"])
    _write_all(protocol_out, answered)

"""What a task's end, as serve reports it, means to its caller."""

from . import _codec
from ._errors import NotRun, PoolBroken, RemoteError, WorkerCrashed


def settle(kind, message):
    """`(True, value)`, `(False, exception)`, or `None` when the task was withdrawn
    before it ran (cancelled, or never run)."""
    if kind == "result":
        return _codec.outcome(message.get("output"))
    if kind == "error":
        return False, RemoteError(message.get("message", "the task failed"))
    if kind == "failed":
        if message.get("timed_out"):
            return False, TimeoutError(message.get("message", "the task ran past its timeout"))
        return False, WorkerCrashed(
            message.get("message", "the task's worker died"),
            message.get("attempts"),
            message.get("crashes", []),
        )
    if kind == "broken":
        return False, PoolBroken(message.get("message"))
    return None


def not_run():
    return NotRun("the task never ran: the pool was interrupted or shut down first")

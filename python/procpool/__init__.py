"""procpool from Python: process pools that survive their workers crashing.

    from procpool import Executor

    with Executor() as pool:
        print(list(pool.map(lambda x: x * x, range(10))))

`Executor` is a `concurrent.futures.Executor`, `Pool` has `multiprocessing.Pool`'s
interface; both run each call in one of a pool of worker processes supervised by
procpool's own binary (`procpool serve`, private to the pool), so a worker that
segfaults, is OOM-killed or hangs past its timeout costs only its own task.
"""

from ._version import __version__

# Names are imported on first use (PEP 562): a worker imports `procpool._worker`, and
# with it this package, without the client's machinery (threads, subprocess,
# concurrent.futures), which keeps a worker's start short.
_HOMES = {
    "Executor": "._executor",
    "Pool": "._pool",
    "AsyncResult": "._pool",
    "WorkerCrashed": "._errors",
    "RemoteError": "._errors",
    "RemoteTraceback": "._errors",
    "NotRun": "._errors",
    "PoolBroken": "._errors",
    "shared_array": "._arrays",
    "arrays": "._arrays",
}

__all__ = [*_HOMES, "__version__"]


def __getattr__(name):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError("module 'procpool' has no attribute %r" % name)
    import importlib

    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__

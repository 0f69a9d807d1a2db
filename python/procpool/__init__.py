"""procpool from Python: process pools that survive their workers crashing.

    from procpool import Executor

    with Executor() as pool:
        print(list(pool.map(lambda x: x * x, range(10))))

`Executor` is a `concurrent.futures.Executor`, `Pool` has `multiprocessing.Pool`'s
interface; both run each call in one of a pool of worker processes supervised by
procpool's own binary (`procpool serve`, private to the pool), so a worker that
segfaults, is OOM-killed or hangs past its timeout costs only its own task.
"""

from ._arrays import arrays, shared_array
from ._errors import NotRun, PoolBroken, RemoteError, RemoteTraceback, WorkerCrashed
from ._executor import Executor
from ._pool import AsyncResult, Pool
from ._version import __version__

__all__ = [
    "Executor",
    "Pool",
    "AsyncResult",
    "WorkerCrashed",
    "RemoteError",
    "RemoteTraceback",
    "NotRun",
    "PoolBroken",
    "shared_array",
    "arrays",
    "__version__",
]

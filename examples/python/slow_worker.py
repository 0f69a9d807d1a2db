"""A slow worker that says what it is doing: each task sleeps `input` seconds (a
number, default 1) in ten steps and logs its progress on stderr, which procpool
forwards as `[wN] ...`. Output: the seconds slept.

    seq 8 | sed 's/.*/0.5/' | procpool run tasks --child 'python3 examples/python/slow_worker.py'
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procpool_worker import serve, worker_index  # noqa: E402


def slow(task_input):
    seconds = float(task_input) if isinstance(task_input, (int, float)) else 1.0
    me = "worker %d (pid %d)" % (worker_index(), os.getpid())
    for step in range(1, 11):
        time.sleep(seconds / 10)
        print("%s: %d%% of %.2fs" % (me, step * 10, seconds), file=sys.stderr, flush=True)
    return seconds


if __name__ == "__main__":
    serve(slow)

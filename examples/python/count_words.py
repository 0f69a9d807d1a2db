"""Counts words in text files, one file per task (the classic count_words).

    find . -name '*.txt' | procpool run tasks --child 'python3 examples/python/count_words.py'

Each task input is a path (or {"path": ...}); the output is
{"path", "lines", "words", "top": [[word, count], ...]} with the five most common
words. A missing or unreadable file becomes an error line for that task.
"""

import collections
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procpool_worker import serve  # noqa: E402

WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


def count_words(task_input):
    path = task_input["path"] if isinstance(task_input, dict) else task_input
    if not isinstance(path, str):
        raise TypeError("expected a file path, got %r" % (path,))
    counts = collections.Counter()
    lines = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            lines += 1
            counts.update(word.lower() for word in WORD.findall(line))
    return {
        "path": path,
        "lines": lines,
        "words": sum(counts.values()),
        "top": counts.most_common(5),
    }


if __name__ == "__main__":
    serve(count_words)

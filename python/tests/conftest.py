import os
import subprocess
import sys
import textwrap
import time

import pytest


def pytest_collection_modifyitems(config, items):
    # numpy (shared arrays) and tqdm are optional here; in CI
    # (PROCPOOL_REQUIRE_NUMPY=1) their tests must run, not skip.
    if os.environ.get("PROCPOOL_REQUIRE_NUMPY") != "1":
        return
    for module in ("numpy", "tqdm"):
        try:
            __import__(module)
        except ImportError:
            raise pytest.UsageError("PROCPOOL_REQUIRE_NUMPY=1 but %s does not import" % module)


def descendants(pid):
    """Every live process below `pid`, by walking /proc's parent links."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(condition, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture
def script(tmp_path):
    """Start `code` as a Python program (stdout and stderr piped, text)."""

    def start(code, **kwargs):
        path = tmp_path / "program.py"
        path.write_text(textwrap.dedent(code))
        return subprocess.Popen(
            [sys.executable, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            **kwargs,
        )

    return start

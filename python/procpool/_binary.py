"""Finding the procpool binary that serves this package's pools."""

import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from ._version import __version__

_found = None


def _installed_with_this_package():
    """The binary pip installed with this very copy of the package, as its RECORD
    says (a venv, `--user`, `--target` or `--prefix` install alike), or None."""
    try:
        dist = importlib.metadata.distribution("procpool")
        if Path(dist.locate_file("procpool/__init__.py")).resolve() != Path(__file__).resolve().with_name(
            "__init__.py"
        ):
            return None  # another install of procpool comes first on sys.path
        for file in dist.files or ():
            if file.name == "procpool" and file.parent.name in ("bin", "scripts"):
                return Path(dist.locate_file(file)).resolve()
    except (importlib.metadata.PackageNotFoundError, OSError):
        pass
    return None


def _candidates():
    """Where the binary may be, best first: PROCPOOL_BIN, the one installed with this
    package (by its RECORD, or in `bin/` beside a `--target` tree), the scripts directory of the running environment (a venv need not be
    activated), the user scripts directory (`pip install --user`), then PATH."""
    explicit = os.environ.get("PROCPOOL_BIN")
    if explicit:
        yield Path(explicit), "PROCPOOL_BIN"
        return
    recorded = _installed_with_this_package()
    if recorded is not None:
        yield recorded, "the package's install record"
    # pip install --target puts scripts in bin/ beside the package, and its RECORD
    # says where they were before the move.
    yield Path(__file__).resolve().parent.parent / "bin" / "procpool", "the install tree"
    yield Path(sysconfig.get_path("scripts")) / "procpool", "the environment's scripts"
    try:
        user = sysconfig.get_path("scripts", "%s_user" % os.name)
    except KeyError:
        user = None
    if user:
        yield Path(user) / "procpool", "the user scripts"
    on_path = shutil.which("procpool")
    if on_path:
        yield Path(on_path), "PATH"


def _version_of(path):
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError:
        return None
    words = out.split()
    return words[1] if len(words) == 2 and words[0] == "procpool" else None


def find_binary():
    """The path of a procpool binary of this package's version, or a RuntimeError that
    says what was found and what to do."""
    global _found
    if _found is not None:
        return _found
    seen = []
    for path, where in _candidates():
        if not (path.is_file() and os.access(path, os.X_OK)):
            continue
        version = _version_of(path)
        if version == __version__:
            _found = str(path)
            return _found
        seen.append("%s (from %s) is version %s" % (path, where, version or "unknown"))
    if seen:
        raise RuntimeError(
            "procpool %s needs its own binary, but %s; reinstall the package "
            "(pip install --force-reinstall procpool) or set PROCPOOL_BIN" % (__version__, "; ".join(seen))
        )
    raise RuntimeError(
        "the procpool binary is not installed beside the package (looked in %s and on "
        "PATH for %s); reinstall the package or set PROCPOOL_BIN to the binary"
        % (sysconfig.get_path("scripts"), sys.executable)
    )

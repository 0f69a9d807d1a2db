"""The binary is found wherever pip put the package, and only of the package's version."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1]
SMOKE = (
    "import procpool, procpool._binary as b\n"
    "with procpool.Executor(max_workers=1) as ex:\n"
    "    assert list(ex.map(abs, [-1, -2])) == [1, 2]\n"
    "print(b.find_binary())\n"
)


def clean_env(**extra):
    """No PROCPOOL_BIN, and a PATH with no procpool on it."""
    env = {k: v for k, v in os.environ.items() if k not in ("PROCPOOL_BIN", "PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = "/usr/bin:/bin"
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(PACKAGE)],
        check=True,
        timeout=900,
    )
    (built,) = out.glob("procpool-*.whl")
    assert "py3-none" in built.name, built.name
    return built


def run_smoke(python, env, cwd):
    out = subprocess.run([str(python), "-c", SMOKE], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
    assert out.returncode == 0, out.stderr
    return Path(out.stdout.strip())


def test_a_venv_that_is_not_activated_finds_its_own_binary(tmp_path):
    found = run_smoke(sys.executable, clean_env(), tmp_path)
    assert found == Path(sysconfig.get_path("scripts")) / "procpool"


def test_pip_install_target_finds_the_binary_in_the_tree(wheel, tmp_path):
    target = tmp_path / "tree"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        timeout=300,
    )
    # cloudpickle from this environment, procpool from the tree alone.
    cloudpickle_home = Path(__import__("cloudpickle").__file__).parents[1]
    env = clean_env(PYTHONPATH="%s:%s" % (target, cloudpickle_home))
    found = run_smoke(sys.executable, env, tmp_path)
    assert found == target / "bin" / "procpool"


def test_pip_install_user_finds_the_binary_in_the_user_scripts(wheel, tmp_path):
    base_python = Path(sys.base_prefix) / "bin" / "python3"
    user_base = tmp_path / "userbase"
    env = clean_env(PYTHONUSERBASE=str(user_base), PIP_BREAK_SYSTEM_PACKAGES="1")
    subprocess.run(
        [str(base_python), "-m", "pip", "install", "--quiet", "--user", str(wheel)],
        check=True,
        timeout=300,
        env=env,
    )
    found = run_smoke(base_python, env, tmp_path)
    assert found == user_base / "bin" / "procpool"


def test_a_binary_of_another_version_is_refused_with_what_to_do(tmp_path):
    fake = tmp_path / "procpool"
    fake.write_text("#!/bin/sh\necho procpool 9.9.9\n")
    fake.chmod(0o755)
    out = subprocess.run(
        [sys.executable, "-c", "import procpool; procpool.Executor()"],
        capture_output=True,
        text=True,
        env=clean_env(PROCPOOL_BIN=str(fake)),
        timeout=60,
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert "is version 9.9.9" in last and "PROCPOOL_BIN" in last, out.stderr

"""End to end on standalone-like prefixes of real interpreters with the static-musl double:
``python -m venv`` fails before ``pipfix apply``, works after it (and the venv's pip
installs a wheel), and fails again after ``pipfix restore``."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
from packaging.version import Version

from conftest import clean_env, find_interpreter, pipfix, run
from simulation import VARIANTS
from standalone import describe, make_standalone_prefix
from wheelmaker import make_wheel

RUNNING_MINOR = str(sys.version_info[1])
MINORS = sorted({"9", "10", "11", "12", "13", RUNNING_MINOR}, key=int)


def bundled_pip_version(prefix: Path) -> Version:
    wheel = next(prefix.glob("lib/python3.*/ensurepip/_bundled/pip-*.whl"))
    return Version(wheel.name.split("-")[1])


def wheel_hashes(prefix: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in prefix.glob("lib/python3.*/ensurepip/_bundled/*.whl")
    }


def make_venv(python: Path, venv: Path):  # type: ignore[no-untyped-def]
    return run([python, "-m", "venv", venv], timeout=600)


@pytest.mark.e2e
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("minor", MINORS)
def test_venv_fails_before_apply_and_works_after(minor: str, variant: str, tmp_path: Path) -> None:
    real = Path(sys.executable) if minor == RUNNING_MINOR else find_interpreter(minor)
    if real is None:
        pytest.skip(f"CPython 3.{minor} is not installed on this machine")
    prefix = tmp_path / "prefix"
    python = make_standalone_prefix(real, prefix, variant)
    original = wheel_hashes(prefix)
    upstream_fixed_dlopen = bundled_pip_version(prefix) >= Version("24.2")
    expect_broken = not (variant == "A" and upstream_fixed_dlopen)

    # 1. The bug, first.
    before = make_venv(python, tmp_path / "before")
    ensurepip = run([python, "-m", "ensurepip", "--root", tmp_path / "root-before"])
    if expect_broken:
        assert before.returncode != 0, before.stdout + before.stderr
        assert "ensurepip" in before.stderr + before.stdout
        assert ensurepip.returncode != 0
        assert "Dynamic loading not supported" in ensurepip.stderr
    else:
        assert before.returncode == 0, before.stderr
    assert pipfix("check", prefix).returncode == 1

    # 2. The fix.
    applied = pipfix("apply", prefix)
    assert applied.returncode == 0, applied.stderr
    assert "patched" in applied.stdout
    again = pipfix("apply", prefix)
    assert again.returncode == 0 and "already patched" in again.stdout
    assert pipfix("check", prefix).returncode == 0

    venv = tmp_path / "after"
    after = make_venv(python, venv)
    assert after.returncode == 0, after.stdout + after.stderr
    pip = venv / "bin" / "pip"
    version = run([pip, "--version"])
    assert version.returncode == 0 and version.stdout.startswith("pip "), version.stderr
    wheel = make_wheel(tmp_path)
    installed = run([pip, "install", "--no-index", wheel])
    assert installed.returncode == 0, installed.stdout + installed.stderr
    imported = run(
        [venv / "bin" / "python", "-c", "import hello_pipfix; print(hello_pipfix.GREETING)"]
    )
    assert imported.stdout.strip() == "hello from a wheel", imported.stderr

    # 3. Restore brings the exact originals, and the failure, back.
    restored = pipfix("restore", prefix)
    assert restored.returncode == 0, restored.stderr
    assert wheel_hashes(prefix) == original
    if expect_broken:
        assert make_venv(python, tmp_path / "restored").returncode != 0


@pytest.mark.e2e
def test_prefix_helper_uses_the_interpreter_it_was_given(tmp_path: Path) -> None:
    python = make_standalone_prefix(Path(sys.executable), tmp_path / "p", None)
    info = describe(python)
    assert Path(info["stdlib"]) == tmp_path / "p" / "lib" / f"python{info['version']}"
    assert run(
        [python, "-c", "import sys; print(sys.prefix)"], env=clean_env()
    ).stdout.strip() == str(tmp_path / "p")

"""Shared fixtures: pinned real wheels, real interpreters, clean subprocess environments."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
VENDORED = ROOT / "vendored_wheels"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _load_fetch_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("vendored_fetch", VENDORED / "fetch.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_fetch = _load_fetch_module()


def pinned_wheel_paths() -> dict[str, Path]:
    """{file name: path} of every wheel in the manifest, fetched and verified."""
    return {path.name: path for path in _fetch.fetch_all()}


PINNED_NAMES = sorted(_fetch.read_manifest(), key=lambda n: (n.split("-")[0], n))


@pytest.fixture(scope="session")
def pinned_wheels() -> dict[str, Path]:
    return pinned_wheel_paths()


# CLI runs in the tests keep pipfix's cache of patched wheels away from ~/.cache.
TEST_CACHE_HOME = tempfile.mkdtemp(prefix="pipfix-test-cache-")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The tests' cache goes with the session that made it (none is left in /tmp)."""
    shutil.rmtree(TEST_CACHE_HOME, ignore_errors=True)


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """XDG_CACHE_HOME in a temporary directory: nothing is written to the real ~/.cache."""
    home = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


def clean_env(**extra: str) -> dict[str, str]:
    """An environment in which pip and Python behave the same on every machine."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))
    }
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_INDEX="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        PIP_NO_CACHE_DIR="1",
        PYTHONNOUSERSITE="1",
        XDG_CACHE_HOME=TEST_CACHE_HOME,
    )
    env.update(extra)
    return env


def run(
    command: list[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in command],
        env=dict(env) if env is not None else clean_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def pipfix(
    *args: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real command line in a subprocess, as a user would."""
    environment = clean_env(PYTHONPATH=str(SRC)) if env is None else dict(env)
    return run([sys.executable, "-m", "pipfix", *args], env=environment)


def tree_digest(root: Path) -> dict[str, str]:
    """Every file (and symlink target) under ``root`` with its sha256: 'nothing changed' proofs."""
    digest: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_symlink():
            digest[relative] = "link:" + os.readlink(path)
        elif path.is_file():
            digest[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            digest[relative] = "dir"
    return digest


def find_interpreter(minor: str) -> Path | None:
    """A real CPython 3.<minor> on this machine (pyenv or PATH), or None."""
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = sorted((pyenv_root / "versions").glob(f"3.{minor}.*/bin/python3.{minor}"))
    found = shutil.which(f"python3.{minor}")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture
def tmp_tree(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def _can_mount() -> bool:
    return (
        sys.platform.startswith("linux") and os.geteuid() == 0 and shutil.which("mount") is not None
    )


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mount a private tmpfs (for read-only and disk-full tests); unmounted afterwards."""
    if not _can_mount():
        if IN_CI:
            pytest.fail("CI must run the filesystem fault tests: needs root and mount")
        pytest.skip("needs root and mount(8) to make a read-only or full filesystem")
    mounts: list[Path] = []

    def make(size: str = "64m") -> Path:
        point = tmp_path / f"mnt{len(mounts)}"
        point.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], check=True
        )
        mounts.append(point)
        return point

    yield make
    for point in reversed(mounts):
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture
def read_only_copy(small_filesystem: Callable[..., Path]) -> Callable[[Path], Path]:
    """Copy a tree onto a tmpfs and remount it read-only."""

    def make(tree: Path) -> Path:
        point = small_filesystem("256m")
        target = point / tree.name
        shutil.copytree(tree, target, symlinks=True)
        subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
        return target

    return make


@pytest.fixture(scope="session")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A base directory for the hardening suites' prefixes, shared by the session."""
    from hardening import shared_base_for_session

    yield from shared_base_for_session(tmp_path_factory)

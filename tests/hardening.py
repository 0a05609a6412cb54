"""Helpers of the hardening tests (faults, concurrency): prefixes, forked runs, states.

* ``ensurepip_template`` builds, once per session, a prefix whose pip and
  setuptools were installed by the real ``ensurepip`` (as in
  ``test_install.ensurepip_prefix``); ``fresh_copy`` puts a copy of it at one
  fixed path, so that every run sees the same absolute paths (launcher
  shebangs, bytecode file names) and end states compare exactly.
* ``run_forked`` runs the real command line (``cli.main``) in a forked child
  of the test process, with ``faults`` switched on: the child is a real
  process, killed for real by SIGKILL, but it skips interpreter start-up,
  libcst's import and the codemods' work (warmed up in the parent by
  ``warm_up``). That is what makes killing ``apply`` at *every* step affordable.
* ``WheelState``/``file_states``: what "either exactly as before or exactly
  pipfix's verified output" means, file by file.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from pipfix import cli, faults, patcher, provenance, wheelfile

from conftest import clean_env, tree_digest

T = TypeVar("T")
STATE_DIR = ".pipfix"
_STDLIB_CACHE = re.compile(r"^lib/python3\.\d+t?/__pycache__/")
_BUNDLED = re.compile(r"^lib/python3\.\d+t?/ensurepip/_bundled/")


# --- prefixes ---------------------------------------------------------------------------


def can_mount() -> bool:
    return (
        sys.platform.startswith("linux") and os.geteuid() == 0 and shutil.which("mount") is not None
    )


_SHARED: list[Path] = []


def shared_base(factory: pytest.TempPathFactory) -> Path:
    """One scratch directory for the whole session (the template is built once in it).

    A tmpfs when we may mount one (root, as in CI), else a plain directory. Only for
    speed: the kill tests copy a 30 MB prefix for every step, and fsync on a tmpfs
    costs nothing. A kill is a kill on any filesystem.
    """
    if not _SHARED:
        directory = factory.getbasetemp() / "hardening"
        directory.mkdir(parents=True, exist_ok=True)
        if can_mount():
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=1g", "tmpfs", str(directory)], check=True
            )
            atexit.register(release_shared_base)  # if the session fixture never ends
        _SHARED.append(directory)
    return _SHARED[0]


def release_shared_base() -> None:
    while _SHARED:
        directory = _SHARED.pop()
        if os.path.ismount(directory):
            subprocess.run(["umount", "-l", str(directory)], check=False)


def shared_base_for_session(factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Body of the session-scoped ``scratch`` fixture (conftest): ``shared_base``,
    unmounted when the session ends."""
    yield shared_base(factory)
    release_shared_base()
    _TEMPLATE.clear()


_TEMPLATE: dict[str, Path] = {}


def work_path(base: Path, slot: int = 0) -> Path:
    """Where copies are put; one fixed path per parallel worker (``fork_map``'s slot)."""
    return base / ("work" if slot == 0 else f"work{slot}") / "prefix"


def ensurepip_template(base: Path) -> Path:
    """A prefix with pip and setuptools installed by the real ensurepip (built once).

    It is built at ``work_path(base)`` and moved aside, so that the copies
    ``fresh_copy`` puts back there have launchers pointing at themselves.
    """
    key = str(base)
    if key not in _TEMPLATE:
        from test_install import ensurepip_prefix

        work = work_path(base)
        if work.exists():
            shutil.rmtree(work)
        ensurepip_prefix(work.parent)
        template = base / "template" / "prefix"
        template.parent.mkdir(parents=True, exist_ok=True)
        work.rename(template)
        _TEMPLATE[key] = template
    return _TEMPLATE[key]


def fresh_copy(template: Path, slot: int = 0) -> Path:
    """A pristine copy of ``template`` at the fixed work path (of worker ``slot``)."""
    work = work_path(template.parent.parent, slot)
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(template, work, symlinks=True)
    return work


def parallel_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def fork_map(
    func: Callable[[int, T], dict[str, str]], items: Sequence[T], workers: int | None = None
) -> dict[str, str]:
    """``func(slot, item)`` for every item, in forked workers (slot 0..workers-1) that
    share this process's warm state; the problems they return are merged."""
    workers = min(workers or parallel_workers(), max(len(items), 1))
    if workers == 1:
        merged: dict[str, str] = {}
        for item in items:
            merged.update(func(0, item))
        return merged
    with tempfile.TemporaryDirectory(prefix="pipfix-map-") as scratch:
        pids = []
        for slot in range(workers):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - a worker
                result: dict[str, str] = {}
                try:
                    for item in items[slot::workers]:
                        result.update(func(slot, item))
                except BaseException:
                    result[f"worker {slot} crashed"] = traceback.format_exc()
                finally:
                    Path(scratch, f"{slot}.json").write_text(json.dumps(result))
                    os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        merged = {}
        for slot in range(workers):
            out = Path(scratch, f"{slot}.json")
            merged.update(
                json.loads(out.read_text()) if out.exists() else {f"worker {slot}": "died"}
            )
        return merged


def bundled_wheels(prefix: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(prefix.glob("lib/python3.*/ensurepip/_bundled/*.whl"))}


def warm_up(prefix: Path) -> None:
    """Run the codemods once in this process; forked runs reuse the results."""
    for wheel in bundled_wheels(prefix).values():
        patcher.plan(wheel)


# --- runs in a forked child ---------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    returncode: int  # negative: killed by that signal
    stdout: str
    stderr: str

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL


def run_forked(
    argv: list[str],
    *,
    kill_at: int | None = None,
    trace: bool = False,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> Run:
    """``pipfix ARGV`` in a forked child of this (warmed-up) process."""
    with tempfile.TemporaryDirectory(prefix="pipfix-fork-") as scratch:
        out_path, err_path = Path(scratch, "stdout"), Path(scratch, "stderr")
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 70
            try:
                for fd, path in ((1, out_path), (2, err_path)):
                    opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    os.dup2(opened, fd)
                    os.close(opened)
                sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
                sys.stderr = io.TextIOWrapper(
                    io.FileIO(2, "w", closefd=False), encoding="utf-8", line_buffering=True
                )
                os.environ.clear()
                os.environ.update(env if env is not None else clean_env())
                faults.configure(kill_at=kill_at, trace=trace)
                code = cli.main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 70
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError(f"pipfix {argv} did not finish within {timeout} s")
            time.sleep(0.005)
        returncode = os.waitstatus_to_exitcode(status)
        return Run(returncode, out_path.read_text(), err_path.read_text())


# --- states --------------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_state(relative: str) -> bool:
    return STATE_DIR in relative.split("/")


def _comparable_bytes(relative: str, data: bytes) -> bytes:
    """Bytecode without its header (it holds the source's mtime); RECORD without cache rows."""
    if relative.endswith(".pyc"):
        return data[16:]
    if relative.endswith(".dist-info/RECORD"):
        rows = [r for r in data.decode("utf-8").splitlines() if "__pycache__" not in r]
        return "\n".join(rows).encode()
    return data


def installed_state(prefix: Path) -> dict[str, str]:
    """Every file of the prefix outside pipfix's state directories and the wheel directory.

    Bytecode caches compare without their header, RECORD without cache rows, and
    the stdlib's own ``__pycache__`` (Python writes it when pipfix runs the target)
    is left out.
    """
    state: dict[str, str] = {}
    for relative, digest in tree_digest(prefix).items():
        if _is_state(relative) or _STDLIB_CACHE.match(relative) or _BUNDLED.match(relative):
            continue
        if digest in ("dir",) or digest.startswith("link:"):
            state[relative] = digest
            continue
        path = prefix / relative
        state[relative] = sha256(_comparable_bytes(relative, path.read_bytes()))
    return state


def exact_state(prefix: Path) -> dict[str, str]:
    """The whole prefix, byte for byte, less the root state directory (lock, manifests),
    lock files (and directories holding nothing else) and the stdlib's own bytecode caches."""
    state = {
        k: v
        for k, v in tree_digest(prefix).items()
        if not (k == STATE_DIR or k.startswith(STATE_DIR + "/"))
        and not _STDLIB_CACHE.match(k)
        and not k.endswith(f"/{STATE_DIR}/lock")
    }
    for key in [k for k in state if k.endswith(f"/{STATE_DIR}")]:
        if not any(k.startswith(key + "/") for k in state):
            del state[key]
    return state


def mixed_files(
    current: Mapping[str, str], before: Mapping[str, str], after: Mapping[str, str]
) -> dict[str, str]:
    """Files that are neither as before nor as at the end (a missing file is a state too)."""
    problems = {}
    for relative in sorted(set(current) | set(before) | set(after)):
        state = current.get(relative)
        if state != before.get(relative) and state != after.get(relative):
            problems[relative] = (
                f"now {state}, before {before.get(relative)}, after {after.get(relative)}"
            )
    return problems


def check_wheel(path: Path, original_sha256: str, patched_sha256: str) -> str:
    """'original' or 'patched' (a fully verified pipfix output); anything else fails."""
    data = path.read_bytes()
    digest = sha256(data)
    if digest == original_sha256:
        return "original"
    verified = wheelfile.verify(path, data)
    record = verified.contents.get(provenance.member_name(verified.dist_info))
    assert record is not None, f"{path.name}: neither the original nor pipfix's output"
    assert provenance.Provenance.from_bytes(record).original_sha256 == original_sha256
    assert digest == patched_sha256, f"{path.name}: verifies but is not pipfix's output"
    return "patched"


def leftovers(prefix: Path) -> list[str]:
    """Temporary files, stages or a journal that a finished run must not leave."""
    found = []
    for state_dir in [prefix / STATE_DIR, *prefix.glob("lib/python3.*/ensurepip/_bundled/.pipfix")]:
        if not state_dir.is_dir():
            continue
        for entry in state_dir.iterdir():
            if entry.name.startswith(("tmp-", "stage-")) or entry.name == "journal.json":
                found.append(str(entry.relative_to(prefix)))
    return found


def file_names(paths: Iterable[Path]) -> list[str]:
    return sorted(p.name for p in paths)


def step_lines(stderr: str) -> list[str]:
    """The steps a run traced with ``PIPFIX_TEST_TRACE_STEPS=1`` printed, in order."""
    return [line for line in stderr.splitlines() if line.startswith("pipfix-step ")]

"""Concurrent runs on one target are serialized by its lock: real parallel processes.

The first run is made to pause mid-write (``PIPFIX_TEST_PAUSE_AT_STEP``: it holds
the lock, some files are already replaced), the second is started then. The
second must wait -- saying so on stderr -- and then do its job on the state the
first one left, or, if it waits too long, fail cleanly with exit 2 and "another
pipfix run holds the lock". Meanwhile a reader checks, over and over, that every
wheel ensurepip could pick up is whole: the original or pipfix's verified output.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hardening import (
    bundled_wheels,
    check_wheel,
    ensurepip_template,
    exact_state,
    fresh_copy,
    installed_state,
    run_forked,
    sha256,
    step_lines,
    warm_up,
)
from pipfix import cli, store

from conftest import SRC, clean_env


@dataclass(frozen=True)
class Reference:
    template: Path
    steps: list[str]
    original_wheels: dict[str, str]
    patched_wheels: dict[str, str]
    before_exact: dict[str, str]
    after_installed: dict[str, str]

    def step_after(self, *fragments: str) -> int:
        """The number of the step right after the first one whose label has all fragments."""
        for number, label in enumerate(self.steps, start=1):
            if all(f in label for f in fragments):
                return number + 1
        raise AssertionError(f"no step with {fragments}: {self.steps}")


@pytest.fixture(scope="module")
def reference(scratch: Path) -> Reference:
    template = ensurepip_template(scratch)
    warm_up(template)
    original = {n: sha256(p.read_bytes()) for n, p in bundled_wheels(template).items()}
    before = exact_state(template)
    prefix = fresh_copy(template)
    traced = run_forked(["apply", str(prefix)], trace=True)
    assert traced.returncode == 0, traced.stderr
    steps = step_lines(traced.stderr)
    patched = {n: sha256(p.read_bytes()) for n, p in bundled_wheels(prefix).items()}
    return Reference(template, steps, original, patched, before, installed_state(prefix))


_RUNNING: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_process_left() -> Iterator[None]:
    """A failed test must not leave a paused pipfix holding a lock for the next one."""
    yield
    while _RUNNING:
        process = _RUNNING.pop()
        if process.poll() is None:
            process.kill()
            process.wait()


class Background:
    """A real ``pipfix`` process whose stderr is read (and can be waited on) as it comes."""

    def __init__(self, *args: str | Path, **env: str) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipfix", *map(str, args)],
            env=clean_env(PYTHONPATH=str(SRC), **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _RUNNING.append(self.process)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append("<eof>")
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [line for line in self.lines if text in line]
                if found:
                    return found[0]
                if "<eof>" in self.lines:
                    raise AssertionError(f"ended without {text!r}: {self.lines}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {text!r} within {timeout} s: {self.lines}")
                self._changed.wait(left)

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        assert self.process.stdout is not None
        stdout = self.process.stdout.read()
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout)
        return code, stdout, "\n".join(line for line in self.lines if line != "<eof>")


@dataclass
class WheelWatcher:
    """Checks every wheel ensurepip sees, in a loop, until stopped: never torn."""

    prefix: Path
    reference: Reference
    problems: list[str] = field(default_factory=list)
    looks: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, path in bundled_wheels(self.prefix).items():
                try:
                    check_wheel(
                        path,
                        self.reference.original_wheels[name],
                        self.reference.patched_wheels[name],
                    )
                except FileNotFoundError:
                    self.problems.append(f"{name} missing for a moment")
                except Exception as exc:
                    self.problems.append(f"{name}: {exc}")
            self.looks += 1
            time.sleep(0.02)

    def __enter__(self) -> WheelWatcher:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _paused(prefix: Path, tmp_path: Path, step: int, *args: str) -> tuple[Background, Path]:
    release = tmp_path / "release"
    first = Background(
        *args,
        prefix,
        PIPFIX_TEST_PAUSE_AT_STEP=str(step),
        PIPFIX_TEST_PAUSE_SECONDS="120",
        PIPFIX_TEST_PAUSE_RELEASE=str(release),
    )
    first.wait_for("pipfix-pause ")
    return first, release


def _applied_state_is_reached(prefix: Path, reference: Reference) -> None:
    for name, path in bundled_wheels(prefix).items():
        assert sha256(path.read_bytes()) == reference.patched_wheels[name]
    assert installed_state(prefix) == reference.after_installed


def test_second_apply_waits_for_the_first(reference: Reference, tmp_path: Path) -> None:
    prefix = fresh_copy(reference.template)
    # Pause the first run in the middle of the installed pip's swap: glibc.py is already
    # the patched one, RECORD is not yet.
    pause = reference.step_after("rename ", "glibc.py -> ")
    with WheelWatcher(prefix, reference) as watcher:
        first, release = _paused(prefix, tmp_path, pause, "apply")
        second = Background("apply", prefix)
        waiting = second.wait_for("pipfix: waiting for another run to release")
        assert (
            waiting == f"pipfix: waiting for another run to release {prefix / '.pipfix' / 'lock'}"
        )
        assert second.process.poll() is None
        release.touch()
        first_code, _, first_err = first.finish()
        second_code, second_out, second_err = second.finish()
    assert first_code == 0, first_err
    assert second_code == 0, second_err
    assert all(": already patched" in line for line in second_out.splitlines()[:-1]), second_out
    assert watcher.problems == [] and watcher.looks > 0
    _applied_state_is_reached(prefix, reference)


def test_restore_waits_for_apply_and_apply_for_restore(
    reference: Reference, tmp_path: Path
) -> None:
    prefix = fresh_copy(reference.template)
    pause = reference.step_after("rename ", "glibc.py -> ")
    with WheelWatcher(prefix, reference) as watcher:
        applying, release = _paused(prefix, tmp_path, pause, "apply")
        restoring = Background("restore", prefix)
        restoring.wait_for("pipfix: waiting for another run")
        release.touch()
        assert applying.finish()[0] == 0
        code, _, err = restoring.finish()
        assert code == 0, err
        assert exact_state(prefix) == reference.before_exact  # restore ran second

        assert run_forked(["apply", str(prefix)]).returncode == 0
        # Now the other way round: restore holds the lock, half done.
        release.unlink()
        restoring, release = _paused(prefix, tmp_path, 3, "restore")
        applying = Background("apply", prefix)
        applying.wait_for("pipfix: waiting for another run")
        release.touch()
        assert restoring.finish()[0] == 0
        code, _, err = applying.finish()
        assert code == 0, err
    assert watcher.problems == [] and watcher.looks > 0
    _applied_state_is_reached(prefix, reference)  # apply ran second


def test_apply_and_patch_wheel_in_place_share_the_wheel_lock(
    reference: Reference, tmp_path: Path
) -> None:
    """``patch-wheel --in-place`` on a wheel of the prefix that ``apply`` is patching."""
    prefix = fresh_copy(reference.template)
    wheel = bundled_wheels(prefix)[min(bundled_wheels(prefix))]
    # Pause apply after it wrote the patched wheel's temporary file, before the rename.
    pause = next(
        n + 1
        for n, label in enumerate(reference.steps, 1)
        if label.endswith(f"/{wheel.name}") and " write " in label
    )
    with WheelWatcher(prefix, reference) as watcher:
        applying, release = _paused(prefix, tmp_path, pause, "apply")
        patching = Background("patch-wheel", "--in-place", wheel)
        patching.wait_for("pipfix: waiting for another run")
        release.touch()
        code, _, err = applying.finish()
        assert code == 0, err
        code, out, err = patching.finish()
        assert code == 0, err
        assert ": already patched" in out.splitlines()[0], out
    assert watcher.problems == []
    _applied_state_is_reached(prefix, reference)


@pytest.fixture
def short_lock_timeout(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The in-process run below waits 1 s for the lock instead of 60 s."""
    monkeypatch.setattr(store, "target_lock", functools.partial(store.target_lock, timeout=1.0))
    yield


def test_lock_held_too_long_fails_cleanly(
    reference: Reference,
    tmp_path: Path,
    short_lock_timeout: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefix = fresh_copy(reference.template)
    before = exact_state(prefix)
    first, release = _paused(prefix, tmp_path, 1, "apply")  # holds the lock, wrote nothing
    try:
        for key, value in clean_env().items():
            monkeypatch.setenv(key, value)
        code = cli.main(["apply", str(prefix)])
    finally:
        release.touch()
    first_code, _, first_err = first.finish()
    captured = capsys.readouterr()
    lock = prefix / ".pipfix" / "lock"
    assert code == 2
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"pipfix: waiting for another run to release {lock}",
        f"pipfix: error: {lock}: another pipfix run holds the lock (waited 1 s)",
    ]
    assert first_code == 0, first_err
    assert exact_state(prefix) != before  # the first run did its work, alone
    _applied_state_is_reached(prefix, reference)


_COUNT_UNDER_LOCK = """
import sys, time
from pathlib import Path
from pipfix import store
target, counter, rounds = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
for _ in range(rounds):
    with store.target_lock(target / ".pipfix"):
        value = int(counter.read_text()) if counter.exists() else 0
        time.sleep(0.001)
        counter.write_text(str(value + 1))
"""


def test_lock_is_exclusive_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """Many processes take and release the lock in a tight loop: no update is lost, even
    though each release removes the lock file (and its directory) -- and none is left."""
    target, counter = tmp_path / "target", tmp_path / "counter"
    target.mkdir()
    processes, rounds = 6, 60
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _COUNT_UNDER_LOCK, str(target), str(counter), str(rounds)],
            env=clean_env(PYTHONPATH=str(SRC)),
            stderr=subprocess.DEVNULL,
        )
        for _ in range(processes)
    ]
    assert [worker.wait(timeout=120) for worker in workers] == [0] * processes
    assert int(counter.read_text()) == processes * rounds
    assert list(target.iterdir()) == []

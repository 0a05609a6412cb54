"""Test-only fault injection: die (or wait) at the N-th filesystem step.

The hardening tests prove that a run killed at *any* point leaves every file
either as it was or as pipfix's verified output, and that re-running
converges. Each call to ``step`` is one filesystem step (a write, a rename, a
removal); the environment variables below act on the N-th one. Unset, ``step``
only counts, so production runs are unaffected.

``PIPFIX_TEST_KILL_AT_STEP=N``
    kill the process with SIGKILL at step N (no cleanup handlers run, exactly
    like a real kill).
``PIPFIX_TEST_TRACE_STEPS=1``
    print ``pipfix-step N <label>`` to stderr for each step, so a test can
    count the steps of a run and see which one does what.
``PIPFIX_TEST_PAUSE_AT_STEP=N``
    pause at step N (before doing it), while holding whatever the run holds
    (the target's lock): ``pipfix-pause N <label>`` goes to stderr, then the
    run sleeps ``PIPFIX_TEST_PAUSE_SECONDS`` (default 5), or less if the file
    named by ``PIPFIX_TEST_PAUSE_RELEASE`` appears. Concurrency tests use it
    to start a second run while the first is provably mid-write.

``configure`` sets the same switches for a process that is already running
(the kill tests fork a warmed-up test process instead of paying for a fresh
interpreter and libcst at every step).
"""

from __future__ import annotations

import os
import signal
import sys
import time

_KILL_ENV = "PIPFIX_TEST_KILL_AT_STEP"
_PAUSE_ENV = "PIPFIX_TEST_PAUSE_AT_STEP"
_PAUSE_SECONDS_ENV = "PIPFIX_TEST_PAUSE_SECONDS"
_PAUSE_RELEASE_ENV = "PIPFIX_TEST_PAUSE_RELEASE"
_TRACE_ENV = "PIPFIX_TEST_TRACE_STEPS"
_DEFAULT_PAUSE_SECONDS = 5.0


def _step_number(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else None


def _seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


_kill_at = _step_number(_KILL_ENV)
_pause_at = _step_number(_PAUSE_ENV)
_pause_seconds = _seconds(_PAUSE_SECONDS_ENV, _DEFAULT_PAUSE_SECONDS)
_pause_release = os.environ.get(_PAUSE_RELEASE_ENV) or None
_trace = bool(os.environ.get(_TRACE_ENV))
_count = 0


def configure(
    *,
    kill_at: int | None = None,
    pause_at: int | None = None,
    pause_seconds: float = _DEFAULT_PAUSE_SECONDS,
    pause_release: str | None = None,
    trace: bool = False,
) -> None:
    """Set the switches directly (tests only) and start counting from zero."""
    global _kill_at, _pause_at, _pause_seconds, _pause_release, _trace, _count
    _kill_at, _pause_at, _trace = kill_at, pause_at, trace
    _pause_seconds, _pause_release = pause_seconds, pause_release
    _count = 0


def _pause(label: str) -> None:
    print(f"pipfix-pause {_count} {label}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + _pause_seconds
    while time.monotonic() < deadline:
        if _pause_release is not None and os.path.exists(_pause_release):
            return
        time.sleep(0.05)


def step(label: str) -> None:
    """Mark one filesystem step (``label`` says which, for debugging)."""
    global _count
    _count += 1
    if _trace:
        print(f"pipfix-step {_count} {label}", file=sys.stderr, flush=True)
    if _pause_at is not None and _count == _pause_at:
        _pause(label)
    if _kill_at is not None and _count >= _kill_at:
        os.kill(os.getpid(), signal.SIGKILL)


def steps_taken() -> int:
    return _count

"""Test-only fault injection: die at the N-th filesystem step.

The hardening tests prove that a run killed at *any* point leaves every file
either as it was or as pipfix's verified output, and that re-running
converges. They set ``PIPFIX_TEST_KILL_AT_STEP=N``; each call to ``step`` is one
filesystem step, and the N-th one kills the process with SIGKILL (no cleanup
handlers run, exactly like a real kill). ``PIPFIX_TEST_TRACE_STEPS=1`` prints
each step to stderr, so a test can count them. Unset, ``step`` only counts.
"""

from __future__ import annotations

import os
import signal
import sys

_ENV = "PIPFIX_TEST_KILL_AT_STEP"
_kill_at = int(os.environ[_ENV]) if os.environ.get(_ENV, "").isdigit() else None
_trace = bool(os.environ.get("PIPFIX_TEST_TRACE_STEPS"))
_count = 0


def step(label: str) -> None:
    """Mark one filesystem step (``label`` says which, for debugging)."""
    global _count
    _count += 1
    if _trace:
        print(f"pipfix-step {_count} {label}", file=sys.stderr)
    if _kill_at is not None and _count >= _kill_at:
        os.kill(os.getpid(), signal.SIGKILL)


def steps_taken() -> int:
    return _count

"""When this process may fork: for the workers of a parallel run (``parallel``)
and for the transform helper of a serial one (``transform_helper``)."""

from __future__ import annotations

import os
import sys
import threading


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def fork_is_safe() -> bool:
    """Linux only (macOS system libraries are not fork-safe: CPython spawns there),
    and no other thread alive (a fork copies their locks, held or not)."""
    return sys.platform.startswith("linux") and threading.active_count() == 1

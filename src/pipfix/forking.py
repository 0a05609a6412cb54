"""When this process may fork: for the workers of a parallel run (``parallel``)
and for the transform helper of a serial one (``transform_helper``).

Light on purpose: the command line decides here, before importing the rest
of pipfix, whether a run will be serial and may start its helper at once.
"""

from __future__ import annotations

import os
import sys
import threading

# Below this many wheels one process is as fast as workers (each worker pays its
# own libcst import, and one process shares identical modules between wheels).
MIN_WHEELS = 6


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), but no more than its
    cgroups' CPU quota allows (``cpu_quota``), at least 1."""
    from .cpu_quota import cpu_quota

    try:
        cpus = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        cpus = max(1, os.cpu_count() or 1)
    quota = cpu_quota() if cpus > 1 else None
    return cpus if quota is None else min(cpus, quota)


def fork_is_safe() -> bool:
    """Linux only (macOS system libraries are not fork-safe: CPython spawns there),
    and no other thread alive (a fork copies their locks, held or not)."""
    return sys.platform.startswith("linux") and threading.active_count() == 1


def planned_workers(wheels: int, jobs: int | None) -> int:
    """Worker processes a run over ``wheels`` wheels asks for (below 2: serial).

    ``jobs``: as given by the user; by default one per usable CPU from
    ``MIN_WHEELS`` wheels on.  The run is serial anyway where forking is not safe.
    """
    wanted = jobs if jobs is not None else usable_cpus() if wheels >= MIN_WHEELS else 1
    return min(wanted, wheels)

"""Which wheel a worker of a parallel run plans next: one project's releases, in
release order, in the same worker.

Consecutive releases of pip or setuptools store most of their members with the
same compressed bytes, and a worker neither inflates nor hashes again a member
stored exactly as in the wheel it verified just before
(``wheelfile.reusing_payloads``).  A process pool hands each task to whichever
worker is free, which deals neighbouring releases out to different workers.
So the wheels are put in order by project and release, that order is cut into
one run of about equal bytes per worker, and each worker takes its own run
from the front; a worker whose run is done takes the last wheel of the longest
run left, so the end of a run is as balanced as a pool's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext


class WorkOrder:
    """The runs of a parallel run's wheels, and which are taken, in memory that the
    workers forked after it share (``fork`` context only: nothing is pickled)."""

    def __init__(self, paths: Sequence[Path], workers: int, context: BaseContext) -> None:
        """Raises OSError where the system has no semaphores that processes share."""
        self.paths = tuple(paths)
        self.context = context
        runs = runs_of(self.paths, workers)
        self._runs = len(runs)
        self._lock = context.Lock()
        self._indices = context.RawArray("i", [index for run in runs for index in run])
        bounds: list[int] = []
        for run in runs:
            start = bounds[-1] if bounds else 0
            bounds += [start, start + len(run)]
        self._bounds = context.RawArray("i", bounds)  # each run's [front, back)
        self._joined = context.RawValue("i", 0)
        self._own = 0  # this worker's run (``join``)

    def join(self) -> None:
        """In a worker, once: the next run no worker owns is this worker's."""
        with self._lock:
            self._own = self._joined.value % self._runs
            self._joined.value += 1

    def claim(self) -> int:
        """The index (in ``paths``) of the wheel this worker plans next.

        A parallel run claims once per wheel, so a claim always finds one."""
        bounds = self._bounds
        with self._lock:
            own = self._own
            if bounds[2 * own] < bounds[2 * own + 1]:
                bounds[2 * own] += 1
                return int(self._indices[bounds[2 * own] - 1])
            longest = max(range(self._runs), key=lambda run: bounds[2 * run + 1] - bounds[2 * run])
            if bounds[2 * longest] == bounds[2 * longest + 1]:
                raise LookupError("every wheel of the run is taken")
            bounds[2 * longest + 1] -= 1
            return int(self._indices[bounds[2 * longest + 1]])


def runs_of(paths: Sequence[Path], workers: int) -> list[list[int]]:
    """Indices of ``paths`` in order by project and release (input order among
    equals, and for names that are not a wheel's), cut into at most ``workers``
    runs of about equal bytes."""
    ordered = sorted(range(len(paths)), key=lambda index: _release_key(paths[index], index))
    sizes = [_size(paths[index]) for index in ordered]
    total = sum(sizes) or 1
    runs: list[list[int]] = [[] for _ in range(max(1, workers))]
    before = 0
    for index, size in zip(ordered, sizes):
        middle = before + size / 2  # the run a wheel goes to is where most of it lies
        runs[min(len(runs) - 1, int(middle * len(runs) / total))].append(index)
        before += size
    return [run for run in runs if run]


def _release_key(path: Path, index: int) -> tuple[object, ...]:
    try:
        name, version, _build, _tags = parse_wheel_filename(path.name)
    except (InvalidWheelFilename, InvalidVersion):
        return (1, index)
    return (0, str(name), version, index)


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0  # planning it reports why

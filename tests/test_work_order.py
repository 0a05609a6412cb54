"""The order in which the workers of a parallel run take their wheels."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from pipfix import work_order
from pipfix.work_order import WorkOrder


def _wheels(directory: Path, sizes: dict[str, int]) -> list[Path]:
    paths = []
    for name, size in sizes.items():
        paths.append(directory / name)
        paths[-1].write_bytes(b"x" * size)
    return paths


def test_runs_follow_projects_and_releases_in_runs_of_about_equal_bytes(tmp_path: Path) -> None:
    """Release order, not the file names' (pip 9 before pip 10), then one cut where
    half the bytes lie."""
    paths = _wheels(tmp_path, {
        "setuptools-65.5.0-py3-none-any.whl": 300,
        "pip-10.0.1-py2.py3-none-any.whl": 400,
        "pip-23.2.1-py3-none-any.whl": 700,
        "pip-9.0.3-py2.py3-none-any.whl": 400,
        "setuptools-41.2.0-py2.py3-none-any.whl": 200,
    })
    assert work_order.runs_of(paths, 2) == [[3, 1], [2, 4, 0]]
    assert work_order.runs_of(paths, 1) == [[3, 1, 2, 4, 0]]


def test_names_that_are_not_wheels_come_last_in_input_order(tmp_path: Path) -> None:
    paths = _wheels(tmp_path, {"b.whl": 10, "pip-24.0-py3-none-any.whl": 10, "a.whl": 10})
    assert work_order.runs_of([*paths, tmp_path / "missing.whl"], 1) == [[1, 0, 2, 3]]


def test_more_workers_than_wheels_leave_no_run_empty(tmp_path: Path) -> None:
    paths = _wheels(tmp_path, {"pip-24.0-py3-none-any.whl": 10, "pip-24.2-py3-none-any.whl": 10})
    assert work_order.runs_of(paths, 4) == [[0], [1]]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the work order is shared by fork")
def test_a_worker_takes_its_run_from_the_front_then_the_longest_other_from_the_back(
    tmp_path: Path,
) -> None:
    """Two workers: the first to join owns the first run; the second (a forked
    child) takes one wheel of its own run; the first then takes the rest of its
    own run in order, then the second run's wheels from its end."""
    sizes = {f"pip-{minor}.0-py3-none-any.whl": 100 for minor in range(20, 28)}
    paths = _wheels(tmp_path, sizes)
    order = WorkOrder(paths, 2, multiprocessing.get_context("fork"))
    order.join()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the second worker
        try:
            order.join()
            os.write(write_end, bytes([order.claim()]))
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    taken_by_the_second = list(os.read(read_end, 16))
    os.close(read_end)
    taken_by_the_first = [order.claim() for _ in range(7)]
    assert taken_by_the_second == [4]
    assert taken_by_the_first == [0, 1, 2, 3, 7, 6, 5]
    with pytest.raises(LookupError):
        order.claim()

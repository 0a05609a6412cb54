"""Many wheels on several CPUs: the same plans, bytes and errors as one at a time."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

from pipfix import parallel, patcher
from pipfix.errors import PipfixError, VerificationError

from conftest import pipfix

NAMES = (
    "pip-20.0.2-py2.py3-none-any.whl",
    "pip-23.2.1-py3-none-any.whl",
    "setuptools-65.5.0-py3-none-any.whl",
    "pip-26.3-py3-none-any.whl",
)


@pytest.fixture
def wheels(pinned_wheels: dict[str, Path], tmp_path: Path) -> list[Path]:
    paths = []
    for name in NAMES:
        paths.append(tmp_path / name)
        shutil.copyfile(pinned_wheels[name], paths[-1])
    return paths


def _forks_here() -> None:
    assert parallel._fork_is_safe(), "the parallel path would not be taken in this process"


def test_parallel_plans_equal_serial_plans(wheels: list[Path]) -> None:
    _forks_here()
    together = parallel.plan_all(wheels, jobs=2)
    for path, plan in zip(wheels, together):
        alone = patcher.plan(path)
        assert plan.wheel.path == path
        assert (plan.state, plan.changes, plan.unpatchable, plan.existing) == (
            alone.state, alone.changes, alone.unpatchable, alone.existing
        )
        assert (plan.wheel.sha256, plan.wheel.data) == (alone.wheel.sha256, alone.wheel.data)
        if plan.state is patcher.WheelState.NEEDS_PATCH:
            assert plan.build() == alone.build()


def test_first_error_in_input_order_is_raised(wheels: list[Path]) -> None:
    _forks_here()
    wheels[2].write_bytes(wheels[2].read_bytes()[:-100])  # truncated: no end record
    wheels[3].write_bytes(b"not a zip")
    with pytest.raises(VerificationError) as serial:
        [patcher.plan(path) for path in wheels]
    with pytest.raises(VerificationError) as together:
        parallel.plan_all(wheels, jobs=2)
    assert str(together.value) == str(serial.value)
    assert together.value.path == wheels[2]


def test_errors_survive_the_trip_from_a_worker() -> None:
    error = VerificationError(Path("/x/y.whl"), "RECORD is missing")
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is VerificationError and isinstance(back, PipfixError)
    assert (back.path, back.reason, str(back), back.exit_code) == (
        error.path, error.reason, str(error), error.exit_code
    )


def test_jobs_do_not_change_the_output(wheels: list[Path], tmp_path: Path) -> None:
    outputs = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"out-{jobs}"
        out.mkdir()
        run = pipfix("patch-wheel", "--no-cache", "-j", jobs, "-o", str(out), *map(str, wheels))
        assert run.returncode == 0, run.stderr
        outputs[jobs] = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    assert outputs["1"] == outputs["2"]
    assert sorted(outputs["1"]) == sorted(NAMES)  # nothing else left in the output directory


def test_jobs_must_be_positive(wheels: list[Path], tmp_path: Path) -> None:
    run = pipfix("patch-wheel", "-j", "0", "-o", str(tmp_path), str(wheels[0]))
    assert run.returncode == 2 and "must be at least 1" in run.stderr

"""Many wheels on several CPUs: the same plans, bytes and errors as one at a time."""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from pipfix import forking, operations, parallel, patcher, store, transform_server
from pipfix.codemods import engine, screen
from pipfix.codemods.model import SourceResult
from pipfix.errors import PipfixError, VerificationError
from pipfix.shared_results import SharedResults

from conftest import IN_CI, SRC, clean_env, pipfix
from conftest import run as run_command

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
    assert forking.fork_is_safe(), "the parallel path would not be taken in this process"


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


def test_outputs_only_runs_get_no_input_bytes_back_for_wheels_to_patch(
    wheels: list[Path],
) -> None:
    """``inputs_needed=False`` (patch-wheel -o): a worker sends a wheel to patch back
    with its verified output but not its input bytes; the others keep theirs."""
    _forks_here()
    patched = wheels[0].parent / "patched" / wheels[0].name
    patched.parent.mkdir()
    patched.write_bytes(patcher.plan(wheels[0]).build())
    paths = [*wheels, patched]
    together = parallel.plan_all(paths, jobs=2, inputs_needed=False)
    states = set()
    for path, plan in zip(paths, together):
        alone = patcher.plan(path)
        states.add(plan.state)
        assert plan.wheel.sha256 == alone.wheel.sha256
        if plan.state is patcher.WheelState.NEEDS_PATCH:
            assert plan.wheel.data == b""
            assert plan.build() == alone.build()
        else:
            assert plan.wheel.data == alone.wheel.data
    assert states == {patcher.WheelState.NEEDS_PATCH, patcher.WheelState.PATCHED}


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


def test_a_run_into_the_same_directory_removes_what_a_killed_run_left_there(
    wheels: list[Path], tmp_path: Path
) -> None:
    """patch-wheel -o killed after writing every output's temporary file, before the
    first rename: nothing is in place, and the next run into that directory
    (under its lock) removes the killed run's files and leaves only the wheels."""
    out = tmp_path / "out"
    out.mkdir()
    command = ("patch-wheel", "--no-cache", "-j", "1", "-o", str(out), *map(str, wheels))
    traced = pipfix(*command, env=clean_env(PYTHONPATH=str(SRC), PIPFIX_TEST_TRACE_STEPS="1"))
    steps = [line.split(" ", 3)[2] for line in traced.stderr.splitlines()]
    assert steps == ["write"] * len(wheels) + ["rename"] * len(wheels), traced.stderr
    written = {p.name: p.read_bytes() for p in out.iterdir()}
    for path in out.iterdir():
        path.unlink()
    killed = pipfix(
        *command,
        env=clean_env(PYTHONPATH=str(SRC), PIPFIX_TEST_KILL_AT_STEP=str(len(wheels) + 1)),
    )
    assert killed.returncode == -9
    assert [p.name for p in out.iterdir()] == [".pipfix"]
    left = sorted(p.name for p in out.rglob("*.whl"))
    assert left == sorted(NAMES)
    again = pipfix(*command)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(NAMES)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == written


@pytest.mark.parametrize("bad", [0, -1], ids=["first", "last"])
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_outputs_prepared_early_are_dropped_when_a_wheel_is_bad(
    wheels: list[Path], tmp_path: Path, jobs: str, bad: int
) -> None:
    """patch-wheel -o writes each output as soon as it is planned (by a worker, ahead
    of the parent), but renames none of them into place unless every input
    verified, and leaves nothing of them behind."""
    wheels[bad].write_bytes(wheels[bad].read_bytes()[:-100])  # truncated: no end record
    out = tmp_path / "out"
    out.mkdir()
    run = pipfix("patch-wheel", "--no-cache", "-j", jobs, "-o", str(out), *map(str, wheels))
    assert run.returncode == 2 and run.stderr.startswith(f"pipfix: error: {wheels[bad]}: ")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("jobs", [1, 2])
def test_outputs_are_written_where_planned_held_one_at_a_time_and_their_renames_synced_at_once(
    wheels: list[Path], tmp_path: Path, jobs: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """patch-wheel -o: the process that plans a wheel writes and verifies its output
    (a worker's output bytes never travel to the parent), drops the bytes once
    written (the file holds them: no process's memory grows with its wheels),
    and the parent makes the renames durable with one fsync of the output
    directory."""
    if jobs > 1:
        _forks_here()
    log = tmp_path / "prepared.log"  # appended to by whichever process prepares
    written: list[patcher.WheelPlan] = []
    prepare_output = operations._prepare_output

    def watched(plan: patcher.WheelPlan, destination: Path) -> store.PreparedReplace:
        held = sum(p._built.data is not None for p in written)
        written.append(plan)
        with log.open("a") as lines:
            lines.write(f"{os.getpid()} {held}\n")
        return prepare_output(plan, destination)

    synced: list[Path] = []
    fsync_directory = store.fsync_directory

    def counted(directory: Path) -> None:
        synced.append(directory)
        fsync_directory(directory)

    planned: list[patcher.WheelPlan] = []
    plan_all = parallel.plan_all

    def kept(*args: object, **kwargs: object) -> list[patcher.WheelPlan]:
        planned.extend(plan_all(*args, **kwargs))  # type: ignore[arg-type]
        return planned

    monkeypatch.setattr(operations, "_prepare_output", watched)
    monkeypatch.setattr(store, "fsync_directory", counted)
    monkeypatch.setattr(parallel, "plan_all", kept)
    out = tmp_path / "out"
    out.mkdir()
    report = operations.patch_wheel(wheels, out, use_cache=False, jobs=jobs)
    preparers = [tuple(map(int, line.split())) for line in log.read_text().splitlines()]
    assert [held for _, held in preparers] == [0] * len(wheels)
    here = [pid == os.getpid() for pid, _ in preparers]
    assert here == [jobs == 1] * len(wheels)
    assert len(planned) == len(wheels)
    assert all(p._built.data is None and p._built.sha256 for p in planned)
    assert synced == [out]
    for plan, wheel_report in zip(planned, report.wheels):
        output = Path(str(wheel_report.output))
        assert hashlib.sha256(output.read_bytes()).hexdigest() == wheel_report.sha256
        assert wheel_report.sha256 == plan.output_sha256()


def test_a_worker_that_writes_its_output_sends_back_a_plan_without_it(
    wheels: list[Path], tmp_path: Path
) -> None:
    """What a worker pickles for the parent when it prepared the output itself: the
    plan and where its verified temporary file lies, not the wheel's megabytes."""
    out = tmp_path / "out"
    out.mkdir()
    prepare = functools.partial(operations._output_into, out)
    plan, prepared = parallel._plan_and_build(wheels[1], False, False, prepare)
    assert prepared is not None and plan._built.data is None
    assert len(pickle.dumps((plan, prepared))) < wheels[1].stat().st_size // 20
    prepared.commit()
    assert hashlib.sha256((out / wheels[1].name).read_bytes()).hexdigest() == (
        plan.output_sha256()
    )
    assert [p.name for p in out.iterdir()] == [wheels[1].name]


def test_outputs_workers_prepared_for_a_failed_run_are_discarded(
    wheels: list[Path], tmp_path: Path
) -> None:
    """The first wheel is bad: the outputs the workers wrote for the others, handed
    to nobody, are dropped once the workers are done, whichever came in first."""
    _forks_here()
    wheels[0].write_bytes(b"not a zip")
    out = tmp_path / "out"
    out.mkdir()
    taken: list[int] = []
    with pytest.raises(VerificationError):
        parallel.plan_all(
            wheels,
            jobs=2,
            on_plan=lambda index, plan, prepared: taken.append(index),
            prepare=functools.partial(operations._output_into, out),
        )
    assert taken == []
    assert [p.relative_to(out) for p in out.rglob("*") if p.name != ".pipfix"] == []


def test_prepare_needs_someone_to_take_what_it_prepared(wheels: list[Path]) -> None:
    with pytest.raises(TypeError):
        parallel.plan_all(
            wheels, jobs=2, prepare=functools.partial(operations._output_into, Path("."))
        )


def test_a_worker_plans_consecutive_releases_one_after_the_other(
    pinned_wheels: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight pip releases on two workers (``work_order``): each worker plans one
    run of consecutive releases, in release order, so it meets most members
    stored as in the wheel it verified just before.  Dealt out in turns, as a
    pool does by itself, each worker would plan every other release."""
    _forks_here()
    releases = ["22.3.1", "23.0.1", "23.2.1", "24.0", "24.2", "24.3.1", "25.0.1", "26.3"]
    names = [next(n for n in pinned_wheels if n.startswith(f"pip-{r}-")) for r in releases]
    paths = []
    for name in reversed(names):  # the input order does not matter
        paths.append(tmp_path / name)
        shutil.copyfile(pinned_wheels[name], paths[-1])
    log = tmp_path / "planned.log"
    plan_and_build = parallel._plan_and_build

    def logged(path: Path, *args: object) -> object:
        with log.open("a") as lines:
            lines.write(f"{os.getpid()} {path.name}\n")
        return plan_and_build(path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(parallel, "_plan_and_build", logged)
    plans = parallel.plan_all(paths, jobs=2)
    assert [plan.wheel.path for plan in plans] == paths
    taken: dict[str, list[int]] = {}
    for line in log.read_text().splitlines():
        pid, name = line.split()
        taken.setdefault(pid, []).append(names.index(name))
    assert len(taken) == 2 and sorted(i for own in taken.values() for i in own) == list(range(8))
    one_after_the_other = sum(
        later == earlier + 1 for own in taken.values() for earlier, later in zip(own, own[1:])
    )
    assert one_after_the_other >= 5  # 6 in two runs of 4; a wheel taken from the other's end: 5


def test_where_processes_cannot_share_semaphores_a_run_over_many_wheels_is_serial(
    wheels: list[Path], tmp_path: Path
) -> None:
    """A read-only /dev/shm (some sandboxes and chroots; a missing one alike): no
    process pool can run there, so a run that would fork workers plans its
    wheels in one process, with the same outputs, instead of failing."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("unshare"):
        if IN_CI:
            pytest.fail("CI needs root and unshare for a mount namespace")
        pytest.skip("needs root and unshare for a mount namespace")
    outputs = {}
    for shm in ("usable", "read-only"):
        out = tmp_path / shm
        out.mkdir()
        command = [sys.executable, "-m", "pipfix", "patch-wheel", "--no-cache", "-j", "2"]
        command += ["-o", str(out), *map(str, wheels)]
        if shm == "read-only":
            mount = 'mount -t tmpfs -o ro,size=1m tmpfs /dev/shm && exec "$@"'
            command = ["unshare", "--mount", "sh", "-c", mount, "sh", *command]
        result = run_command(command, env=clean_env(PYTHONPATH=str(SRC)))
        assert result.returncode == 0, result.stderr
        outputs[shm] = {p.name: p.read_bytes() for p in out.iterdir()}
    assert outputs["read-only"] == outputs["usable"]
    assert sorted(outputs["usable"]) == sorted(NAMES)


def test_jobs_must_be_positive(wheels: list[Path], tmp_path: Path) -> None:
    run = pipfix("patch-wheel", "-j", "0", "-o", str(tmp_path), str(wheels[0]))
    assert run.returncode == 2 and "must be at least 1" in run.stderr


def _four_copies(wheel: Path, directory: Path) -> list[Path]:
    """The same wheel four times, in four directories: every module in every wheel."""
    paths = []
    for copy in "abcd":
        (directory / copy).mkdir()
        paths.append(directory / copy / wheel.name)
        shutil.copyfile(wheel, paths[-1])
    return paths


@pytest.mark.parametrize("server", ["served", "unreachable"])
def test_a_module_in_several_wheels_is_transformed_once(
    server: str, pinned_wheels: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each distinct source goes through the codemods once per run: in the run's
    transform server or, where it cannot start (no Unix socket fits in a
    temporary directory this deep, nor in the short one it then tries), in the
    first worker that needs it, which shares it with the others."""
    _forks_here()
    paths = _four_copies(pinned_wheels["pip-23.2.1-py3-none-any.whl"], tmp_path)
    if server == "unreachable":
        deep = tmp_path / ("d" * 100)
        deep.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(deep))
        monkeypatch.setattr(transform_server, "_SHORT_TEMPORARY", str(deep))
    log = tmp_path / "transformed"
    transform_source = engine.transform_source

    def logged(
        path: str, source: bytes, in_scope: object = None, parsed: object = None
    ) -> SourceResult:  # runs in the server, or in the workers
        with log.open("a") as out:
            out.write(f"{os.getpid()} {hashlib.sha256(source).hexdigest()}\n")
        return transform_source(path, source, in_scope, parsed)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "transform_source", logged)
    monkeypatch.setattr(patcher, "_CACHE", patcher._TransformCache())  # forget earlier tests'
    plans = parallel.plan_all(paths, jobs=2)
    pids, transformed = zip(*(line.split() for line in log.read_text().splitlines()))
    assert transformed and len(transformed) == len(set(transformed))
    assert len(set(pids)) == 1 if server == "served" else len(set(pids)) >= 1
    assert os.getpid() not in map(int, pids)
    assert {plan.changes for plan in plans} == {patcher.plan(paths[0]).changes}


def test_the_workers_screen_a_module_in_several_wheels_once(
    pinned_wheels: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``ast`` screen of a candidate the transform server does not look at by
    itself runs in the first worker that meets it; the others take its verdict."""
    _forks_here()
    paths = _four_copies(pinned_wheels["pip-23.2.1-py3-none-any.whl"], tmp_path)
    log = tmp_path / "screened"
    codemods_in_scope = screen.codemods_in_scope

    def logged(source: bytes) -> frozenset[str]:  # runs in the workers
        with log.open("a") as out:
            out.write(f"{os.getpid()} {hashlib.sha256(source).hexdigest()}\n")
        return codemods_in_scope(source)

    monkeypatch.setattr(screen, "codemods_in_scope", logged)
    monkeypatch.setattr(patcher, "_CACHE", patcher._TransformCache())  # forget earlier tests'
    plans = parallel.plan_all(paths, jobs=2)
    screened = [line.split()[1] for line in log.read_text().splitlines()]
    assert screened and len(screened) == len(set(screened))
    assert {plan.changes for plan in plans} == {patcher.plan(paths[0]).changes}


def test_a_shared_result_is_computed_once(tmp_path: Path) -> None:
    computed: list[str] = []

    def compute(value: str) -> str:
        computed.append(value)
        return value

    assert SharedResults(tmp_path).get(b"key", lambda: compute("first")) == "first"
    assert SharedResults(tmp_path).get(b"key", lambda: compute("second")) == "first"
    assert computed == ["first"]


def test_sharing_that_fails_only_costs_work(tmp_path: Path) -> None:
    """Sharing saves work and never fails a run: without its directory, each computes."""
    gone = SharedResults(tmp_path / "removed")
    assert gone.get(b"key", lambda: 1) == 1
    assert gone.get(b"key", lambda: 2) == 2

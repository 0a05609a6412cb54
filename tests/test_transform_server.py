"""The transform server (``transform_server``) makes a parallel run faster, never
different: the workers import no libcst, every failure of it leaves the work to
the workers, it computes each source once and it ends with the process that
started it.  Its answers, its exchange over a socket and the descriptors it
keeps are tested with the serial run's helper (``test_transform_helper``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipfix import parallel, patcher, transform_helper, transform_server

from conftest import IN_CI, SRC, clean_env, run

NAMES = (
    "pip-20.0.2-py2.py3-none-any.whl",
    "pip-23.2.1-py3-none-any.whl",
    "setuptools-65.5.0-py3-none-any.whl",
    "pip-26.3-py3-none-any.whl",
)


@pytest.fixture(autouse=True)
def can_fork() -> None:
    if not transform_helper.may_fork() and not IN_CI:
        pytest.skip("the server needs Linux and a second CPU")


@pytest.fixture
def wheels(pinned_wheels: dict[str, Path]) -> list[Path]:
    return [pinned_wheels[name] for name in NAMES]


def _same_plans(got: list[patcher.WheelPlan], wheels: list[Path]) -> None:
    for plan, path in zip(got, wheels):
        alone = patcher.plan(path)
        assert (plan.state, plan.changes, plan.unpatchable) == (
            alone.state, alone.changes, alone.unpatchable
        )
        if plan.state is patcher.WheelState.NEEDS_PATCH:
            assert plan.build() == alone.build()


_WORKERS_REPORT = (
    "import os, sys\nfrom pathlib import Path\nfrom pipfix import parallel\n"
    "plan_and_build = parallel._plan_and_build\n"
    "def reported(path, use_cache, inputs_needed, prepare):\n"
    "    plan, prepared = plan_and_build(path, use_cache, inputs_needed, prepare)\n"
    "    print('worker', os.getpid(), 'libcst' in sys.modules, plan.state.value, flush=True)\n"
    "    return plan, prepared\n"
    "parallel._plan_and_build = reported\n"
    "plans = parallel.plan_all([Path(p) for p in sys.argv[1:]], jobs=2)\n"
    "print('changed', sum(len(plan.changes) for plan in plans))\n"
)


def test_the_workers_of_a_parallel_run_import_no_libcst(wheels: list[Path]) -> None:
    """In a fresh interpreter: the server imports libcst and transforms; the
    workers (two of them, four wheels to patch) only verify, screen and build."""
    result = run(
        [sys.executable, "-c", _WORKERS_REPORT, *map(str, wheels)],
        env=clean_env(PYTHONPATH=str(SRC)),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    workers = [line.split(maxsplit=3) for line in lines if line.startswith("worker ")]
    assert len(workers) == len(wheels)
    assert {(imported, state) for _, _, imported, state in workers} == {
        ("False", "needs patch")
    }, result.stdout
    changed = sum(len(patcher.plan(path).changes) for path in wheels)
    assert f"changed {changed}" in result.stdout


def test_plans_with_the_server_are_those_of_a_serial_run(
    wheels: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(patcher, "_CACHE", patcher._TransformCache())
    _same_plans(parallel.plan_all(wheels, jobs=2), wheels)


@contextlib.contextmanager
def _early_server(wheels: list[Path]) -> Iterator[transform_server.TransformServer]:
    """The server as the command line starts it, for the parallel run made within."""
    with transform_helper.started_early(wheels, use_cache=False, workers=True):
        server = transform_helper._early
        assert isinstance(server, transform_server.TransformServer)
        yield server
    assert not server.directory.exists()


def test_a_server_that_dies_during_the_run_leaves_the_work_to_the_workers(
    wheels: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed as the first plan comes in: the workers compute what it did not answer."""
    monkeypatch.setattr(patcher, "_CACHE", patcher._TransformCache())
    with _early_server(wheels) as server:

        def kill_the_server(index: int, plan: patcher.WheelPlan, prepared: object) -> None:
            if index == 0:
                os.kill(server.pid, signal.SIGKILL)

        _same_plans(parallel.plan_all(wheels, jobs=2, on_plan=kill_the_server), wheels)


def test_a_server_dead_before_the_run_leaves_the_work_to_the_workers(
    wheels: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(patcher, "_CACHE", patcher._TransformCache())
    with _early_server(wheels) as server:
        os.kill(server.pid, signal.SIGKILL)
        os.waitpid(server.pid, 0)
        _same_plans(parallel.plan_all(wheels, jobs=2), wheels)


def test_the_server_computes_ahead_and_answers_each_job_once(wheels: list[Path]) -> None:
    """In this process: the likely modules of every wheel, each distinct source once."""
    answers = transform_server._Answers(wheels, use_cache=False)
    while answers.ahead_pending:
        answers.compute_ahead()
    likely = {source for found in _likely_each(wheels) for _, source in found}
    assert likely and {source for source, scope in answers._known if scope is None} == likely
    path, source = next(iter(_likely_each(wheels)))[0]
    assert answers.answer(path, source, None) is answers.answer(path, source, None)


def _likely_each(wheels: list[Path]) -> list[list[tuple[str, bytes]]]:
    from pipfix.peek import likely_transforms_each

    return list(likely_transforms_each(wheels, use_cache=False))


_ORPHANED = (
    "import os\nfrom pipfix.transform_server import TransformServer\n"
    "os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # the server's: not this test's pipe\n"
    "server = TransformServer.start()\nprint(server.pid, server.directory, flush=True)\n"
    "os._exit(0)\n"
)


def test_the_server_ends_with_the_process_that_started_it(tmp_path: Path) -> None:
    """That process is gone without stopping it (killed, say): its lifeline ends,
    and the server removes its socket and directory."""
    result = run([sys.executable, "-c", _ORPHANED], env=clean_env(PYTHONPATH=str(SRC)))
    assert result.returncode == 0, result.stderr
    pid_text, directory = result.stdout.split()
    pid = int(pid_text)
    try:
        for _ in range(500):
            if not _running(pid):
                break
            threading.Event().wait(0.01)
        assert not _running(pid)
        assert not Path(directory).exists()
    finally:
        if _running(pid):
            os.kill(pid, signal.SIGKILL)


_KILLED_MID_RUN = (
    "import os, signal, sys\nfrom pathlib import Path\nfrom pipfix import parallel\n"
    "for fd in (1, 2):  # the workers' and the server's: not this test's pipes\n"
    "    os.dup2(os.open(os.devnull, os.O_WRONLY), fd)\n"
    "def killed(index, plan, prepared):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    "parallel.plan_all([Path(p) for p in sys.argv[1:]], jobs=2, on_plan=killed)\n"
)


def test_a_parallel_run_killed_mid_run_leaves_no_process_and_no_file_behind(
    wheels: list[Path], tmp_path: Path
) -> None:
    """SIGKILL as the first plan comes in, the server, the workers and their shared
    results all there: the workers end too (the pool would leave them waiting for
    work forever), and nothing stays in the temporary directory."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    copies = []
    for wheel in wheels:  # under tmp_path: its name marks this run's processes
        copies.append(tmp_path / wheel.name)
        shutil.copyfile(wheel, copies[-1])
    env = clean_env(PYTHONPATH=str(SRC), TMPDIR=str(temporary))
    result = run([sys.executable, "-c", _KILLED_MID_RUN, *map(str, copies)], env=env)
    assert result.returncode == -signal.SIGKILL, result.stderr
    left = _processes_naming(tmp_path)
    try:
        for _ in range(1000):
            left = _processes_naming(tmp_path)
            if not left and not any(temporary.iterdir()):
                break
            threading.Event().wait(0.01)
        assert left == []
        assert list(temporary.iterdir()) == []
    finally:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _processes_naming(path: Path) -> list[int]:
    """Live processes whose command line names ``path``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _running(int(entry.name)):
            with contextlib.suppress(OSError):
                if str(path).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


@pytest.fixture
def deep_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary directory too deep for a Unix socket in it (a CI workspace's)."""
    import tempfile

    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    yield deep
    assert list(deep.iterdir()) == []  # nothing of the server's is left there
    shutil.rmtree(deep)


def test_a_socket_too_long_for_the_temporary_directory_is_made_in_tmp(
    deep_temporary: Path,
) -> None:
    server = transform_server.TransformServer.start()
    assert server is not None
    try:
        assert server.directory.parent == Path(transform_server._SHORT_TEMPORARY)
        client = server.join()
        assert client is not None
        client.submit(b"k" * 32, "mod.py", b"x = 1\n", None)
        assert client.result(b"k" * 32) is not None  # it serves
        client.close()
    finally:
        server.close()
    assert not server.directory.exists()


def test_no_server_where_its_socket_fits_nowhere(
    deep_temporary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transform_server, "_SHORT_TEMPORARY", str(deep_temporary))
    assert transform_server.TransformServer.start() is None

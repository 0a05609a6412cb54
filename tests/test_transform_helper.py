"""The forked transform helper (``transform_helper``) makes a serial run faster,
never different: its plans and outputs are those of this process, whatever
happens to it, it holds none of this process's descriptors (locks), it
imports libcst only for wheels whose plan runs the codemods, and the command
line forks it before importing the rest of pipfix.  The exchange and the
descriptors are tested with the transform server too (a socket, not pipes)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipfix import parallel, patcher, transform_helper, transform_server
from pipfix.codemods import could_need_change
from pipfix.codemods.engine import transform_source
from pipfix.codemods.screen import codemods_in_scope

from conftest import IN_CI, SRC, clean_env, run

PIP, SETUPTOOLS = "pip-23.2.1-py3-none-any.whl", "setuptools-65.5.0-py3-none-any.whl"


@pytest.fixture(autouse=True)
def can_fork() -> None:
    if not transform_helper.may_fork() and not IN_CI:
        pytest.skip("the helper needs Linux and a second CPU")


@pytest.fixture
def fresh_transforms(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An empty transform cache, so that this process has computed nothing yet."""
    monkeypatch.setattr(patcher, "_CACHE", patcher._TransformCache())
    yield


@dataclass
class Channel:
    """A client of a helper: the serial run's (pipes) or the transform server's (a socket)."""

    client: transform_helper.TransformHelper
    pid: int  # the helper's
    descriptors: int  # that the helper keeps but 0-2, once it serves this client


@pytest.fixture(params=["pipes", "socket"])
def helper(request: pytest.FixtureRequest) -> Iterator[Channel]:
    """Each test taking it runs with both: the exchange is the same code."""
    if request.param == "pipes":
        started = transform_helper.TransformHelper.start()
        assert started is not None
        pid = started.pid
        yield Channel(started, pid, len(started.pipe_ends))
        started.close()
    else:
        server = transform_server.TransformServer.start()
        assert server is not None
        pid = server.pid
        client = server.join()
        assert client is not None
        yield Channel(client, pid, 3)  # its listener, its lifeline, this client
        client.close()
        server.close()
        assert not server.directory.exists()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped


def _job(source: bytes) -> tuple[bytes, str, bytes, frozenset[str]]:
    return hashlib.sha256(source).digest(), "mod.py", source, codemods_in_scope(source)


def _glibc_module(pinned_wheels: dict[str, Path]) -> bytes:
    return patcher.plan(pinned_wheels[PIP]).changes[0].before


def test_serial_plans_with_the_helper_are_those_of_this_process(
    pinned_wheels: dict[str, Path], fresh_transforms: None
) -> None:
    paths = [pinned_wheels[name] for name in sorted(pinned_wheels)]
    helped = parallel.plan_all(paths, jobs=1)
    patcher._CACHE = patcher._TransformCache()
    alone = [patcher.plan(path) for path in paths]
    assert [p.state for p in helped] == [p.state for p in alone]
    assert [p.changes for p in helped] == [p.changes for p in alone]
    assert [p.unpatchable for p in helped] == [p.unpatchable for p in alone]
    built = [p.build() for p in helped if p.state is patcher.WheelState.NEEDS_PATCH]
    assert built == [p.build() for p in alone if p.state is patcher.WheelState.NEEDS_PATCH]


def test_a_serial_run_leaves_libcst_to_the_helper(
    pinned_wheels: dict[str, Path], tmp_path: Path
) -> None:
    script = (
        "import sys\nfrom pathlib import Path\nfrom pipfix import parallel\n"
        "plans = parallel.plan_all([Path(p) for p in sys.argv[1:]])\n"
        "print(sorted(c.path for p in plans for c in p.changes), 'libcst' in sys.modules)\n"
    )
    result = run(
        [sys.executable, "-c", script, str(pinned_wheels[PIP]), str(pinned_wheels[SETUPTOOLS])],
        env=clean_env(PYTHONPATH=str(SRC)),
    )
    assert result.returncode == 0, result.stderr
    changed, imported = result.stdout.rsplit(" ", 1)
    assert "pip/_internal/utils/glibc.py" in changed and imported.strip() == "False"


def test_the_run_leaves_the_screen_of_the_likely_modules_to_the_helper(
    pinned_wheels: dict[str, Path], fresh_transforms: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Modules named like those the helper looks for are sent unscreened (the helper
    screened them already); every other candidate is screened here."""
    from pipfix import peek
    from pipfix.codemods import screen

    screened: list[bytes] = []
    real = screen.codemods_in_scope

    def recording(source: bytes) -> frozenset[str]:
        screened.append(source)
        return real(source)

    monkeypatch.setattr(screen, "codemods_in_scope", recording)
    plan = parallel.plan_all([pinned_wheels[PIP]], jobs=1)[0]
    assert [c.path for c in plan.changes] == [
        "pip/_internal/utils/glibc.py", "pip/_vendor/packaging/_manylinux.py"
    ]
    candidates = {
        name: source
        for name, source in plan.wheel.contents.items()
        if name.endswith(".py") and could_need_change(source)
    }
    likely = {n for n in candidates if peek.is_likely(n)}
    assert likely == {c.path for c in plan.changes}
    assert sorted(screened) == sorted(s for n, s in candidates.items() if n not in likely)


def test_a_dead_helper_leaves_the_work_to_this_process(
    pinned_wheels: dict[str, Path], fresh_transforms: None
) -> None:
    expected = patcher.plan(pinned_wheels[PIP])
    patcher._CACHE = patcher._TransformCache()
    with patcher.transforms_in_a_helper():
        finish = patcher.start_plan(pinned_wheels[PIP])
        started = patcher._CACHE._helper
        assert started is not None
        os.kill(started.pid, signal.SIGKILL)
        plan = finish()
    assert plan.changes == expected.changes and plan.build() == expected.build()


def test_answers_match_the_engine_and_a_failing_job_is_answered_none(
    pinned_wheels: dict[str, Path], helper: Channel
) -> None:
    source = _glibc_module(pinned_wheels)
    key, path, _, in_scope = _job(source)
    helper.client.submit(b"broken", path, None, in_scope)  # type: ignore[arg-type]
    helper.client.submit(key, path, source, in_scope)
    assert helper.client.result(b"broken") is None  # the caller computes it, meets the error
    assert helper.client.result(key) == transform_source(path, source, in_scope)
    assert helper.client.result(b"never submitted") is None


class Hang(Exception):
    """Not an OSError: the code under test handles those."""


@pytest.fixture
def deadline() -> Iterator[None]:
    """A hang fails the test after a minute instead of stopping the suite."""

    def expired(signum: int, frame: object) -> None:
        raise Hang("the helper exchange hangs")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_large_jobs_and_answers_do_not_block_either_side(
    helper: Channel, deadline: None
) -> None:
    # Each answer holds its source again: 64 x 256 KiB fills both ways many times over.
    sources = [b"x = %d\n" % i * 40000 for i in range(64)]
    keys = [hashlib.sha256(s).digest() for s in sources]
    for key, source in zip(keys, sources):
        helper.client.submit(key, "big.py", source, frozenset({"ctypes-import"}))
    for key, source in zip(keys, sources):
        answer = helper.client.result(key)
        assert answer is not None and answer.source == source


@pytest.fixture
def held_lock(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A file this process holds an exclusive ``flock`` on (taken before the helper starts)."""
    lock_file = tmp_path / "lock"
    held = os.open(lock_file, os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    yield lock_file, held
    with contextlib.suppress(OSError):
        os.close(held)


@pytest.fixture(params=["/proc", "no /proc"])
def descriptor_listing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """As it is, or as in a chroot or sandbox without /proc: there the helper's
    listing of its descriptors fails (it runs this process's ``os.listdir``,
    patched here before the fork; this process still lists the helper's)."""
    if request.param == "/proc":
        return
    listdir = os.listdir

    def without_proc(path: str = ".") -> list[str]:
        if str(path).startswith("/proc/self"):
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return listdir(path)

    monkeypatch.setattr(os, "listdir", without_proc)


def test_the_helper_holds_no_descriptor_of_this_process(
    held_lock: tuple[Path, int],
    descriptor_listing: None,
    helper: Channel,
    pinned_wheels: dict[str, Path],
) -> None:
    lock_file, held = held_lock
    source = _glibc_module(pinned_wheels)
    key, path, _, in_scope = _job(source)
    helper.client.submit(key, path, source, in_scope)
    assert helper.client.result(key) is not None  # the helper is past its set-up
    kept = sorted(int(fd) for fd in os.listdir(f"/proc/{helper.pid}/fd"))
    assert kept[:3] == [0, 1, 2] and len(kept) == 3 + helper.descriptors, kept
    os.close(held)  # releases the lock: no copy of the descriptor holds it
    again = os.open(lock_file, os.O_RDWR)
    try:
        fcntl.flock(again, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(again)


@pytest.mark.parametrize("descriptor_listing", ["no /proc"], indirect=True)
def test_without_proc_a_helper_that_would_close_descriptors_one_by_one_ends(
    descriptor_listing: None, monkeypatch: pytest.MonkeyPatch, pinned_wheels: dict[str, Path]
) -> None:
    """As on CPython 3.9 (no ``close_range``) with more descriptors allowed than
    it closes quickly one by one: the helper ends at once, this process does the work."""
    monkeypatch.setattr(transform_helper, "_CLOSES_RANGES", False)
    monkeypatch.setattr(transform_helper, "_ONE_BY_ONE_UP_TO", 2)
    started = transform_helper.TransformHelper.start()
    assert started is not None
    try:
        source = _glibc_module(pinned_wheels)
        key, path, _, in_scope = _job(source)
        started.submit(key, path, source, in_scope)
        assert started.result(key) is None  # gone: the caller computes it
    finally:
        started.close()


@pytest.mark.parametrize(
    "kind", [transform_helper.TransformHelper, transform_server.TransformServer]
)
def test_no_helper_while_another_thread_runs(kind: type) -> None:
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert not transform_helper.may_fork()
        assert kind.start() is None
    finally:
        stop.set()
        other.join()


@pytest.mark.parametrize("case", ["patched", "cached"])
def test_runs_that_need_no_codemod_import_no_libcst(
    case: str, pinned_wheels: dict[str, Path], tmp_path: Path
) -> None:
    """Checked with the wheel verified in full (no seal).  The helper's
    ``-X importtime`` lines go to this process's standard error."""
    wheel = tmp_path / PIP
    wheel.write_bytes(pinned_wheels[PIP].read_bytes())
    cache = tmp_path / "cache"
    env = clean_env(PYTHONPATH=str(SRC), XDG_CACHE_HOME=str(cache))
    out = tmp_path / "out"
    out.mkdir()
    command = [sys.executable, "-X", "importtime", "-m", "pipfix", "patch-wheel", "-q"]
    first = run([*command, str(wheel), "-o", str(out)], env=env)
    assert first.returncode == 0 and "libcst" in first.stderr, first.stderr[-2000:]
    shutil.rmtree(cache / "pipfix" / "verified-v1")
    again = tmp_path / "again"
    again.mkdir()
    if case == "patched":
        second = run([*command, "--no-cache", str(out / PIP), "-o", str(again)], env=env)
    else:
        second = run([*command, str(wheel), "-o", str(again)], env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "libcst" not in second.stderr


_RECORD_STARTS = (
    "import sys\nfrom pipfix import cli, transform_helper, transform_server\n"
    "def recording(kind, start):\n"
    "    def recorded(cls, looking_at=(), use_cache=False):\n"
    "        print('start', kind,\n"
    "              sorted(m for m in ('argparse', 'pipfix.operations', 'hashlib', 'pickle')\n"
    "                     if m in sys.modules),\n"
    "              [str(p) for p in looking_at], use_cache)\n"
    "        return start(cls, looking_at, use_cache)\n"
    "    return classmethod(recorded)\n"
    "for kind, cls in (('helper', transform_helper.TransformHelper),\n"
    "                  ('server', transform_server.TransformServer)):\n"
    "    cls.start = recording(kind, cls.start.__func__)\n"
    "sys.exit(cli.main(sys.argv[1:]))\n"
)


@pytest.mark.parametrize(
    ("jobs", "expected"),
    [
        ([], ["helper"]),  # two wheels: serial by default
        (["-j", "1"], ["helper"]),
        (["--jobs=1"], ["helper"]),
        (["-j2"], ["server"]),
        (["--job", "2"], ["helper", "server"]),  # argparse's abbreviation: read as serial
    ],
)
def test_the_command_line_forks_the_helper_before_parsing_its_arguments(
    jobs: list[str], expected: list[str], pinned_wheels: dict[str, Path], tmp_path: Path
) -> None:
    """A serial run starts one helper, a run with workers one server, looking at
    its wheels, before argparse, ``operations``, hashlib or pickle is imported
    (neither needs them on the way to its answers).  A command line read as
    serial but parsed as not has its helper stopped and the run starts a server
    (later, and runs as it would have)."""
    wheels = [str(pinned_wheels[PIP]), str(pinned_wheels[SETUPTOOLS])]
    command = [sys.executable, "-c", _RECORD_STARTS, "patch-wheel", "-q", "--no-cache"]
    result = run(
        [*command, *jobs, *wheels, "-o", str(tmp_path)], env=clean_env(PYTHONPATH=str(SRC))
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [PIP, SETUPTOOLS]
    starts = [line for line in result.stdout.splitlines() if line.startswith("start ")]
    assert [line.split()[1] for line in starts] == expected, result.stdout
    assert starts[0] == f"start {expected[0]} [] {wheels!r} False", result.stdout


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["patch-wheel", "a.whl", "-o", "out"], (["a.whl"], True, False)),
        (["patch-wheel", "--no-cache", "a.whl", "b.whl", "--in-place"],
         (["a.whl", "b.whl"], False, False)),
        (["patch-wheel", "-j", "1", *[f"{n}.whl" for n in "abcdefgh"], "-o", "out"],
         ([f"{n}.whl" for n in "abcdefgh"], True, False)),
        (["patch-wheel", "-j", "2", "a.whl", "b.whl", "-o", "out"],
         (["a.whl", "b.whl"], True, True)),
        (["patch-wheel", "--jobs", "x", "a.whl"], None),
        (["patch-wheel", "--help"], None),
        (["patch-wheel", "-o", "out"], None),
        (["patch-wheel", "--", "-a.whl"], None),
        (["check", "a.whl"], None),
        ([], None),
    ],
)
def test_the_command_line_read_before_argparse(
    arguments: list[str],
    expected: tuple[list[str], bool, bool] | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the head start reads; eight wheels would run workers by default."""
    from pipfix import cli, forking

    monkeypatch.setattr(forking, "usable_cpus", lambda: 2)
    found = cli._early_patch_wheel(arguments)
    assert found == (None if expected is None else ([Path(w) for w in expected[0]], *expected[1:]))
    if expected is None or len(expected[0]) < 8:
        return
    by_default = cli._early_patch_wheel([a for a in arguments if a not in ("-j", "1")])
    assert by_default is not None and by_default[2]


def _gone(pid: int) -> bool:
    """The child ``pid`` has ended, and is still there to be reaped (not waited for)."""
    for _ in range(500):
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        threading.Event().wait(0.01)
    return False


def test_an_early_helper_serves_the_run_or_is_stopped(
    pinned_wheels: dict[str, Path], fresh_transforms: None
) -> None:
    wheel = pinned_wheels[PIP]
    with transform_helper.started_early([wheel], use_cache=False, workers=False):
        early = transform_helper._early
        assert early is not None
        pid = early.pid
        helped = parallel.plan_all([wheel], jobs=1)
        assert transform_helper.take_early() is None  # the run took it and stopped it ...
        assert _gone(pid)  # ... without reaping it
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # the end of the block did
    patcher._CACHE = patcher._TransformCache()
    alone = patcher.plan(wheel)
    assert helped[0].changes == alone.changes and helped[0].build() == alone.build()

    with transform_helper.started_early([wheel], use_cache=False, workers=False):
        unused = transform_helper._early
        assert unused is not None
        pid = unused.pid
        os.kill(pid, 0)  # alive
    assert transform_helper._early is None
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # stopped and reaped at the end of the block


@pytest.mark.parametrize("started_for_workers", [True, False])
def test_an_early_helper_of_the_other_kind_is_stopped_by_the_run(
    started_for_workers: bool, pinned_wheels: dict[str, Path], fresh_transforms: None
) -> None:
    """The command line guessed wrong: a serial run stops the server started for
    workers (and forks its own helper), a run with workers stops the serial
    helper (and forks its own server); both are reaped when the command is done."""
    wheels = [pinned_wheels[PIP], pinned_wheels[SETUPTOOLS]]
    with transform_helper.started_early(wheels, use_cache=False, workers=started_for_workers):
        early = transform_helper._early
        assert early is not None
        pid = early.pid
        plans = parallel.plan_all(wheels, jobs=1 if started_for_workers else 2)
        assert transform_helper._early is None
        assert _gone(pid)
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    patcher._CACHE = patcher._TransformCache()
    for plan, wheel in zip(plans, wheels):
        alone = patcher.plan(wheel)
        assert plan.changes == alone.changes and plan.build() == alone.build()

"""The target runs once per reinstall (``scheme.TargetSession``): it reports its
install paths, then compiles each batch of changed modules it is sent; a target
that hangs, fails or does not exist counts as not running, and nothing waits
on it for longer than the timeout."""

from __future__ import annotations

import marshal
import sys
import sysconfig
import time
from pathlib import Path

from pipfix import scheme


def _scheme_for(interpreter: Path) -> scheme.InstallScheme:
    """The running interpreter's own paths, as pipfix would compute them."""
    paths = {k: Path(v) for k, v in sysconfig.get_paths().items()}
    return scheme.InstallScheme(
        f"{sys.version_info[0]}.{sys.version_info[1]}",
        paths["purelib"],
        paths["platlib"],
        paths["scripts"],
        paths["data"],
        paths["include"],
        interpreter,
    )


def _logging_interpreter(tmp_path: Path) -> tuple[Path, Path]:
    """A target that notes each start in a log, then is the real interpreter."""
    log = tmp_path / "starts.log"
    wrapper = tmp_path / "python-target"
    wrapper.write_text(f'#!/bin/sh\necho start >> "{log}"\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, log


def _cached_filename(source: Path) -> str:
    (cache,) = (source.parent / "__pycache__").glob(f"{source.stem}.*.pyc")
    return str(marshal.loads(cache.read_bytes()[16:]).co_filename)


def test_one_run_confirms_the_paths_and_compiles_every_batch(tmp_path: Path) -> None:
    interpreter, log = _logging_interpreter(tmp_path)
    session = scheme.TargetSession(_scheme_for(interpreter))
    try:
        assert session.scheme().source == scheme.CONFIRMED
        assert session.runs
        staged = tmp_path / "stage"
        staged.mkdir()
        first, second, broken = (staged / n for n in ("first.py", "second.py", "broken.py"))
        first.write_text("X = 1\n")
        second.write_text("Y = 2\n")
        broken.write_text("def f(:\n")
        final = Path("/opt/site-packages/pkg")
        started = [
            session.start_compiling([(broken, final / broken.name)]),
            session.start_compiling([(first, final / first.name)]),
            session.start_compiling([(second, final / second.name)]),
        ]
        # Answers are read in any order, each job gets its own.
        assert [done() for done in reversed(started)] == [True, True, False]
        assert [done() for done in started] == [False, True, True]
    finally:
        session.close()
    assert _cached_filename(first) == str(final / "first.py")  # the path it will run from
    assert _cached_filename(second) == str(final / "second.py")
    assert log.read_text().splitlines() == ["start"]


def test_a_target_that_does_not_answer_counts_as_not_running(tmp_path: Path) -> None:
    hanging = tmp_path / "python-hangs"
    hanging.write_text("#!/bin/sh\nexec sleep 30\n")
    hanging.chmod(0o755)
    computed = _scheme_for(hanging)
    session = scheme.TargetSession(computed, timeout=0.5)
    began = time.monotonic()
    try:
        assert session.scheme() == computed  # the computed paths, source "computed"
        assert not session.runs
        source = tmp_path / "m.py"
        source.write_text("X = 1\n")
        assert session.start_compiling([(source, Path("/x/m.py"))])() is False
    finally:
        session.close()
    assert time.monotonic() - began < 10  # killed, not waited for


def test_a_failing_or_missing_target_counts_as_not_running(tmp_path: Path) -> None:
    failing = tmp_path / "python-fails"
    failing.write_text("#!/bin/sh\necho garbage\nexit 1\n")
    failing.chmod(0o755)
    for interpreter in (failing, tmp_path / "missing-python"):
        computed = _scheme_for(interpreter)
        session = scheme.TargetSession(computed)
        try:
            assert session.scheme() == computed
            assert not session.runs
            assert session.start_compiling([])() is True  # nothing to compile
        finally:
            session.close()
            session.close()  # closing twice is harmless

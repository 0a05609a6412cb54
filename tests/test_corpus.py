"""Hostile and malformed wheels (``badwheels``) are refused, whatever the command.

Each case goes through ``pipfix patch-wheel --in-place`` (the wheel alone in a
directory) and ``pipfix apply`` (the wheel as the only wheel of a prefix's
``ensurepip/_bundled``), as real processes, at the same time. Both must:

* end with the case's documented exit code: 2 when the wheel does not verify,
  3 when it verifies but a module that must be patched cannot be (see
  ``badwheels``);
* say why in one line that names the file and gives the exact reason: on
  stderr as ``pipfix: error: <wheel>: <reason>`` (exit 2), or on stdout as
  ``<dist> <version> (...): not written [<member>:<line>: <reason>]`` (exit 3);
* print no traceback;
* change no byte on disk. A run that ends with exit 3 got as far as taking the
  target's lock, so ``.pipfix/lock`` may appear (empty); nothing else.

Zip bombs are also refused quickly and in little memory: the peak RSS of a
fresh ``pipfix`` process is measured by ``getrusage(RUSAGE_CHILDREN)`` in a
wrapper process of its own.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from badwheels import BASE, Case, all_cases, base_bytes, bomb_wheel
from conftest import SRC, clean_env, tree_digest
from standalone import make_standalone_prefix

CASES = {case.kind: case for case in all_cases()}


def _popen(*args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipfix", *map(str, args)],
        env=clean_env(PYTHONPATH=str(SRC)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=120)
    return process.returncode, stdout, stderr


@pytest.fixture(scope="module")
def empty_prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A standalone-like prefix whose ensurepip bundles no wheel (yet)."""
    prefix = tmp_path_factory.mktemp("corpus") / "prefix"
    make_standalone_prefix(Path(sys.executable), prefix, "B")
    for wheel in prefix.glob("lib/python3.*/ensurepip/_bundled/*.whl"):
        wheel.unlink()
    return prefix


def _unchanged_but_lock(before: dict[str, str], after: dict[str, str], case: Case) -> None:
    """Nothing changed; a run that got as far as its lock (exit 3) may have left it."""
    added = {k: v for k, v in after.items() if k not in before}
    if case.exit_code == 3:
        locks = {
            k for k in added if k.rsplit("/", 1)[-1] == ".pipfix" or k.endswith(".pipfix/lock")
        }
        assert set(added) == locks, added
        after = {k: v for k, v in after.items() if k not in added}
    assert after == before


def _check_output(case: Case, wheel: Path, kind: str, result: tuple[int, str, str]) -> None:
    code, stdout, stderr = result
    assert code == case.exit_code, (code, stdout, stderr)
    assert "Traceback" not in stdout + stderr
    if case.exit_code == 2:
        assert stdout == ""
        assert stderr.splitlines() == [f"pipfix: error: {wheel}: {case.reason}"]
    else:
        assert stderr == ""
        assert stdout.splitlines() == [
            f"pip 23.2.1 ({kind}): not written [{case.reason}]",
            "1 not written",
        ]


@pytest.mark.parametrize("kind", CASES)
def test_bad_wheel_is_refused_without_changing_a_byte(
    kind: str, empty_prefix: Path, tmp_path: Path
) -> None:
    case = CASES[kind]
    loose = tmp_path / "loose"
    loose.mkdir()
    wheel = loose / case.filename
    wheel.write_bytes(case.data)
    prefix = tmp_path / "prefix"
    shutil.copytree(empty_prefix, prefix, symlinks=True)
    bundled = next(prefix.glob("lib/python3.*/ensurepip/_bundled")) / case.filename
    bundled.write_bytes(case.data)
    loose_before, prefix_before = tree_digest(loose), tree_digest(prefix)

    patching = _popen("patch-wheel", "--in-place", wheel)
    applying = _popen("apply", prefix)
    _check_output(case, wheel, "wheel", _finish(patching))
    _check_output(case, bundled, "ensurepip wheel", _finish(applying))

    _unchanged_but_lock(loose_before, tree_digest(loose), case)
    _unchanged_but_lock(prefix_before, tree_digest(prefix), case)


def test_corpus_covers_the_required_kinds() -> None:
    required = {
        "truncated",
        "bad-crc",
        "member-does-not-match-record",
        "member-missing-from-record",
        "record-lists-missing-file",
        "no-record",
        "record-md5",
        "record-sha1",
        "record-row-two-fields",
        "absolute-path",
        "dotdot-traversal",
        "backslash-path",
        "duplicate-member",
        "symlink-member",
        "zip-bomb-honest",
        "zip-bomb-declared",
        "zip-bomb-lying-size",
        "name-not-utf8-legacy",
        "name-not-utf8-flagged",
        "glibc-module-not-python",
        "dist-info-does-not-match-file-name",
    }
    assert required <= set(CASES)
    assert any(kind.startswith("bad-file-name:") for kind in CASES)
    assert len(CASES) >= 15
    assert {case.exit_code for case in CASES.values()} == {2, 3}


_MEASURE = """
import json, resource, subprocess, sys, time
started = time.monotonic()
result = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({
    "code": result.returncode, "stderr": result.stderr,
    "seconds": time.monotonic() - started,
    "max_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
}))
"""


def _measured(*args: str | Path) -> dict[str, object]:
    """Run pipfix from a fresh wrapper: its RUSAGE_CHILDREN peak is pipfix's alone."""
    wrapper = subprocess.run(
        [sys.executable, "-c", _MEASURE, sys.executable, "-m", "pipfix", *map(str, args)],
        env=clean_env(PYTHONPATH=str(SRC)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert wrapper.returncode == 0, wrapper.stderr
    measured: dict[str, object] = json.loads(wrapper.stdout)
    return measured


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: bomb_wheel(400 * 2**20), id="400MiB-honestly-declared"),
        pytest.param(
            lambda: (CASES["zip-bomb-declared"].data, CASES["zip-bomb-declared"].reason),
            id="3GiB-declared",
        ),
        pytest.param(
            lambda: (CASES["zip-bomb-lying-size"].data, CASES["zip-bomb-lying-size"].reason),
            id="256MiB-declared-as-1000-bytes",
        ),
    ],
)
def test_zip_bomb_is_refused_quickly_in_little_memory(
    make: Callable[[], tuple[bytes, str]], tmp_path: Path
) -> None:
    data, reason = make()
    wheel = tmp_path / BASE
    wheel.write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    bomb = _measured("patch-wheel", "-o", out, wheel)
    assert bomb["code"] == 2, bomb
    assert bomb["stderr"] == f"pipfix: error: {wheel}: {reason}\n"
    assert list(out.iterdir()) == []
    # The good wheel the bomb was added to, patched (libcst and all), for scale.
    good = tmp_path / "good"
    good.mkdir()
    (good / BASE).write_bytes(base_bytes())
    normal = _measured("patch-wheel", "-o", out, good / BASE)
    assert normal["code"] == 0, normal
    print(
        f"bomb: {bomb['max_rss_mib']:.0f} MiB, {bomb['seconds']:.2f} s; "
        f"patching the real wheel: {normal['max_rss_mib']:.0f} MiB, {normal['seconds']:.2f} s"
    )
    assert float(bomb["max_rss_mib"]) < 150  # decompressing would take 256 MiB or more
    assert float(bomb["max_rss_mib"]) <= float(normal["max_rss_mib"]) + 20
    assert float(bomb["seconds"]) < 15

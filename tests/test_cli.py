"""The command line as users meet it: this machine's interpreter, --json, -q, the
version, list-patches, patch-wheel, and no libcst import when nothing needs patching."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from pipfix import __version__

from conftest import SRC, clean_env, pipfix, run

BASE = Path(sys.base_prefix)


def _hardlink_copy(source: Path, target: Path) -> None:
    """A cheap copy of a whole installation: pipfix only ever renames over files."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, symlinks=True, copy_function=link)


@pytest.fixture(scope="module")
def base_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("base") / "python"
    _hardlink_copy(BASE, target)
    return target


def test_check_on_the_running_interpreter() -> None:
    result = pipfix("check", "--json")
    report = json.loads(result.stdout)
    assert report["targets"] == [str(BASE)]
    needs = {w["distribution"] for w in report["wheels"] if w["state"] == "needs patch"}
    assert result.returncode == (1 if needs else 0)
    if sys.version_info[:2] == (3, 11):
        # This machine's default interpreter bundles pip 23.2.1 and setuptools 65.5.0.
        assert {(w["distribution"], w["version"]) for w in report["wheels"]} >= {
            ("pip", "23.2.1"),
            ("setuptools", "65.5.0"),
        }
        assert needs == {"pip", "setuptools"}
        assert result.returncode == 1


def test_apply_on_a_copy_of_the_running_interpreter(base_copy: Path) -> None:
    before = pipfix("check", base_copy)
    assert before.returncode == 1, before.stdout + before.stderr
    applied = pipfix("apply", base_copy)
    assert applied.returncode == 0, applied.stderr
    after = pipfix("check", base_copy)
    assert after.returncode == 0, after.stdout
    # The original installation was not touched (hard links were renamed over, never written).
    assert pipfix("check").returncode == before.returncode
    version = run([base_copy / "bin" / "python3", "-m", "pip", "--version"])
    assert version.returncode == 0 and str(base_copy) in version.stdout, version.stderr


def test_nothing_to_patch_never_imports_libcst(
    base_copy: Path, tmp_path: Path, pinned_wheels
) -> None:
    assert pipfix("apply", base_copy).returncode == 0  # idempotent: already patched is fine
    for args in (["check", str(base_copy)], ["apply", str(base_copy)]):
        result = run(
            [sys.executable, "-X", "importtime", "-m", "pipfix", *args],
            env=clean_env(PYTHONPATH=str(SRC)),
        )
        assert result.returncode == 0, result.stderr
        imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
        assert "pipfix" in imported and not any(m.startswith("libcst") for m in imported), args
    # ... and a run that has something to patch does import it (the check above can fail).
    out = tmp_path / "out"
    out.mkdir()
    wheel = pinned_wheels["pip-23.2.1-py3-none-any.whl"]
    patched = run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "pipfix",
            "patch-wheel",
            "--no-cache",
            str(wheel),
            "-o",
            str(out),
        ],
        env=clean_env(PYTHONPATH=str(SRC)),
    )
    assert any("libcst" in line for line in patched.stderr.splitlines())


def test_json_schema(tmp_path: Path, pinned_wheels) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = pipfix("patch-wheel", pinned_wheels["pip-24.0-py3-none-any.whl"], "-o", out, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["schema"] == 1 and report["command"] == "patch-wheel" and report["exit_code"] == 0
    (wheel,) = report["wheels"]
    assert set(wheel) == {
        "path",
        "distribution",
        "version",
        "state",
        "action",
        "reason",
        "patches",
        "changed_files",
        "sha256",
        "original_sha256",
        "backup",
        "output",
    }
    assert wheel["action"] == "written" and wheel["patches"] == ["dlopen-self", "ctypes-import"]
    assert Path(wheel["output"]) == out / "pip-24.0-py3-none-any.whl"
    # The digest is computed while the output is written and verified: it is the file's.
    assert wheel["sha256"] == hashlib.sha256(Path(wheel["output"]).read_bytes()).hexdigest()
    assert wheel["original_sha256"] == hashlib.sha256(
        pinned_wheels["pip-24.0-py3-none-any.whl"].read_bytes()
    ).hexdigest()


def test_patch_wheel_in_place_keeps_a_backup_and_is_idempotent(
    tmp_path: Path, pinned_wheels
) -> None:
    wheel = tmp_path / "pip-22.3.1-py3-none-any.whl"
    shutil.copy(pinned_wheels[wheel.name], wheel)
    original = wheel.read_bytes()
    first = pipfix("patch-wheel", wheel, "--in-place")
    assert first.returncode == 0, first.stderr
    assert (tmp_path / ".pipfix" / (wheel.name + ".orig")).read_bytes() == original
    patched = wheel.read_bytes()
    second = pipfix("patch-wheel", wheel, "--in-place")
    assert "already patched" in second.stdout and wheel.read_bytes() == patched


def test_quiet_version_and_list_patches() -> None:
    assert pipfix("--version").stdout.strip() == f"pipfix {__version__}"
    assert pipfix("check", "-q").stdout == ""
    listed = pipfix("list-patches", "--json")
    ids = [c["id"] for c in json.loads(listed.stdout)]
    assert ids == ["dlopen-self", "ctypes-import"]


def test_usage_errors_exit_2_without_traceback() -> None:
    result = pipfix("frobnicate")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    result = pipfix("patch-wheel", "x.whl")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_diff_writes_nothing(tmp_path: Path, pinned_wheels) -> None:
    wheel = tmp_path / "pip-23.2.1-py3-none-any.whl"
    shutil.copy(pinned_wheels[wheel.name], wheel)
    result = pipfix("diff", wheel)
    assert result.returncode == 0
    assert result.stdout.startswith("--- a/pip/_internal/utils/glibc.py")
    assert sorted(p.name for p in tmp_path.iterdir()) == [wheel.name]


def test_quick_exit_still_runs_exit_handlers_and_keeps_the_code(tmp_path: Path) -> None:
    """The command skips the interpreter's teardown, not what others registered to run
    at exit (coverage, logging), and exits with main's code."""
    marker = tmp_path / "handler-ran"
    script = (
        "import atexit, pathlib, sys\n"
        f"atexit.register(pathlib.Path({str(marker)!r}).write_text, 'yes')\n"
        "sys.argv = ['pipfix', 'check', sys.argv[1]]\n"
        "from pipfix.cli import run\n"
        "run()\n"
    )
    result = run(
        [sys.executable, "-c", script, str(tmp_path / "missing")],
        env=clean_env(PYTHONPATH=str(SRC)),
    )
    assert result.returncode == 2 and "pipfix: error:" in result.stderr
    assert marker.read_text() == "yes"

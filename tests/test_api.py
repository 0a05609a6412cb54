"""The Python API for build hooks: typed reports, PipfixError for user errors."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

import pipfix

from standalone import make_standalone_prefix


def test_patch_wheel_check_apply_restore(tmp_path: Path, pinned_wheels) -> None:
    out = tmp_path / "out"
    out.mkdir()
    report = pipfix.patch_wheel(pinned_wheels["pip-23.2.1-py3-none-any.whl"], out)
    assert isinstance(report, pipfix.RunReport) and report.exit_code == 0
    (wheel,) = report.wheels
    assert isinstance(wheel, pipfix.WheelReport) and wheel.action == "written"
    assert (out / "pip-23.2.1-py3-none-any.whl").is_file()

    prefix = tmp_path / "prefix"
    make_standalone_prefix(Path(sys.executable), prefix, "B")
    assert pipfix.check(prefix).exit_code == 1
    assert pipfix.apply(prefix, dry_run=True).exit_code == 0
    assert pipfix.check(prefix).exit_code == 1  # a dry run writes nothing
    assert pipfix.apply(prefix).exit_code == 0
    assert pipfix.check(prefix).exit_code == 0
    assert "--- a/pip/_internal/utils/glibc.py" in pipfix.diff(
        pinned_wheels["pip-23.2.1-py3-none-any.whl"]
    )
    assert {w.action for w in pipfix.restore(prefix).wheels} == {"restored"}


def test_user_errors_raise_pipfix_error(tmp_path: Path) -> None:
    with pytest.raises(pipfix.PipfixError) as error:
        pipfix.apply(tmp_path)
    assert str(error.value).startswith(str(tmp_path))
    bad = tmp_path / "pip-1.0-py3-none-any.whl"
    shutil.copy(__file__, bad)
    (tmp_path / "out").mkdir()
    with pytest.raises(pipfix.PipfixError, match="not a valid zip archive"):
        pipfix.patch_wheel(bad, tmp_path / "out")
    with pytest.raises(pipfix.PipfixError, match="use --in-place"):
        pipfix.patch_wheel(bad, tmp_path)  # would replace the input without a backup

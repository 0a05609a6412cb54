"""Bad input: one clear line naming the file and the reason, exit 2, no traceback,
and not one byte changed on disk."""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import pipfix, tree_digest
from standalone import make_standalone_prefix
from wheelmaker import make_wheel


def assert_clean_error(result, *fragments: str) -> None:  # type: ignore[no-untyped-def]
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pipfix: error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    root = tmp_path / "prefix"
    make_standalone_prefix(Path(sys.executable), root, "B")
    return root


def bundled(prefix: Path, name: str = "pip-") -> Path:
    return next(prefix.glob(f"lib/python3.*/ensurepip/_bundled/{name}*.whl"))


def test_not_a_python_prefix(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    before = tree_digest(tmp_path)
    for command in ("check", "apply", "restore"):
        assert_clean_error(pipfix(command, tmp_path), str(tmp_path), "not a Python installation")
    assert tree_digest(tmp_path) == before


def test_missing_target(tmp_path: Path) -> None:
    assert_clean_error(pipfix("apply", tmp_path / "nope"), "no such file or directory")


def test_write_commands_need_an_explicit_target() -> None:
    assert_clean_error(pipfix("apply"), "name a target")


def _rewrite_member(
    wheel: Path, member: str, payload: bytes, extra: dict[str, bytes] | None = None
) -> None:
    """Rewrite one member in place, keeping everything else (RECORD untouched)."""
    with zipfile.ZipFile(wheel) as source:
        items = [(info, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as target:
        for info, data in items:
            target.writestr(info, payload if info.filename == member else data)
        for name, data in (extra or {}).items():
            target.writestr(name, data)


def test_corrupt_zip(prefix: Path) -> None:
    wheel = bundled(prefix)
    wheel.write_bytes(wheel.read_bytes()[: len(wheel.read_bytes()) // 2])
    before = tree_digest(prefix)
    assert_clean_error(pipfix("apply", prefix), wheel.name, "not a valid zip archive")
    assert_clean_error(pipfix("check", prefix), wheel.name)
    assert tree_digest(prefix) == before


def test_record_hash_mismatch(prefix: Path) -> None:
    wheel = bundled(prefix)
    _rewrite_member(wheel, "pip/__init__.py", b"tampered = True\n")
    before = tree_digest(prefix)
    assert_clean_error(
        pipfix("apply", prefix), wheel.name, "pip/__init__.py does not match its RECORD"
    )
    assert tree_digest(prefix) == before


def test_zip_slip_member(prefix: Path) -> None:
    wheel = bundled(prefix)
    _rewrite_member(wheel, "", b"", {"../../evil.py": b"print('owned')\n"})
    before = tree_digest(prefix)
    assert_clean_error(pipfix("apply", prefix), wheel.name, "'../../evil.py'", "escapes the wheel")
    assert tree_digest(prefix) == before


def test_bad_wheel_in_one_dir_stops_the_whole_run(prefix: Path) -> None:
    """Nothing is written when any wheel fails verification, not even the good ones."""
    setuptools = next(prefix.glob("lib/python3.*/ensurepip/_bundled/setuptools-*.whl"), None)
    if setuptools is None:
        pytest.skip("this interpreter bundles pip only")
    setuptools.write_bytes(b"not a zip")
    before = tree_digest(prefix)
    assert_clean_error(pipfix("apply", prefix), setuptools.name)
    assert tree_digest(prefix) == before


def test_read_only_directory(prefix: Path, read_only_copy) -> None:  # type: ignore[no-untyped-def]
    target = read_only_copy(prefix)
    before = tree_digest(target)
    result = pipfix("apply", target)
    assert_clean_error(result, "Read-only file system")
    assert tree_digest(target) == before


def test_patch_wheel_errors(tmp_path: Path) -> None:
    good = make_wheel(tmp_path)
    not_a_wheel = tmp_path / "notes.txt"
    not_a_wheel.write_text("hello")
    out = tmp_path / "out"
    out.mkdir()
    assert_clean_error(
        pipfix("patch-wheel", not_a_wheel, "-o", out), "notes.txt", "not a wheel file name"
    )
    assert_clean_error(
        pipfix("patch-wheel", good, "-o", tmp_path / "missing"), "output directory does not exist"
    )
    assert list(out.iterdir()) == []
    # -o never writes over an input (no backup would be kept) nor two inputs to one name
    twin = out / good.name
    twin.write_bytes(good.read_bytes())
    (tmp_path / "elsewhere").mkdir()
    before = tree_digest(tmp_path)
    assert_clean_error(
        pipfix("patch-wheel", good, "-o", good.parent), str(good), "use --in-place"
    )
    assert_clean_error(
        pipfix("patch-wheel", good, twin, "-o", tmp_path / "elsewhere"),
        str(twin), f"same file name as {good}",
    )
    assert tree_digest(tmp_path) == before


def test_restore_refuses_a_file_that_is_neither_original_nor_output(prefix: Path) -> None:
    assert pipfix("apply", prefix, "--wheels-only").returncode == 0
    wheel = bundled(prefix)
    shutil.copy(make_wheel(prefix.parent), wheel)  # someone replaced it behind pipfix's back
    before = tree_digest(prefix)
    result = pipfix("restore", prefix)
    assert result.returncode == 2
    assert tree_digest(prefix) == before

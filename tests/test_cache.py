"""The cache of patched wheels: a hit gives the very bytes and the very plan of a cold
run without libcst; a corrupt or foreign entry is never used and is replaced; a cache
that cannot be written is no cache, never an error; the key follows the patch set."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pipfix import cache, cachedir, patcher, provenance
from pipfix.errors import VerificationError
from pipfix.patcher import WheelState

from conftest import SRC, clean_env, run

PIP = "pip-23.2.1-py3-none-any.whl"
SETUPTOOLS = "setuptools-65.5.0-py3-none-any.whl"


def entries(home: Path) -> list[Path]:
    directory = home / "pipfix" / cachedir.WHEELS_SUBDIR
    return sorted(directory.iterdir()) if directory.is_dir() else []


def cold_and_cached(wheel: Path) -> tuple[patcher.WheelPlan, bytes, patcher.WheelPlan, bytes]:
    cold = patcher.plan(wheel, use_cache=True)
    cold_bytes = cold.build()
    hit = patcher.plan(wheel, use_cache=True)
    return cold, cold_bytes, hit, hit.build()


def test_root_follows_xdg_cache_home_else_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere/cache")
    assert cachedir.cache_root() == Path("/somewhere/cache/pipfix")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # not absolute: ignored (XDG spec)
    assert cachedir.cache_root() == Path.home() / ".cache" / "pipfix"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cachedir.cache_root() == Path.home() / ".cache" / "pipfix"


def test_hit_gives_identical_bytes_and_the_same_plan(
    pinned_wheels: dict[str, Path], cache_home: Path
) -> None:
    cold, cold_bytes, hit, hit_bytes = cold_and_cached(pinned_wheels[PIP])
    assert [p.suffix for p in entries(cache_home)] == [".json", ".whl"]
    assert hit_bytes == cold_bytes == patcher.plan(pinned_wheels[PIP]).build()
    assert hit._built.verified and hit.state is WheelState.NEEDS_PATCH
    # Everything a report shows: changed files, codemod ids, reason, diff, provenance.
    assert hit == cold and hit.changes == cold.changes
    assert hit.patches == cold.patches == ("dlopen-self", "ctypes-import")
    assert hit.reason == cold.reason
    assert hit.diff() == cold.diff()
    assert hit.provenance() == cold.provenance()


def test_hit_in_a_new_process_does_not_import_libcst(
    pinned_wheels: dict[str, Path], tmp_path: Path
) -> None:
    home = tmp_path / "xdg"
    code = (
        "import sys, hashlib, pathlib; from pipfix import patcher;"
        "p = patcher.plan(pathlib.Path(sys.argv[1]), use_cache=True);"
        "print(hashlib.sha256(p.build()).hexdigest(), 'libcst' in sys.modules)"
    )
    env = clean_env(PYTHONPATH=str(SRC), XDG_CACHE_HOME=str(home))
    first = run([sys.executable, "-c", code, pinned_wheels[SETUPTOOLS]], env=env)
    second = run([sys.executable, "-c", code, pinned_wheels[SETUPTOOLS]], env=env)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    digest, imported = first.stdout.split()
    assert imported == "True"
    assert second.stdout.split() == [digest, "False"]


def test_without_use_cache_nothing_is_read_or_written(
    pinned_wheels: dict[str, Path], cache_home: Path
) -> None:
    plan = patcher.plan(pinned_wheels[PIP])
    plan.build()
    assert not cache_home.exists()
    patcher.plan(pinned_wheels[PIP], use_cache=True).build()
    assert entries(cache_home)
    assert not patcher.plan(pinned_wheels[PIP])._built.verified  # not taken from the cache


def _corrupt_wheel(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _wheel_of_another_input(path: Path, other: bytes) -> None:
    """A valid patched wheel, but of another input (index updated to match its bytes)."""
    path.write_bytes(other)
    index_path = path.with_suffix(".json")
    index = json.loads(index_path.read_text())
    index["output_sha256"] = cache.record.sha256_hex(other)
    index_path.write_text(json.dumps(index))


CORRUPTIONS: dict[str, Callable[[Path, bytes], None]] = {
    "flipped-byte": lambda whl, _other: _corrupt_wheel(whl),
    "truncated": lambda whl, _other: whl.write_bytes(whl.read_bytes()[:1000]),
    "wheel-missing": lambda whl, _other: whl.unlink(),
    "index-garbage": lambda whl, _other: whl.with_suffix(".json").write_bytes(b"\x00{not json"),
    "index-other-input": lambda whl, _other: whl.with_suffix(".json").write_text(
        whl.with_suffix(".json").read_text().replace('"input_sha256": "', '"input_sha256": "0')
    ),
    "index-wrong-codemods": lambda whl, _other: whl.with_suffix(".json").write_text(
        whl.with_suffix(".json").read_text().replace("dlopen-self", "ctypes-import")
    ),
    "another-inputs-output": _wheel_of_another_input,
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_entry_is_ignored_and_replaced(
    corruption: str, pinned_wheels: dict[str, Path], cache_home: Path
) -> None:
    cold = patcher.plan(pinned_wheels[PIP], use_cache=True)
    good = cold.build()
    other = patcher.plan(pinned_wheels["pip-23.0.1-py3-none-any.whl"]).build()
    [index, whl] = entries(cache_home)
    CORRUPTIONS[corruption](whl, other)

    again = patcher.plan(pinned_wheels[PIP], use_cache=True)
    assert not again._built.verified  # computed cold, not taken from the entry
    assert again == cold and again.build() == good
    assert whl.read_bytes() == good  # the entry was written afresh
    assert json.loads(index.read_text())["output_sha256"] == cache.record.sha256_hex(good)
    assert patcher.plan(pinned_wheels[PIP], use_cache=True)._built.verified


def test_entry_of_an_input_under_another_file_name_is_not_used(
    pinned_wheels: dict[str, Path], cache_home: Path, tmp_path: Path
) -> None:
    """The provenance names the input's file name, so the name is part of the key."""
    patcher.plan(pinned_wheels[PIP], use_cache=True).build()
    renamed = tmp_path / "pip-23.2.1-py2.py3-none-any.whl"
    shutil.copyfile(pinned_wheels[PIP], renamed)
    plan = patcher.plan(renamed, use_cache=True)
    assert not plan._built.verified
    assert plan.provenance().original_filename == renamed.name


def _unwritable_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    return blocker


def test_unwritable_cache_means_no_cache(
    pinned_wheels: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _unwritable_cache_home(tmp_path, monkeypatch)
    first = patcher.plan(pinned_wheels[PIP], use_cache=True)
    data = first.build()
    assert first._built.verified  # verified for the cache, which then could not keep it
    assert data == patcher.plan(pinned_wheels[PIP]).build()
    assert not patcher.plan(pinned_wheels[PIP], use_cache=True)._built.verified


def test_read_only_cache_directory_means_no_cache(
    pinned_wheels: dict[str, Path],
    small_filesystem: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mount = small_filesystem("16m")
    (mount / "pipfix" / cachedir.WHEELS_SUBDIR).mkdir(parents=True)
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(mount))
    data = patcher.plan(pinned_wheels[PIP], use_cache=True).build()
    assert data == patcher.plan(pinned_wheels[PIP]).build()
    assert list((mount / "pipfix" / cachedir.WHEELS_SUBDIR).iterdir()) == []


def test_failed_write_leaves_no_temporary_file_and_no_error(
    pinned_wheels: dict[str, Path], cache_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as failing:  # undone on exit, unlike cache_home's env
        failing.setattr(cache.os, "replace", refuse)
        plan = patcher.plan(pinned_wheels[PIP], use_cache=True)
        plan.build()
    assert entries(cache_home) == []  # the directory exists, but holds nothing
    assert patcher.plan(pinned_wheels[PIP], use_cache=True)._built.data is None  # a miss


def test_stale_temporary_files_are_removed(
    pinned_wheels: dict[str, Path], cache_home: Path
) -> None:
    directory = cache_home / "pipfix" / cachedir.WHEELS_SUBDIR
    directory.mkdir(parents=True)
    stale, fresh = directory / ".tmp-killed.whl", directory / ".tmp-writing.whl"
    stale.write_bytes(b"half a wheel")
    fresh.write_bytes(b"being written")
    os.utime(stale, (0, 0))
    patcher.plan(pinned_wheels[PIP], use_cache=True).build()
    assert not stale.exists() and fresh.exists()


def test_key_changes_with_patch_set_pipfix_version_name_and_content(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = cachedir.entry_key(PIP, "a" * 64)
    assert cachedir.entry_key(PIP, "b" * 64) != key
    assert cachedir.entry_key(SETUPTOOLS, "a" * 64) != key
    monkeypatch.setattr(provenance, "PATCH_SET_VERSION", provenance.PATCH_SET_VERSION + 1)
    assert cachedir.entry_key(PIP, "a" * 64) != key
    monkeypatch.undo()
    monkeypatch.setattr(cachedir, "__version__", "999.0")
    assert cachedir.entry_key(PIP, "a" * 64) != key


def test_entry_of_another_patch_set_is_not_used(
    pinned_wheels: dict[str, Path], cache_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patcher.plan(pinned_wheels[PIP], use_cache=True).build()
    old_entries = entries(cache_home)
    monkeypatch.setattr(provenance, "PATCH_SET_VERSION", provenance.PATCH_SET_VERSION + 1)
    plan = patcher.plan(pinned_wheels[PIP], use_cache=True)
    assert not plan._built.verified
    plan.build()
    assert len(entries(cache_home)) == 2 * len(old_entries)  # a new entry beside the old one
    assert patcher.plan(pinned_wheels[PIP], use_cache=True)._built.verified


def test_verify_output_of_a_hit_still_reads_the_file_back(
    pinned_wheels: dict[str, Path], cache_home: Path, tmp_path: Path
) -> None:
    _cold, _cold_bytes, hit, data = cold_and_cached(pinned_wheels[PIP])
    written = tmp_path / PIP
    written.write_bytes(data)
    patcher.verify_output(written, data, hit)
    damaged = bytearray(data)
    damaged[100] ^= 1
    written.write_bytes(bytes(damaged))
    with pytest.raises(VerificationError, match="read back"):
        patcher.verify_output(written, data, hit)


def test_verify_rebuilt_refuses_any_changed_byte(pinned_wheels: dict[str, Path]) -> None:
    plan = patcher.plan(pinned_wheels[SETUPTOOLS])
    data = plan.build()
    patcher.verify_rebuilt(pinned_wheels[SETUPTOOLS], data, plan)
    for position in range(0, len(data), max(1, len(data) // 997)):
        damaged = bytearray(data)
        damaged[position] ^= 0x10
        with pytest.raises(VerificationError):
            patcher.verify_rebuilt(pinned_wheels[SETUPTOOLS], bytes(damaged), plan)

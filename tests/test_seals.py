"""Seals: bytes verified in full once are not inflated and hashed again, and only they."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipfix import patcher, record, seals, wheelfile
from pipfix.errors import VerificationError
from pipfix.patcher import WheelState

from badwheels import with_member_flipped
from conftest import SRC, clean_env, pipfix

PIP = "pip-23.2.1-py3-none-any.whl"
GLIBC = "pip/_internal/utils/glibc.py"


@pytest.fixture
def wheel(pinned_wheels: dict[str, Path], tmp_path: Path) -> Path:
    path = tmp_path / PIP
    shutil.copyfile(pinned_wheels[PIP], path)
    return path


def _sealed(path: Path) -> bool:
    return seals.is_sealed(record.sha256_hex(path.read_bytes()), path.name)


def test_a_full_verification_leaves_a_seal_the_next_run_uses(cache_home: Path, wheel: Path) -> None:
    first = wheelfile.verify(wheel, use_seals=True)
    assert isinstance(first.contents, dict)  # inflated in full
    assert _sealed(wheel)
    second = wheelfile.verify(wheel, use_seals=True)
    assert not isinstance(second.contents, dict)  # inflated as members are read
    assert dict(second.contents) == first.contents
    assert dict(second.records) == dict(first.records)
    assert patcher.plan_verified(second).changes == patcher.plan_verified(first).changes


def test_without_use_seals_nothing_is_read_or_left(cache_home: Path, wheel: Path) -> None:
    wheelfile.verify(wheel)
    assert not cache_home.exists()
    wheelfile.verify(wheel, use_seals=True)
    assert isinstance(wheelfile.verify(wheel).contents, dict)  # the seal is not read


def test_a_seal_vouches_only_for_its_own_bytes_and_name(cache_home: Path, wheel: Path) -> None:
    wheelfile.verify(wheel, use_seals=True)
    renamed = wheel.with_name("pip-23.2.1-py2.py3-none-any.whl")
    shutil.copyfile(wheel, renamed)
    assert not _sealed(renamed)
    with_member_flipped(wheel, GLIBC)
    with pytest.raises(VerificationError, match=GLIBC):
        wheelfile.verify(wheel, use_seals=True)  # new bytes: verified in full, refused
    assert not _sealed(wheel)


def test_members_of_a_sealed_wheel_are_still_crc_checked(cache_home: Path, wheel: Path) -> None:
    """Were a seal ever wrong, a damaged member would still not be read as good bytes."""
    with_member_flipped(wheel, GLIBC)
    seals.seal(record.sha256_hex(wheel.read_bytes()), wheel.name)  # a seal that lies
    sealed = wheelfile.verify(wheel, use_seals=True)
    with pytest.raises(VerificationError, match=GLIBC):
        sealed.contents[GLIBC]


def test_the_command_seals_its_input_and_output(wheel: Path, tmp_path: Path) -> None:
    home = tmp_path / "xdg"
    env = clean_env(PYTHONPATH=str(SRC), XDG_CACHE_HOME=str(home))
    out, again = tmp_path / "out", tmp_path / "again"
    out.mkdir()
    again.mkdir()
    assert pipfix("patch-wheel", "-o", str(out), str(wheel), env=env).returncode == 0
    verified = sorted((home / "pipfix" / "verified-v1").iterdir())
    assert len(verified) == 2  # the input and the output
    run = pipfix("patch-wheel", "--json", "-o", str(again), str(out / wheel.name), env=env)
    assert run.returncode == 0, run.stderr
    assert '"patched by pipfix"' in run.stdout
    assert (again / wheel.name).read_bytes() == (out / wheel.name).read_bytes()


def test_no_cache_neither_reads_nor_leaves_seals(wheel: Path, tmp_path: Path) -> None:
    home = tmp_path / "xdg"
    env = clean_env(PYTHONPATH=str(SRC), XDG_CACHE_HOME=str(home))
    out = tmp_path / "out"
    out.mkdir()
    run = pipfix("patch-wheel", "--no-cache", "-o", str(out), str(wheel), env=env)
    assert run.returncode == 0, run.stderr
    assert not (home / "pipfix").exists()


def test_an_unwritable_cache_only_costs_the_seal(
    wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    plan = patcher.plan(wheel, use_cache=True)
    assert plan.state is WheelState.NEEDS_PATCH
    assert not _sealed(wheel)

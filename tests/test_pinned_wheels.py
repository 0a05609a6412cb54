"""Every pinned upstream wheel: patched output verifies, keeps what it does not change,
leaves no unguarded glibc detection, is idempotent, deterministic, and matches its
golden diff in patches/."""

from __future__ import annotations

import ast
import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

import pytest
from installer.sources import WheelFile as InstallerWheel
from wheel.wheelfile import WheelFile

from pipfix import patcher, provenance, zipraw
from pipfix.patcher import WheelState

from conftest import PINNED_NAMES, ROOT, SRC, clean_env, run
from unguarded import find_unguarded

PATCHES = ROOT / "patches"


def golden_path(name: str) -> Path:
    distribution, version = name.split("-")[:2]
    return PATCHES / f"{distribution}-{version}.diff"


@pytest.fixture(scope="module")
def outputs(pinned_wheels: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("out")
    cache: dict[str, tuple[patcher.WheelPlan, Path]] = {}

    def get(name: str) -> tuple[patcher.WheelPlan, Path]:
        if name not in cache:
            plan = patcher.plan(pinned_wheels[name])
            out = directory / name
            out.write_bytes(plan.build())
            cache[name] = (plan, out)
        return cache[name]

    return get


@pytest.mark.parametrize("name", PINNED_NAMES)
def test_output_verifies_with_wheel_and_installer(name: str, outputs) -> None:
    plan, out = outputs(name)
    assert plan.state is WheelState.NEEDS_PATCH
    with WheelFile(out) as reader:  # raises on any hash mismatch
        for info in reader.infolist():
            reader.read(info)
    with zipfile.ZipFile(out) as archive:
        InstallerWheel(archive).validate_record(validate_contents=True)
        assert archive.testzip() is None


@pytest.mark.parametrize("name", PINNED_NAMES)
def test_unchanged_members_are_identical_and_in_order(name: str, outputs, pinned_wheels) -> None:
    plan, out = outputs(name)
    before = {m.name: m for m in zipraw.read_archive(pinned_wheels[name].read_bytes()).members}
    after = zipraw.read_archive(out.read_bytes()).members
    changed = {c.path for c in plan.changes} | {plan.wheel.record_path}
    added = provenance.member_name(plan.wheel.dist_info)
    expected_order: list[str] = []
    for member_name in before:
        if member_name == plan.wheel.record_path:
            expected_order.append(added)
        if not member_name.endswith(("/RECORD.jws", "/RECORD.p7s")):
            expected_order.append(member_name)
    assert [m.name for m in after] == expected_order
    for member in after:
        if member.name in changed or member.name == added:
            continue
        assert member.local == before[member.name].local, member.name
        assert member.central[46:] == before[member.name].central[46:], member.name
    for path in changed:
        original, new = before[path], next(m for m in after if m.name == path)
        assert (new.dos_date, new.dos_time, new.external_attr, new.method) == (
            original.dos_date,
            original.dos_time,
            original.external_attr,
            original.method,
        )


@pytest.mark.parametrize("name", PINNED_NAMES)
def test_no_unguarded_glibc_detection_left(name: str, outputs) -> None:
    plan, out = outputs(name)
    assert plan.changes, "every pinned wheel needs at least the ctypes import guard"
    with zipfile.ZipFile(out) as archive:
        for member in archive.namelist():
            if member.endswith(".py"):
                source = archive.read(member)
                if b"gnu_get_libc_version" in source:
                    assert find_unguarded(source) == [], member
                    ast.parse(source)


@pytest.mark.parametrize("name", PINNED_NAMES)
def test_idempotent_and_deterministic(name: str, outputs, pinned_wheels) -> None:
    plan, out = outputs(name)
    again = patcher.plan(out)
    assert again.state is WheelState.PATCHED
    assert again.existing is not None
    assert again.existing.original_sha256 == plan.wheel.sha256
    assert patcher.plan(pinned_wheels[name]).build() == out.read_bytes()


def test_same_bytes_in_another_process_and_environment(pinned_wheels, outputs, tmp_path) -> None:
    name = "pip-23.2.1-py3-none-any.whl"
    _, out = outputs(name)
    code = (
        "import sys, hashlib, pathlib; from pipfix import patcher;"
        "print(hashlib.sha256(patcher.plan(pathlib.Path(sys.argv[1])).build()).hexdigest())"
    )
    env = clean_env(PYTHONPATH=str(SRC), SOURCE_DATE_EPOCH="1700000000", TZ="Asia/Tokyo")
    result = run([sys.executable, "-c", code, pinned_wheels[name]], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == hashlib.sha256(out.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", PINNED_NAMES)
def test_golden_diff(name: str, outputs) -> None:
    plan, _ = outputs(name)
    golden = golden_path(name)
    assert golden.is_file(), f"missing {golden}: run 'pipfix diff WHEEL > {golden}'"
    assert plan.diff().encode("utf-8", "surrogateescape") == golden.read_bytes(), (
        f"{golden} drifted: review and regenerate with 'pipfix diff WHEEL > {golden}'"
    )


@pytest.mark.parametrize("name", PINNED_NAMES)
def test_provenance(name: str, outputs) -> None:
    plan, out = outputs(name)
    with zipfile.ZipFile(out) as archive:
        data = json.loads(archive.read(provenance.member_name(plan.wheel.dist_info)))
    assert data["tool"] == "pipfix"
    assert data["original_sha256"] == plan.wheel.sha256
    assert data["patches"] == list(plan.patches)
    assert data["changed_files"] == [c.path for c in plan.changes]


def test_fixed_upstream_cdll_still_gets_import_guard(outputs) -> None:
    """pip 24.2+ guards CDLL(None) itself; the ctypes import still needs OSError."""
    for name in ("pip-24.2-py3-none-any.whl", "pip-26.3-py3-none-any.whl"):
        plan, _ = outputs(name)
        assert "ctypes-import" in plan.patches
        assert "dlopen-self" not in plan.patches


def test_signature_files_are_dropped(tmp_path: Path, pinned_wheels) -> None:
    source = pinned_wheels["pip-23.2.1-py3-none-any.whl"]
    signed = tmp_path / source.name
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(signed, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("pip-23.2.1.dist-info/RECORD.jws", b"{}")
    plan = patcher.plan(signed)
    out = zipfile.ZipFile(io.BytesIO(plan.build()))
    assert "pip-23.2.1.dist-info/RECORD.jws" not in out.namelist()

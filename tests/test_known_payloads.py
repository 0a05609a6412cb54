"""The reinstall reads the members pipfix verified in this run from memory
(``WheelPlan.output_payloads`` through ``install._KnownPayloads``) instead of
inflating them again: those payloads must be exactly the output's members."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from pipfix import install, patcher, provenance

from wheelmaker import make_wheel

PIP = "pip-23.2.1-py3-none-any.whl"


def _members(data: bytes, tmp_path: Path) -> dict[str, bytes]:
    built = tmp_path / "built.whl"
    built.write_bytes(data)
    with zipfile.ZipFile(built) as archive:
        return {i.filename: archive.read(i) for i in archive.infolist() if not i.is_dir()}


@pytest.mark.parametrize("state", ["needs patch", "patched by pipfix"])
def test_output_payloads_are_the_outputs_members(
    state: str, pinned_wheels: dict[str, Path], tmp_path: Path
) -> None:
    plan = patcher.plan(pinned_wheels[PIP])
    if state == "patched by pipfix":
        patched = tmp_path / PIP
        patched.write_bytes(plan.build())
        plan = patcher.plan(patched)
    assert plan.state.value == state
    data = plan.build() if state == "needs patch" else plan.wheel.data
    members = _members(data, tmp_path)
    payloads = plan.output_payloads()
    held = {name: payloads[name] for name in members if name in payloads}
    assert held == {name: members[name] for name in held}
    not_held = set(members) - set(held)
    if state == "needs patch":
        dist_info = plan.wheel.dist_info
        assert not_held == {f"{dist_info}/RECORD", provenance.member_name(dist_info)}
        assert all(payloads[c.path] == c.after for c in plan.changes)
    else:
        assert not not_held


def test_output_payloads_of_a_wheel_with_nothing_to_build_is_an_error(tmp_path: Path) -> None:
    safe = patcher.plan(make_wheel(tmp_path))
    assert safe.state is patcher.WheelState.SAFE
    with pytest.raises(ValueError, match="nothing to build"):
        safe.output_payloads()


def test_members_at_hand_are_read_from_memory_the_others_from_the_archive(
    pinned_wheels: dict[str, Path],
) -> None:
    name = "pip/__init__.py"
    with zipfile.ZipFile(pinned_wheels[PIP]) as plain:
        record = next(n for n in plain.namelist() if n.endswith(".dist-info/RECORD"))
        expected_record = plain.read(record)
    with install._KnownPayloads(pinned_wheels[PIP], {name: b"from memory"}) as archive:
        assert archive.read(name) == b"from memory"
        info = archive.getinfo(name)
        with archive.open(info) as stream:
            assert stream.read() == b"from memory"
        assert archive.read(record) == expected_record

"""The transform helper's first look at the input wheels (``peek``) and the
results it computes from it ahead of any job (``transform_helper``): it finds
exactly the modules each pinned wheel's plan changes, nothing where the plan
runs no codemod (so libcst stays unimported), nothing from damaged input, and
a job is answered from what it computed only for the same source and scope."""

from __future__ import annotations

import hashlib
import marshal
import mmap
from pathlib import Path

import pytest

from pipfix import cachedir, patcher, peek, transform_helper, zipraw
from pipfix.codemods.engine import transform_source
from pipfix.codemods.model import SourceResult, Unpatchable
from pipfix.codemods.screen import codemods_in_scope
from pipfix.patcher import WheelState

PIP = "pip-23.2.1-py3-none-any.whl"


def test_the_look_finds_what_each_pinned_plan_changes(pinned_wheels: dict[str, Path]) -> None:
    for name, path in sorted(pinned_wheels.items()):
        plan = patcher.plan(path)
        assert plan.state is WheelState.NEEDS_PATCH, name
        found = peek.likely_transforms([path], use_cache=False)
        assert found == [(c.path, c.before) for c in plan.changes], name


def test_nothing_to_find_where_the_plan_runs_no_codemod(
    pinned_wheels: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patched = tmp_path / PIP
    patched.write_bytes(patcher.plan(pinned_wheels[PIP]).build())
    assert peek.likely_transforms([patched], use_cache=False) == []

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    wheel = pinned_wheels[PIP]
    sha256 = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert not cachedir.may_hold(wheel.name, sha256)
    patcher.plan(wheel, use_cache=True).build()  # leaves a cache entry
    assert cachedir.may_hold(wheel.name, sha256)
    assert peek.likely_transforms([wheel], use_cache=True) == []
    assert len(peek.likely_transforms([wheel], use_cache=False)) == 2


def test_the_quick_look_reads_members_as_the_full_reader_does(
    pinned_wheels: dict[str, Path], tmp_path: Path
) -> None:
    """``zipraw.find_members``: the same records as ``read_archive`` for the names
    it is asked about, from bytes or from a map of the file; an empty file gives
    nothing."""
    endings = ("/glibc.py", "/RECORD", "/__init__.py")
    for name, path in sorted(pinned_wheels.items()):
        data = path.read_bytes()
        expected = [m for m in zipraw.read_archive(data).members if m.name.endswith(endings)]
        assert expected and zipraw.find_members(data, endings) == expected, name
        with path.open("rb") as handle, mmap.mmap(
            handle.fileno(), 0, access=mmap.ACCESS_READ
        ) as mapped:
            assert zipraw.find_members(mapped, endings) == expected, name
    empty = tmp_path / "empty.whl"
    empty.write_bytes(b"")
    assert peek.likely_transforms([empty], use_cache=False) == []


def test_damaged_or_missing_inputs_give_nothing_and_the_next_is_looked_at(
    pinned_wheels: dict[str, Path], tmp_path: Path
) -> None:
    data = pinned_wheels[PIP].read_bytes()
    truncated = tmp_path / "truncated.whl"
    truncated.write_bytes(data[: len(data) // 2])
    not_a_zip = tmp_path / "text.whl"
    not_a_zip.write_text("not a wheel")
    damaged = tmp_path / "damaged.whl"
    glibc = data.index(b"pip/_internal/utils/glibc.py")  # its local header's name
    damaged.write_bytes(data[: glibc + 200] + bytes(64) + data[glibc + 264 :])
    bad = [tmp_path / "missing.whl", tmp_path, truncated, not_a_zip, damaged]
    for path in bad:
        assert peek.likely_transforms([path], use_cache=False) == [], path
    found = peek.likely_transforms([*bad, pinned_wheels[PIP]], use_cache=False)
    assert [name for name, _ in found] == [
        "pip/_internal/utils/glibc.py", "pip/_vendor/packaging/_manylinux.py"
    ]


def test_the_results_ahead_are_the_engines(pinned_wheels: dict[str, Path]) -> None:
    changes = patcher.plan(pinned_wheels[PIP]).changes
    ahead = transform_helper.transforms_ahead([pinned_wheels[PIP]], use_cache=False)
    assert set(ahead) == {c.before for c in changes}
    for change in changes:
        in_scope, wire = ahead[change.before]
        result = transform_helper._from_wire(wire)
        assert in_scope == codemods_in_scope(change.before)
        assert result == transform_source(change.path, change.before, in_scope)
        assert result.source == change.after


def test_a_job_is_answered_from_ahead_only_for_the_same_source_and_scope(
    pinned_wheels: dict[str, Path],
) -> None:
    source = patcher.plan(pinned_wheels[PIP]).changes[0].before
    scope = codemods_in_scope(source)
    marker = transform_helper.to_wire(SourceResult(b"computed ahead", (), ()))
    ahead = {source: (scope, marker)}
    assert transform_helper._answer(ahead, "mod.py", source, tuple(scope)) is marker
    other = source + b"\n"  # another source, same scope: computed, not the marker
    ahead = {source: (scope, marker)}
    answer = transform_helper._answer(ahead, "mod.py", other, tuple(scope))
    assert answer == transform_helper.to_wire(transform_source("mod.py", other, scope))
    narrower = frozenset(sorted(scope)[:1])
    assert narrower != scope
    ahead = {source: (scope, marker)}
    answer = transform_helper._answer(ahead, "mod.py", source, narrower)
    assert answer == transform_helper.to_wire(transform_source("mod.py", source, narrower))
    assert transform_helper._answer({}, "mod.py", None, scope) is None  # type: ignore[arg-type]


def test_an_unscreened_job_is_answered_from_ahead_or_screened_by_the_helper(
    pinned_wheels: dict[str, Path],
) -> None:
    """The run sends the modules named like the look's unscreened: whatever the
    helper holds ahead for that source answers it, else the helper screens it."""
    from pipfix import codemods

    source = patcher.plan(pinned_wheels[PIP]).changes[0].before
    marker = transform_helper.to_wire(SourceResult(b"computed ahead", (), ()))
    ahead = {source: (codemods_in_scope(source), marker)}
    assert transform_helper._answer(ahead, "mod.py", source, None) is marker
    for unscreened in (source, b"import os\n", b"import ctypes\nctypes.CDLL('x')\n"):
        expected = codemods.transform_source("mod.py", unscreened)
        answer = transform_helper._answer({}, "mod.py", unscreened, None)
        assert answer == transform_helper.to_wire(expected)


def test_results_cross_the_pipe_unchanged() -> None:
    """What ``marshal`` carries back is the engine's result, reports included."""
    result = SourceResult(
        b"patched", ("dlopen-self", "ctypes-import"), (Unpatchable("m.py", 3, "why"),)
    )
    wire = transform_helper.to_wire(result)
    assert transform_helper._from_wire(marshal.loads(marshal.dumps(wire))) == result

"""fix-extensions on real modules: the ImportError first, then the fix, then the restore.

The demo extension module (tests/native.py) names a stand-in libpython
(``libpython3.Xd.so.1.0``) that no loader here can find, so under a python
with libpython linked in (Debian's /usr/bin/python3.X) importing it fails
exactly as a module built against a shared libpython fails there.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import sys
from pathlib import Path

import pytest

from conftest import tree_digest
from native import (
    DEMO_MODULE,
    DEMO_SUFFIX,
    build_demo,
    build_stub,
    fake_prefix,
    import_demo,
    install_module,
    stand_in_soname,
    static_libpython_python,
)
from pipfix import doctor_cli, elf, record, store
from pipfix.fix_extensions import fix_extensions, restore_extensions

VERSION = f"{sys.version_info[0]}.{sys.version_info[1]}"


@pytest.fixture(scope="session")
def demo_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    stub = build_stub(root / "stubs", stand_in_soname())
    return build_demo(root / f"{DEMO_MODULE}{DEMO_SUFFIX}", stub)


@pytest.fixture
def python() -> Path:
    return static_libpython_python()


@pytest.fixture
def prefix(tmp_path: Path, python: Path, demo_module: Path) -> Path:
    root = fake_prefix(tmp_path / "prefix", VERSION, python)
    install_module(site_of(root), demo_module)
    return root


def site_of(root: Path) -> Path:
    return root / "lib" / f"python{VERSION}" / "site-packages"


def content(root: Path) -> dict[str, str]:
    """tree_digest without the target's lock (PREFIX/.pipfix/lock stays, as for apply)."""
    return {k: v for k, v in tree_digest(root).items() if not k.startswith(".pipfix")}


def record_is_consistent(site: Path) -> None:
    record_file = next(site.glob("*.dist-info/RECORD"))
    for path, entry in record.parse(record_file.read_text(encoding="utf-8")).items():
        if entry.hash_ is not None:
            payload = (site / path).read_bytes()
            assert entry.hash_.validate(payload) and entry.size == len(payload), path


def test_fix_makes_the_module_import_and_restore_breaks_it_again(
    prefix: Path, python: Path
) -> None:
    site = site_of(prefix)
    module = site / f"{DEMO_MODULE}{DEMO_SUFFIX}"
    original = content(prefix)

    # 1. The breakage, first.
    broken = import_demo(python, site)
    assert broken.returncode != 0
    assert "cannot open shared object file" in broken.stderr
    assert stand_in_soname() in broken.stderr

    # 2. The fix.
    report = fix_extensions([prefix])
    assert report.exit_code == 0
    [fixed] = report.files
    assert (fixed.action, fixed.removed) == ("fixed", (stand_in_soname(),))
    assert fixed.distribution == "pipfixdemo" and fixed.record is not None
    assert stand_in_soname() not in elf.read(module).needed
    works = import_demo(python, site)
    assert works.returncode == 0, works.stderr
    assert works.stdout.strip() == "5"
    record_is_consistent(site)
    assert (module.parent / ".pipfix" / (module.name + ".orig")).is_file()

    # 3. Idempotent: a second run changes nothing.
    after_fix = content(prefix)
    again = fix_extensions([prefix])
    assert [f.action for f in again.files] == ["already fixed"]
    assert content(prefix) == after_fix

    # 4. Restore: byte-identical tree (RECORD too, backups gone), and the failure is back.
    results = restore_extensions(prefix)
    assert sorted((r["kind"], r["action"]) for r in results) == [
        ("extension", "restored"), ("record", "restored")]
    assert content(prefix) == original
    assert "cannot open shared object file" in import_demo(python, site).stderr


def test_dry_run_writes_nothing(prefix: Path) -> None:
    before = content(prefix)
    report = fix_extensions([prefix], dry_run=True)
    assert [f.action for f in report.files] == ["would fix"]
    assert content(prefix) == before


def test_explicit_path_and_cli_json(prefix: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = site_of(prefix) / f"{DEMO_MODULE}{DEMO_SUFFIX}"
    code = doctor_cli.main(["fix-extensions", "--json", str(module)])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["command"] == "fix-extensions" and data["schema"] == 1
    assert [f["action"] for f in data["files"]] == ["fixed"]
    assert data["files"][0]["removed"] == [stand_in_soname()]
    record_is_consistent(site_of(prefix))
    # the same file again: nothing more to do
    assert doctor_cli.main(["fix-extensions", str(module)]) == 0
    assert "already fixed" in capsys.readouterr().out


def test_writing_commands_need_a_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert doctor_cli.main(["fix-extensions"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pipfix: error:") and err.count("\n") == 1


def test_file_not_matching_its_record_is_refused(prefix: Path) -> None:
    module = site_of(prefix) / f"{DEMO_MODULE}{DEMO_SUFFIX}"
    with module.open("ab") as handle:
        handle.write(b"\0")  # still valid ELF, but RECORD no longer describes it
    before = content(prefix)
    report = fix_extensions([prefix])
    [skipped] = report.files
    assert skipped.action == "skipped" and "RECORD" in skipped.reason
    assert report.exit_code == 1
    assert content(prefix) == before


def _mangled(data: bytes) -> dict[str, bytes]:
    wrong_class = bytearray(data)
    wrong_class[4] = 1
    foreign = bytearray(data)
    struct.pack_into("<H", foreign, 18, 183)  # e_machine = aarch64
    no_sections = bytearray(data)
    struct.pack_into("<Q", no_sections, 40, 0)  # e_shoff = 0
    struct.pack_into("<HH", no_sections, 60, 0, 0)  # e_shnum = e_shstrndx = 0 (sstrip-like)
    return {
        "truncated": data[: len(data) // 3],
        "garbage": b"\x7fELF" + hashlib.sha256(data).digest() * 8,
        "empty": b"",
        "not_elf": b"#!/bin/sh\necho this is not a shared object\n",
        "wrong_class": bytes(wrong_class),
        "foreign_arch": bytes(foreign),
        "no_sections": bytes(no_sections),
    }


def test_malformed_files_are_reported_skipped_and_untouched(
    prefix: Path, demo_module: Path
) -> None:
    site = site_of(prefix)
    (site / f"{DEMO_MODULE}{DEMO_SUFFIX}").unlink()
    shutil.rmtree(next(site.glob("*.dist-info")))
    for name, payload in _mangled(demo_module.read_bytes()).items():
        (site / f"{name}{DEMO_SUFFIX}").write_bytes(payload)
    before = content(prefix)
    report = fix_extensions([prefix])
    reasons = {Path(f.path).name.split(".")[0]: (f.action, f.reason) for f in report.files}
    assert set(reasons) == set(_mangled(b"\x7fELF" + bytes(100)))
    assert all(action == "skipped" for action, _ in reasons.values()), reasons
    assert "no section headers" in reasons["no_sections"][1]
    assert "aarch64" in reasons["foreign_arch"][1]
    assert report.exit_code == 1
    assert content(prefix) == before
    # the explicit-path form skips them the same way
    report = fix_extensions([site])
    assert {f.action for f in report.files} == {"skipped"}
    assert content(prefix) == before


def test_restore_keeps_a_file_changed_after_the_fix(prefix: Path) -> None:
    module = site_of(prefix) / f"{DEMO_MODULE}{DEMO_SUFFIX}"
    fix_extensions([prefix])
    module.write_bytes(module.read_bytes() + b"\0")  # e.g. reinstalled since
    results = {r["kind"]: r for r in restore_extensions(prefix)}
    assert results["extension"]["action"] == "skipped"
    assert store.backup_path_for(module).is_file()
    assert results["record"]["action"] == "skipped"
    # and fixing again refuses rather than overwrite the only original
    [again] = fix_extensions([prefix]).files
    assert again.action == "skipped" and "changed since pipfix fixed it" in again.reason


def test_interrupted_run_record_is_repaired(prefix: Path) -> None:
    """A run killed after replacing the module but before RECORD: the next run settles RECORD."""
    site = site_of(prefix)
    module = site / f"{DEMO_MODULE}{DEMO_SUFFIX}"
    record_file = next(site.glob("*.dist-info/RECORD"))
    record_before = record_file.read_bytes()
    fix_extensions([prefix])
    record_file.write_bytes(record_before)  # as if the RECORD write never happened
    [report] = fix_extensions([prefix]).files
    assert report.action == "already fixed" and report.reason == "RECORD row updated"
    record_is_consistent(site)
    assert store.backup_path_for(module).is_file()

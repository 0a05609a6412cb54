"""fix-extensions on real modules: the ImportError first, then the fix, then the restore.

The demo extension module (tests/native.py) names a stand-in libpython
(``libpython3.Xd.so.1.0``) that no loader here can find, so under a python
with libpython linked in (Debian's /usr/bin/python3.X) importing it fails
exactly as a module built against a shared libpython fails there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hardening import step_lines
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
from pipfix import doctor_cli, elf, record
from pipfix.errors import PipfixError
from pipfix.extension_restore import restore_state
from pipfix.extension_state import ExtensionState
from pipfix.fix_extensions import fix_extensions, restore_extensions

from conftest import SRC, clean_env, pipfix, tree_digest

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


def state_dir(root: Path) -> Path:
    """Where fix-extensions keeps the originals of an installation's files."""
    return root / ".pipfix" / "extensions"


def manifest(state: Path) -> dict[str, dict[str, Any]]:
    data = json.loads((state / "manifest.json").read_text(encoding="utf-8"))
    assert data["schema"] == 1
    files: dict[str, dict[str, Any]] = data["files"]
    return files


def backup_of(state: Path, key: str) -> Path:
    return state / manifest(state)[key]["backup"]


def pipfix_files(directory: Path) -> list[str]:
    """Anything of pipfix's (state dirs, backups, temporary files) below ``directory``."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                  if ".pipfix" in p.parts or p.name.startswith("tmp-") or p.suffix == ".orig")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
    # The originals are kept under PREFIX/.pipfix/extensions, listed by prefix-relative path;
    # nothing of pipfix's is left inside site-packages.
    assert pipfix_files(site) == []
    state = state_dir(prefix)
    module_key = f"lib/python{VERSION}/site-packages/{module.name}"
    record_key = f"lib/python{VERSION}/site-packages/pipfixdemo-1.0.dist-info/RECORD"
    files = manifest(state)
    assert set(files) == {module_key, record_key}
    assert files[module_key]["kind"] == "extension" and files[record_key]["kind"] == "record"
    assert files[module_key]["original_sha256"] == original[module_key]
    assert files[module_key]["sha256"] == fixed.sha256 == sha(module)
    assert files[record_key]["original_sha256"] == original[record_key]
    assert files[record_key]["sha256"] == sha(site / "pipfixdemo-1.0.dist-info" / "RECORD")
    assert sha(backup_of(state, module_key)) == original[module_key]
    assert sha(backup_of(state, record_key)) == original[record_key]
    assert fixed.backup == str(backup_of(state, module_key))
    assert [p.name for p in state.iterdir() if p.name.startswith("tmp-")] == []

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
    assert not state_dir(prefix).exists()
    assert "cannot open shared object file" in import_demo(python, site).stderr


def test_dry_run_writes_nothing(prefix: Path) -> None:
    before = tree_digest(prefix)
    report = fix_extensions([prefix], dry_run=True)
    assert [f.action for f in report.files] == ["would fix"]
    assert tree_digest(prefix) == before  # not even PREFIX/.pipfix


def test_killed_at_every_step_reruns_converge_and_restore(prefix: Path, tmp_path: Path) -> None:
    """A real process killed at each filesystem step: every file is either its original or
    pipfix's output, nothing of pipfix's is in site-packages, a re-run finishes the job, and
    restore gives the original tree back."""
    site = site_of(prefix)
    module = site / f"{DEMO_MODULE}{DEMO_SUFFIX}"
    original = content(prefix)
    traced = pipfix("fix-extensions", prefix,
                    env=clean_env(PYTHONPATH=str(SRC), PIPFIX_TEST_TRACE_STEPS="1"))
    assert traced.returncode == 0, traced.stderr
    steps = step_lines(traced.stderr)
    assert any("rename over " + str(module) in s for s in steps)
    done = content(prefix)
    allowed = {key: {original[key], done[key]} for key in original}
    restore_extensions(prefix)
    assert content(prefix) == original
    for number in range(1, len(steps) + 1):
        work = tmp_path / f"kill-{number}"
        shutil.copytree(prefix, work, symlinks=True)
        killed = pipfix("fix-extensions", work, env=clean_env(
            PYTHONPATH=str(SRC), PIPFIX_TEST_KILL_AT_STEP=str(number)))
        assert killed.returncode == -9, (number, killed.stderr)
        state = content(work)
        assert set(state) == set(original), number
        assert all(state[k] in allowed[k] for k in state), (number, steps[number - 1])
        assert pipfix_files(site_of(work)) == [], number
        rerun = pipfix("fix-extensions", work)
        assert rerun.returncode == 0, (number, steps[number - 1], rerun.stdout, rerun.stderr)
        assert content(work) == done, (number, steps[number - 1])
        assert [p.name for p in state_dir(work).iterdir() if p.name.startswith("tmp-")] == []
        results = restore_extensions(work)
        assert {r["action"] for r in results} == {"restored"}, (number, results)
        assert content(work) == original, number
        assert not state_dir(work).exists(), number


def test_restore_killed_at_every_step_converges(prefix: Path, tmp_path: Path) -> None:
    original = content(prefix)
    fix_extensions([prefix])
    fixed = content(prefix)
    allowed = {key: {original[key], fixed[key]} for key in original}
    traced = pipfix("restore", prefix,
                    env=clean_env(PYTHONPATH=str(SRC), PIPFIX_TEST_TRACE_STEPS="1"))
    assert traced.returncode == 0, traced.stderr
    steps = step_lines(traced.stderr)
    assert content(prefix) == original and not state_dir(prefix).exists()
    fix_extensions([prefix])
    for number in range(1, len(steps) + 1):
        work = tmp_path / f"kill-{number}"
        shutil.copytree(prefix, work, symlinks=True)
        killed = pipfix("restore", work, env=clean_env(
            PYTHONPATH=str(SRC), PIPFIX_TEST_KILL_AT_STEP=str(number)))
        assert killed.returncode == -9, (number, killed.stderr)
        state = content(work)
        assert all(state[k] in allowed[k] for k in state), (number, steps[number - 1])
        rerun = pipfix("restore", work)
        assert rerun.returncode == 0, (number, steps[number - 1], rerun.stderr)
        assert content(work) == original, (number, steps[number - 1])
        assert not state_dir(work).exists(), (number, steps[number - 1])


def test_explicit_path_and_cli_json(prefix: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = site_of(prefix) / f"{DEMO_MODULE}{DEMO_SUFFIX}"
    code = doctor_cli.main(["fix-extensions", "--json", str(module)])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["command"] == "fix-extensions" and data["schema"] == 1
    assert [f["action"] for f in data["files"]] == ["fixed"]
    assert data["files"][0]["removed"] == [stand_in_soname()]
    record_is_consistent(site_of(prefix))
    # a path inside an installation keeps its originals in the installation's state dir
    assert pipfix_files(site_of(prefix)) == []
    assert data["files"][0]["backup"].startswith(str(state_dir(prefix)) + os.sep)
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
    key = f"lib/python{VERSION}/site-packages/{module.name}"
    fix_extensions([prefix])
    module.write_bytes(module.read_bytes() + b"\0")  # e.g. reinstalled since
    changed = content(prefix)
    results = {r["kind"]: r for r in restore_extensions(prefix)}
    assert results["extension"]["action"] == "skipped"
    assert "changed since pipfix fixed it" in results["extension"]["reason"]
    assert backup_of(state_dir(prefix), key).is_file()
    assert results["record"]["action"] == "skipped"
    assert content(prefix) == changed
    # and fixing again refuses rather than overwrite the only original
    [again] = fix_extensions([prefix]).files
    assert again.action == "skipped" and "changed since pipfix fixed it" in again.reason
    assert backup_of(state_dir(prefix), key).is_file()


def reinstall(site: Path, module: Path) -> None:
    """Replace the demo distribution by another build of it (as pip install --force would)."""
    (site / module.name).unlink()
    shutil.rmtree(next(site.glob("*.dist-info")))
    install_module(site, module)


def test_a_reinstalled_module_is_fixed_again_once_its_stale_backup_is_deleted(
    prefix: Path, demo_module: Path, tmp_path: Path
) -> None:
    site = site_of(prefix)
    state = state_dir(prefix)
    module_key = f"lib/python{VERSION}/site-packages/{DEMO_MODULE}{DEMO_SUFFIX}"
    record_key = f"lib/python{VERSION}/site-packages/pipfixdemo-1.0.dist-info/RECORD"
    fix_extensions([prefix])
    rebuilt = tmp_path / "rebuilt" / demo_module.name
    rebuilt.parent.mkdir()
    rebuilt.write_bytes(demo_module.read_bytes() + b"\0")  # another build, still valid ELF
    reinstall(site, rebuilt)
    [refused] = fix_extensions([prefix]).files
    assert refused.action == "skipped"
    stale = backup_of(state, module_key)
    assert str(stale) in refused.reason and "delete that file" in refused.reason
    stale.unlink()  # what the message says to do
    [refused] = fix_extensions([prefix]).files  # RECORD was reinstalled too: its turn
    assert refused.action == "skipped" and "RECORD changed since pipfix saved it" in refused.reason
    assert module_key not in manifest(state)
    backup_of(state, record_key).unlink()
    reinstalled = content(prefix)
    [fixed] = fix_extensions([prefix]).files
    assert fixed.action == "fixed", fixed.reason
    assert manifest(state)[module_key]["original_sha256"] == sha(rebuilt)
    record_is_consistent(site)
    assert sorted(r["action"] for r in restore_extensions(prefix)) == ["restored", "restored"]
    assert content(prefix) == reinstalled


def test_a_missing_or_altered_backup_refuses_the_restore(prefix: Path) -> None:
    state = state_dir(prefix)
    module_key = f"lib/python{VERSION}/site-packages/{DEMO_MODULE}{DEMO_SUFFIX}"
    fix_extensions([prefix])
    fixed = content(prefix)
    backup = backup_of(state, module_key)
    saved = backup.read_bytes()
    backup.write_bytes(saved[:-1] + bytes([saved[-1] ^ 1]))
    with pytest.raises(PipfixError, match="altered"):
        restore_extensions(prefix)
    assert content(prefix) == fixed
    [report] = fix_extensions([prefix]).files
    assert report.action == "skipped" and "altered" in report.reason
    backup.unlink()
    with pytest.raises(PipfixError, match="missing"):
        restore_extensions(prefix)
    assert content(prefix) == fixed
    backup.write_bytes(saved)
    assert sorted(r["action"] for r in restore_extensions(prefix)) == ["restored", "restored"]


def test_interrupted_run_record_is_repaired(prefix: Path) -> None:
    """A run killed after replacing the module but before RECORD: the next run settles RECORD."""
    site = site_of(prefix)
    module = site / f"{DEMO_MODULE}{DEMO_SUFFIX}"
    record_file = next(site.glob("*.dist-info/RECORD"))
    record_before = record_file.read_bytes()
    original = content(prefix)
    fix_extensions([prefix])
    record_file.write_bytes(record_before)  # as if the RECORD write never happened
    [report] = fix_extensions([prefix]).files
    assert report.action == "already fixed" and report.reason == "RECORD row updated"
    record_is_consistent(site)
    key = f"lib/python{VERSION}/site-packages/{module.name}"
    assert sha(backup_of(state_dir(prefix), key)) == original[key]
    assert manifest(state_dir(prefix))[key.replace(module.name, record_file.parent.name)
                                       + "/RECORD"]["sha256"] == sha(record_file)


def test_killed_run_leftovers_are_cleaned_under_the_lock(prefix: Path) -> None:
    state = state_dir(prefix)
    (state / "tmp-killed").mkdir(parents=True)
    (state / "tmp-killed" / f"{DEMO_MODULE}{DEMO_SUFFIX}").write_bytes(b"half written")
    fix_extensions([prefix])
    assert not (state / "tmp-killed").exists()
    (state / "files" / "orphan.so").write_bytes(b"backed up, manifest never written")
    restore_extensions(prefix)
    assert not state.exists()


def test_a_moved_prefix_still_restores(prefix: Path, tmp_path: Path) -> None:
    original = content(prefix)
    fix_extensions([prefix])
    assert all(not os.path.isabs(k) and ".." not in k for k in manifest(state_dir(prefix)))
    moved = tmp_path / "moved"
    prefix.rename(moved)
    assert [f.action for f in fix_extensions([moved]).files] == ["already fixed"]
    results = restore_extensions(moved)
    assert sorted((r["kind"], r["action"]) for r in results) == [
        ("extension", "restored"), ("record", "restored")]
    assert all(r["path"].startswith(str(moved)) for r in results)
    assert content(moved) == original
    assert not state_dir(moved).exists()


def install_in_package(site: Path, module: Path, name: str = "pipfixpkg") -> Path:
    """``module`` as ``<name>/_demo<suffix>`` of a package, with a dist-info listing it all."""
    import base64

    package = site / name
    package.mkdir()
    files = {
        f"{name}/__init__.py": b"",
        f"{name}/_demo{DEMO_SUFFIX}": module.read_bytes(),
        f"{name}-1.0.dist-info/METADATA":
            f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
        f"{name}-1.0.dist-info/INSTALLER": b"pip\n",
    }
    (site / f"{name}-1.0.dist-info").mkdir()
    rows = []
    for path, payload in files.items():
        (site / path).write_bytes(payload)
        digest = base64.urlsafe_b64encode(hashlib.sha256(payload).digest()).rstrip(b"=")
        rows.append(f"{path},sha256={digest.decode()},{len(payload)}\n")
    rows.append(f"{name}-1.0.dist-info/RECORD,,\n")
    (site / f"{name}-1.0.dist-info" / "RECORD").write_text("".join(rows), encoding="utf-8")
    return package / f"_demo{DEMO_SUFFIX}"


def uninstall_like_pip(site: Path, dist_info: str) -> None:
    """What ``pip uninstall`` removes: the files RECORD lists, then directories left empty."""
    rows = record.parse((site / dist_info / "RECORD").read_text(encoding="utf-8"))
    directories = set()
    for row_path in rows:
        path = site / row_path
        path.unlink(missing_ok=True)
        directories.add(path.parent)
    for directory in sorted(directories, key=lambda d: len(d.parts), reverse=True):
        while directory != site:
            try:
                directory.rmdir()  # pip leaves a directory that holds files it did not install
            except OSError:
                break
            directory = directory.parent


def test_uninstall_after_fix_leaves_nothing_in_site_packages(
    tmp_path: Path, python: Path, demo_module: Path
) -> None:
    root = fake_prefix(tmp_path / "prefix", VERSION, python)
    site = site_of(root)
    module = install_in_package(site, demo_module)
    report = fix_extensions([root])
    assert [(Path(f.path), f.action) for f in report.files] == [(module, "fixed")]
    again = fix_extensions([root])  # a second run writes nothing there either
    assert [f.action for f in again.files] == ["already fixed"]
    assert pipfix_files(site) == []
    uninstall_like_pip(site, "pipfixpkg-1.0.dist-info")
    assert list(site.iterdir()) == []
    # the originals stay in the state dir; restore reports them and leaves site-packages alone
    results = restore_extensions(root)
    assert sorted((r["kind"], r["action"]) for r in results) == [
        ("extension", "skipped"), ("record", "skipped")]
    assert all("gone; backup kept" in r["reason"] for r in results)
    assert list(site.iterdir()) == []


def test_real_pip_uninstall_after_fix_leaves_nothing(tmp_path: Path, demo_module: Path) -> None:
    """The same with pip itself, in a venv (pip refuses to uninstall outside its environment)."""
    venv = tmp_path / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)],
                          capture_output=True, text=True, check=False, timeout=120)
    if made.returncode != 0:
        pytest.skip(f"cannot create a venv: {made.stderr.strip()}")
    site = site_of(venv)
    install_in_package(site, demo_module)
    assert [f.action for f in fix_extensions([venv]).files] == ["fixed"]
    assert pipfix_files(site) == []
    assert manifest(state_dir(venv))  # the originals are in VENV/.pipfix/extensions
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "uninstall",
         "-y", "pipfixpkg"], capture_output=True, text=True, check=False, timeout=300, env=env)
    if pip.returncode != 0 and "no such option: --python" in pip.stderr:
        pytest.skip("pip older than 22.3 has no --python")
    assert pip.returncode == 0, pip.stderr
    assert "Successfully uninstalled pipfixpkg-1.0" in pip.stdout
    assert list(site.iterdir()) == []


def test_explicit_file_outside_any_installation_keeps_a_pipfix_dir_next_to_it(
    tmp_path: Path, demo_module: Path
) -> None:
    loose = tmp_path / "loose"  # e.g. a pip install --target directory
    loose.mkdir()
    module = install_in_package(loose, demo_module)
    before = tree_digest(loose)
    [report] = fix_extensions([module]).files
    assert report.action == "fixed", report.reason
    state = module.parent / ".pipfix"
    assert set(manifest(state)) == {module.name, "../pipfixpkg-1.0.dist-info/RECORD"}
    assert report.backup == str(backup_of(state, module.name))
    # the only pipfix directory is the one next to the file: none in the dist-info
    assert [p for p in pipfix_files(loose) if not p.startswith("pipfixpkg/.pipfix")] == []
    record_is_consistent(loose)
    assert [f.action for f in fix_extensions([module]).files] == ["already fixed"]
    results = restore_state(ExtensionState.beside(module.parent))
    assert sorted(r["action"] for r in results) == ["restored", "restored"]
    after = {k: v for k, v in tree_digest(loose).items() if not k.startswith("pipfixpkg/.pipfix")}
    assert after == before


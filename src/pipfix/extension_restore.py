"""Undo fix-extensions: put back the exact originals of modules and RECORD files.

A backup is restored only over the very bytes pipfix wrote (recomputed from
the backup); a file changed since (reinstalled, upgraded) is reported and
its backup kept. RECORD is restored exactly once every row that differs from
its backup matches the files on disk again, else only those rows are.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from . import elf, record, store
from .errors import PipfixError
from .extension_state import backed_up_modules, differing_rows, without_libpython
from .record_owner import find_owner, matches


def restore_extensions(prefix: Path) -> list[dict[str, Any]]:
    """Put back every extension module (and RECORD) pipfix changed under ``prefix``'s
    site-packages. Call it under the target's lock (``operations.restore`` holds it).

    Each dict has ``kind`` ("extension" | "record"), ``path``, ``distribution``,
    ``version``, ``action`` ("restored" | "already original" | "skipped" |
    "partially restored") and ``reason``.
    """
    roots: dict[Path, Path] = {}  # resolved -> first spelling (lib64 is often a symlink)
    for root in sorted(Path(prefix).glob("lib*/python3*/site-packages")):
        if root.is_dir():
            roots.setdefault(root.resolve(), root)
    results = [_restore_module(m) for m in backed_up_modules(roots.values())]
    for record_file in _backed_up_records(roots.values()):
        results.append(_restore_record(record_file))
    return results


def _backed_up_records(roots: Iterable[Path]) -> Iterator[Path]:
    for root in roots:
        for backup in sorted(root.glob(f"*.dist-info/{store.STATE_DIRNAME}/RECORD"
                                       f"{store.BACKUP_SUFFIX}")):
            yield backup.parent.parent / "RECORD"


def _result(kind: str, path: Path, action: str, reason: str = "") -> dict[str, Any]:
    owner = find_owner(path) if kind == "extension" and path.exists() else None
    if kind == "record":
        name, _, version = path.parent.name[: -len(".dist-info")].partition("-")
    elif owner is not None:
        name, version = owner.distribution
    else:
        name, version = path.name, ""
    return {"kind": kind, "path": str(path), "distribution": name, "version": version,
            "action": action, "reason": reason}


def _drop_backup(backup: Path) -> None:
    backup.unlink()
    for leftover in backup.parent.glob("tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    store.clean_state_dir(backup.parent)


def _restore_module(path: Path) -> dict[str, Any]:
    backup = store.backup_path_for(path)
    if not path.is_file():
        return _result("extension", path, "skipped",
                       f"no longer installed; backup kept at {backup}")
    original = backup.read_bytes()
    current = path.read_bytes()
    if current == original:
        _drop_backup(backup)  # a restore interrupted after its rename
        return _result("extension", path, "already original")
    try:
        fixed, _ = without_libpython(original)
    except elf.ElfError as exc:
        return _result("extension", path, "skipped", f"backup unreadable: {exc}")
    if current != fixed:
        return _result("extension", path, "skipped",
                       f"changed since pipfix fixed it; backup kept at {backup}")
    store.replace_atomically(path, original, store.expect_sha256(record.sha256_hex(original)))
    _drop_backup(backup)
    return _result("extension", path, "restored")


def _restore_record(record_file: Path) -> dict[str, Any]:
    """Restore RECORD exactly when every row that differs from the backup matches disk again."""
    backup = store.backup_path_for(record_file)
    saved = backup.read_bytes()
    if not record_file.is_file():
        return _result("record", record_file, "skipped", f"gone; backup kept at {backup}")
    current = record_file.read_bytes()
    if current == saved:
        _drop_backup(backup)
        return _result("record", record_file, "already original")
    try:
        before = record.parse(saved.decode("utf-8"))
        differing = differing_rows(saved, current, backup)
    except (UnicodeDecodeError, record.RecordError, PipfixError) as exc:
        return _result("record", record_file, "skipped", str(exc))
    site = record_file.parent.parent
    settled, pending = {}, []
    for row_path in sorted(differing):
        entry = before.get(row_path)
        file = site / row_path
        if entry is not None and file.is_file() and matches(entry, file.read_bytes()):
            settled[row_path] = entry
        else:
            pending.append(row_path)
    if not pending:
        store.replace_atomically(record_file, saved, store.expect_sha256(record.sha256_hex(saved)))
        _drop_backup(backup)
        return _result("record", record_file, "restored")
    if settled:
        rewritten = record.rewrite(current, f"{record_file.parent.name}/RECORD", settled, (), ())
        store.replace_atomically(record_file, rewritten, store.expect_sha256(
            record.sha256_hex(rewritten)))
        return _result("record", record_file, "partially restored",
                       f"rows still fixed: {', '.join(pending)}")
    return _result("record", record_file, "skipped", f"rows still fixed: {', '.join(pending)}")

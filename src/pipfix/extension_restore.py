"""Undo fix-extensions: put back the exact originals of modules and RECORD files.

Everything is read from the installation's manifest
(``<prefix>/.pipfix/extensions/manifest.json``, see ``extension_state``), whose
paths are relative to the prefix: a moved prefix restores the same way.

- Every backup that will be used is checked against the manifest first; a
  missing or altered one refuses the whole restore (nothing is written).
- A module is restored only over the very bytes pipfix wrote (their sha256 is
  in the manifest); a file changed since (reinstalled, upgraded) or gone is
  reported and its backup kept, unless that backup was deleted by hand (then
  the entry is dropped: there is nothing left to restore).
- RECORD is restored exactly once every row that differs from its backup
  matches the files on disk again, else only those rows are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import record, store
from .errors import PipfixError
from .extension_state import Entry, ExtensionState, differing_rows, sha256_of
from .record_owner import find_owner, matches


def restore_extensions(prefix: Path) -> list[dict[str, Any]]:
    """Put back every extension module (and RECORD) pipfix changed in the installation
    at ``prefix``. Call it under the target's lock (``operations.restore`` holds it).

    Each dict has ``kind`` ("extension" | "record"), ``path``, ``distribution``,
    ``version``, ``action`` ("restored" | "already original" | "skipped" |
    "partially restored") and ``reason``.
    """
    return restore_state(ExtensionState.of_prefix(Path(prefix).absolute()))


def restore_state(state: ExtensionState) -> list[dict[str, Any]]:
    """``restore_extensions`` for any state directory (also one outside an installation)."""
    if not state.root.is_dir():
        return []
    store.remove_stale_staging(state.root)
    state.reload()
    entries = sorted(state.entries().items())
    currents: dict[str, bytes | None] = {}
    originals: dict[str, bytes | None] = {}
    for key, entry in entries:  # every backup that will be used is checked before any write
        path = state.path_of(key)
        current = currents[key] = path.read_bytes() if path.is_file() else None
        digest = sha256_of(current)
        needed = current is not None and digest != entry.original_sha256 and (
            entry.kind == "record" or digest == entry.sha256)
        originals[key] = state.original(key, current) if needed else None
    results = [_restore_module(state, key, entry, currents[key], originals[key])
               for key, entry in entries if entry.kind == "extension"]
    results += [_restore_record(state, key, entry, currents[key], originals[key])
                for key, entry in entries if entry.kind == "record"]
    state.sweep()
    return results


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


def _settled(state: ExtensionState, key: str, entry: Entry, current: bytes | None,
             original: bytes | None, what: str) -> dict[str, Any] | None:
    """The result when there is nothing to write (original back, changed, gone), else None.

    ``original`` is the verified backup when the file needs it: a module that is
    exactly what pipfix wrote, a RECORD that is not its original.
    """
    path = state.path_of(key)
    if sha256_of(current) == entry.original_sha256:
        state.forget(key)  # e.g. a restore interrupted after its rename
        return _result(entry.kind, path, "already original")
    if original is not None:
        return None
    backup = state.backup_path(entry)
    reason = "gone" if current is None else what
    if not backup.is_file():
        state.forget(key)  # given up: nothing left to restore
        return _result(entry.kind, path, "skipped", f"{reason}; its backup was deleted")
    return _result(entry.kind, path, "skipped", f"{reason}; backup kept at {backup}")


def _restore_module(state: ExtensionState, key: str, entry: Entry, current: bytes | None,
                    original: bytes | None) -> dict[str, Any]:
    done = _settled(state, key, entry, current, original, "changed since pipfix fixed it")
    if done is not None:
        return done
    assert original is not None
    path = state.path_of(key)
    store.replace_atomically(path, original, store.expect_sha256(entry.original_sha256),
                             staging_root=state.root)
    state.forget(key)
    return _result("extension", path, "restored")


def _restore_record(state: ExtensionState, key: str, entry: Entry, current: bytes | None,
                    original: bytes | None) -> dict[str, Any]:
    """Restore RECORD exactly when every row that differs from the backup matches disk again."""
    done = _settled(state, key, entry, current, original, "changed since pipfix rewrote it")
    if done is not None:
        return done
    assert original is not None and current is not None
    record_file = state.path_of(key)
    backup = state.backup_path(entry)
    try:
        before = record.parse(original.decode("utf-8"))
        differing = differing_rows(original, current, backup)
    except (UnicodeDecodeError, record.RecordError, PipfixError) as exc:
        return _result("record", record_file, "skipped", str(exc))
    site = record_file.parent.parent
    settled, pending = {}, []
    for row_path in sorted(differing):
        row = before.get(row_path)
        file = site / row_path
        if row is not None and file.is_file() and matches(row, file.read_bytes()):
            settled[row_path] = row
        else:
            pending.append(row_path)
    if not pending:
        store.replace_atomically(record_file, original,
                                 store.expect_sha256(entry.original_sha256),
                                 staging_root=state.root)
        state.forget(key)
        return _result("record", record_file, "restored")
    if settled:
        rewritten = record.rewrite(current, f"{record_file.parent.name}/RECORD", settled, (), ())
        store.replace_atomically(record_file, rewritten, store.expect_sha256(
            record.sha256_hex(rewritten)), staging_root=state.root)
        state.set_written(record_file, rewritten)
        return _result("record", record_file, "partially restored",
                       f"rows still fixed: {', '.join(pending)}")
    return _result("record", record_file, "skipped", f"rows still fixed: {', '.join(pending)}")

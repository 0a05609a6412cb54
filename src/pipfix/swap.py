"""Swap a staged installation into place, so that it is never half-installed.

Order of a swap:

1. The new files are staged in ``<target>/.pipfix/stage-*`` (same filesystem).
2. Every file that will be replaced or removed gets an exact backup (a hard
   link, so it costs nothing) and a restore manifest lists them.
3. A journal lists the renames and removals; it is written atomically.
4. The renames run; each is idempotent, so a re-run after a kill at any
   point simply completes the journal (roll forward: everything it renames
   was verified before the journal was written).
5. The journal is removed, then the staging directory.

A kill before step 3 leaves the target untouched (the next run discards the
stage and the unused backups). A step that fails for good (a file that cannot
be replaced) rolls the steps already done back from the backups.

``restore`` is a swap too: the backups are staged (hard links), a journal lists
the renames back, the removals of what the swap added and, last, forgetting
the manifest. A restore killed half-way is therefore completed by the next run,
whichever command it is -- an ``apply`` never starts from a half-restored
installation that still carries pipfix's provenance.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from . import faults, store
from .errors import PipfixError, describe_os_error

JOURNAL = "journal.json"
INSTALLS = "installs"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Operation:
    op: str  # "replace" or "remove"
    path: Path
    staged: Path | None = None


def _relative(path: Path, state_dir: Path) -> str:
    """Paths are kept relative to the installation, so a moved prefix can still restore."""
    return os.path.relpath(path, state_dir.parent)


def _absolute(stored: str, state_dir: Path) -> Path:
    return Path(os.path.normpath(state_dir.parent / stored))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_json(path: Path, payload: object, state_dir: Path) -> None:
    data = (json.dumps(payload, indent=1, sort_keys=True) + "\n").encode()
    store.replace_atomically(
        path, data, store.expect_sha256(hashlib.sha256(data).hexdigest()), staging_root=state_dir
    )


def _backup_file(path: Path, backup: Path) -> None:
    """Keep the bytes of ``path`` at ``backup``: a hard link, else a verified copy.

    A file already at ``backup`` is left over by a run killed before its
    manifest listed it (it backs up nothing yet): it is replaced. Linking it
    again would fail, and copying over a link to ``path`` itself would raise
    SameFileError -- a re-run that could never converge.
    """
    backup.parent.mkdir(parents=True, exist_ok=True)
    faults.step(f"backup {path}")
    if backup.exists() or backup.is_symlink():
        backup.unlink()
    try:
        os.link(path, backup)
    except OSError:
        # No hard links here (another filesystem, an immutable file): copy, via a
        # temporary name so that a kill never leaves half a backup under its name.
        partial = backup.with_name(backup.name + ".partial")
        shutil.copy2(path, partial)
        with partial.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, backup)


def prepare(state_dir: Path, key: str, operations: list[Operation]) -> Path:
    """Back up what the operations touch and write the restore manifest (steps 2)."""
    install_dir = state_dir / INSTALLS / key
    files_dir = install_dir / "files"
    if (install_dir / MANIFEST).is_file():
        entries = _read_manifest(install_dir)["entries"]
    else:
        entries = []
        # Backups without a manifest belong to a run killed before it wrote one,
        # hence before its journal: nothing was swapped, they back up nothing.
        shutil.rmtree(files_dir, ignore_errors=True)
    # A path backed up by an earlier swap keeps that backup: it holds the original.
    known = {entry["path"] for entry in entries}
    for operation in operations:
        if _relative(operation.path, state_dir) in known:
            continue
        if operation.path.exists():
            backup = files_dir / _relative(operation.path, state_dir).replace("..", "__up__")
            _backup_file(operation.path, backup)
            entries.append(
                {
                    "path": _relative(operation.path, state_dir),
                    "backup": str(backup.relative_to(install_dir)),
                    "sha256": _sha256(backup),
                    "mode": operation.path.stat().st_mode & 0o7777,
                }
            )
        else:
            entries.append({"path": _relative(operation.path, state_dir), "backup": None})
    root = state_dir.parent
    created: set[str] = set(_read_manifest(install_dir).get("created_dirs", [])) if known else set()
    for operation in operations:
        for parent in operation.path.parents:
            if parent == root or root not in parent.parents or parent.exists():
                break
            created.add(_relative(parent, state_dir))
    install_dir.mkdir(parents=True, exist_ok=True)
    _write_json(
        install_dir / MANIFEST, {"entries": entries, "created_dirs": sorted(created)}, state_dir
    )
    return install_dir


def _install_for(state_dir: Path, operations: list[Operation]) -> str | None:
    """The restore manifest (its directory name) that backs up every path of a swap."""
    wanted = {_relative(o.path, state_dir) for o in operations}
    for manifest in sorted((state_dir / INSTALLS).glob(f"*/{MANIFEST}")):
        try:
            entries = _read_manifest(manifest.parent)["entries"]
        except PipfixError:
            continue
        if wanted <= {entry["path"] for entry in entries}:
            return manifest.parent.name
    return None


def _journal(state_dir: Path, operations: list[Operation], stage: Path) -> dict[str, Any]:
    return {
        "install": _install_for(state_dir, operations),
        "stage": _relative(stage, state_dir),
        "operations": [
            {
                "op": o.op,
                "path": _relative(o.path, state_dir),
                "staged": _relative(o.staged, state_dir) if o.staged else None,
            }
            for o in operations
        ],
    }


def run(state_dir: Path, operations: list[Operation], stage: Path) -> None:
    """Write the journal and carry it out (steps 3 to 5)."""
    _write_json(state_dir / JOURNAL, _journal(state_dir, operations, stage), state_dir)
    complete(state_dir)


def complete(state_dir: Path) -> bool:
    """Finish an interrupted swap, if there is one; True when one was finished."""
    journal_path = state_dir / JOURNAL
    if not journal_path.exists():
        _discard_stages(state_dir)
        return False
    try:
        journal = json.loads(journal_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PipfixError(journal_path, f"unreadable journal: {exc}") from None
    touched: set[Path] = set()
    for item in journal["operations"]:
        if item["op"] == "forget":
            _forget(state_dir, item)
            continue
        path = _absolute(item["path"], state_dir)
        staged = _absolute(item["staged"], state_dir) if item.get("staged") else None
        try:
            if item["op"] == "replace" and staged is not None and staged.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                faults.step(f"rename {staged} -> {path}")
                os.replace(staged, path)
            elif item["op"] == "remove" and (path.exists() or path.is_symlink()):
                faults.step(f"remove {path}")
                path.unlink()
        except OSError as exc:
            _give_up(state_dir, journal, path, describe_os_error(exc))
        touched.add(path.parent)
    for directory in sorted(touched):
        if directory.exists():
            store.fsync_directory(directory)
    _finish(state_dir)
    return True


def _finish(state_dir: Path) -> None:
    faults.step("remove journal")
    (state_dir / JOURNAL).unlink()
    store.fsync_directory(state_dir)
    _discard_stages(state_dir)


def _give_up(state_dir: Path, journal: dict[str, Any], path: Path, reason: str) -> NoReturn:
    """A step of the swap failed for good (a file that cannot be replaced, another
    filesystem): roll every step done so far back from the backups, so that the
    installation is exactly as before, then say so."""
    if journal.get("kind") == "restore":
        # The patched files it replaced are gone: a restore can only go forward.
        raise PipfixError(
            path, f"cannot restore: {reason}; the rest of the restore is done by the next "
            "run once this file can be replaced"
        )
    try:
        _roll_back(state_dir, journal)
    except (PipfixError, OSError) as exc:
        # Half rolled back: each file is still either the original or the new one,
        # and the manifest holds every original; the journal must go, so that
        # ``restore`` (which completes journals first) can put them back.
        _finish(state_dir)
        raise PipfixError(
            path, f"cannot replace: {reason}; rolling back failed too ({exc}); "
            "run 'pipfix restore' to put the originals back"
        ) from None
    _finish(state_dir)
    raise PipfixError(path, f"cannot replace: {reason}; rolled back, no installed file changed")


def _roll_back(state_dir: Path, journal: dict[str, Any]) -> None:
    """Undo the journal's steps that were done, from the manifest's backups."""
    key = journal.get("install")
    if not key:
        raise PipfixError(state_dir / JOURNAL, "names no restore manifest")
    install_dir = state_dir / INSTALLS / str(key)
    entries = {entry["path"]: entry for entry in _read_manifest(install_dir)["entries"]}
    for item in reversed(journal["operations"]):
        path = _absolute(item["path"], state_dir)
        if item["op"] == "replace":
            staged = _absolute(item["staged"], state_dir) if item.get("staged") else None
            done = staged is not None and not staged.exists()
        else:
            done = not (path.exists() or path.is_symlink())
        if not done:
            continue
        entry = entries[item["path"]]
        if entry["backup"] is None:
            if path.exists() or path.is_symlink():
                faults.step(f"roll back {path}")
                path.unlink()
            continue
        backup = install_dir / entry["backup"]
        if _sha256(backup) != entry["sha256"]:
            raise PipfixError(backup, "backup is altered")
        faults.step(f"roll back {path}")
        store.replace_atomically(
            path, backup.read_bytes(), store.expect_sha256(entry["sha256"]), staging_root=state_dir
        )
        os.chmod(path, entry["mode"])


def _discard_stages(state_dir: Path) -> None:
    if state_dir.is_dir():
        for stage in state_dir.glob("stage-*"):
            shutil.rmtree(stage, ignore_errors=True)


def _prune_created(directories: list[Path]) -> None:
    """Remove the directories the swap created, once the files it added are gone."""
    for directory in sorted(directories, key=lambda p: len(p.parts), reverse=True):
        cache = directory / "__pycache__"
        if cache.is_dir() and not any(cache.iterdir()):
            cache.rmdir()
        with contextlib.suppress(OSError):  # not empty: something else was put there since
            directory.rmdir()


def _read_manifest(install_dir: Path) -> dict[str, Any]:
    manifest_path = install_dir / MANIFEST
    try:
        manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PipfixError(manifest_path, f"unreadable restore manifest: {exc}") from None
    return manifest


def check_backups(state_dir: Path) -> None:
    """Every backup of every restore manifest is there, with its recorded sha256.

    ``restore`` refuses (and changes nothing) otherwise: a missing or altered
    backup is never guessed at. Call it before restoring anything else, so that
    one bad backup does not leave a restore half done.
    """
    for manifest in sorted((state_dir / INSTALLS).glob(f"*/{MANIFEST}")):
        install_dir = manifest.parent
        for entry in _read_manifest(install_dir)["entries"]:
            if entry["backup"] is not None:
                backup = install_dir / entry["backup"]
                if not backup.is_file() or _sha256(backup) != entry["sha256"]:
                    raise PipfixError(backup, "backup is missing or altered; refusing to restore")


def restore(state_dir: Path, install_dir: Path) -> list[str]:
    """Put back every file of the manifest byte for byte; remove what the swap added.

    Journalled like a swap (see the module's docstring): staged hard links of the
    backups are renamed into place, so a kill at any point is completed later.
    """
    manifest = _read_manifest(install_dir)
    check_backups(state_dir)  # all of them: the other manifests are restored next
    stage = Path(tempfile.mkdtemp(prefix="stage-", dir=state_dir))
    operations: list[Operation] = []
    restored = []
    for number, entry in enumerate(manifest["entries"]):
        path = _absolute(str(entry["path"]), state_dir)
        if entry["backup"] is None:
            operations.append(Operation("remove", path))
            if path.suffix == ".py":  # bytecode never outlives the source it was made from
                caches = path.parent.glob(f"__pycache__/{path.stem}.*.pyc")
                operations.extend(Operation("remove", cache) for cache in sorted(caches))
        else:
            staged = stage / str(number)
            _backup_file(install_dir / str(entry["backup"]), staged)  # link (or copy) back
            os.chmod(staged, entry["mode"])
            operations.append(Operation("replace", path, staged))
        restored.append(str(path))
    journal = _journal(state_dir, operations, stage)
    journal["kind"] = "restore"
    journal["operations"].append(
        {
            "op": "forget",
            "path": _relative(install_dir, state_dir),
            "created_dirs": manifest.get("created_dirs", []),
        }
    )
    _write_json(state_dir / JOURNAL, journal, state_dir)
    complete(state_dir)
    return restored


def _forget(state_dir: Path, item: dict[str, Any]) -> None:
    """Last step of a restore: prune what the swap created, drop the manifest and backups.

    The manifest goes first: without it the backups back up nothing (``prepare``
    discards such leftovers), so a kill while they are removed changes nothing.
    """
    _prune_created([_absolute(str(d), state_dir) for d in item.get("created_dirs", [])])
    install_dir = _absolute(item["path"], state_dir)
    manifest = install_dir / MANIFEST
    if manifest.exists():
        faults.step(f"remove backups {install_dir}")
        manifest.unlink()
        store.fsync_directory(install_dir)
    shutil.rmtree(install_dir, ignore_errors=True)

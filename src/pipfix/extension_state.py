"""What fix-extensions and its restore agree on: the fix itself, and where the originals are.

The exact originals of the files fix-extensions changes (extension modules and
the RECORD files listing them) are kept in a *state directory*, together with
a manifest and the temporary files of every write:

- For files of an installation (a TARGET, or explicit paths inside a prefix or
  venv): ``<prefix>/.pipfix/extensions/``. Nothing of pipfix's is ever put
  inside site-packages, so ``pip uninstall`` removes a distribution completely
  (no stray ``.pipfix`` directory keeps a package directory or a dist-info
  alive). The manifest's paths are relative to the prefix, so a moved prefix
  still restores; the directory is on the prefix's filesystem, so every rename
  stays atomic (a file on another filesystem is refused, not copied).
- For explicit paths outside any installation: a ``.pipfix`` directory next to
  the named file, or inside the named directory, with paths relative to the
  directory that holds it. The RECORD of such a file is backed up there too.

``<state>/manifest.json`` (schema 1, replaced atomically on every change)::

    {"schema": 1,
     "files": {"lib/python3.12/site-packages/pkg/_ext.abi3.so": {
                   "kind": "extension" | "record",
                   "backup": "files/lib/python3.12/site-packages/pkg/_ext.abi3.so",
                   "original_sha256": hex,   # the exact original, kept at "backup"
                   "sha256": hex}}}          # what pipfix last wrote there

An entry is written (with its backup) before pipfix first changes the file,
so a killed run never leaves a changed file the manifest does not know. Both
fix (``already fixed``) and restore compare the file with the manifest's
``sha256``, so a restore only ever replaces a file that is exactly what pipfix
wrote. A backup deleted by hand while its file no longer is what pipfix wrote
(reinstalled since) is taken as given up, and its entry dropped; a missing or
altered backup that is still needed is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from . import elf, linkage, record, store
from .errors import PipfixError, describe_os_error

EXTENSIONS = "extensions"
MANIFEST = "manifest.json"
FILES = "files"
SCHEMA = 1
KINDS = ("extension", "record")


def without_libpython(original: bytes) -> tuple[bytes, tuple[str, ...]]:
    """``original`` minus every libpython DT_NEEDED entry, and the names removed."""
    names = linkage.libpython_names(elf.parse(original).needed)
    fixed = original
    for name in names:
        fixed = elf.remove_needed(fixed, name)
    return fixed, names


def differing_rows(saved: bytes, current: bytes, where: Path) -> set[str]:
    """Paths whose RECORD row differs between a RECORD backup and the current RECORD."""
    try:
        before = record.parse(saved.decode("utf-8"))
        after = record.parse(current.decode("utf-8"))
    except (UnicodeDecodeError, record.RecordError) as exc:
        raise PipfixError(where, f"cannot compare RECORD with its backup: {exc}") from None
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def sha256_of(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


def canonical(path: Path) -> Path:
    """``path`` with its directories resolved (lib64 -> lib), the file itself not followed."""
    path = path.absolute()
    return path.parent.resolve() / path.name


def is_within(path: Path, directory: Path) -> bool:
    return canonical(path).is_relative_to(directory.resolve())


@dataclass(frozen=True)
class Entry:
    """One backed-up file of the manifest."""

    kind: str  # "extension" | "record"
    backup: str  # relative to the state directory
    original_sha256: str
    sha256: str  # what pipfix last wrote (the original's, until it writes)

    @property
    def written(self) -> bool:
        return self.sha256 != self.original_sha256


class ExtensionState:
    """The manifest and backups of one state directory (use it under the target's lock)."""

    def __init__(self, root: Path, base: Path, confined: bool = False) -> None:
        self.root = root  # manifest.json, files/, tmp-* staging
        self.base = base  # manifest paths are relative to it
        self.confined = confined  # every path is inside base (an installation's prefix)
        self._entries: dict[str, Entry] | None = None

    @classmethod
    def of_prefix(cls, prefix: Path) -> ExtensionState:
        """``<prefix>/.pipfix/extensions``: the state of an installation's files."""
        return cls(prefix / store.STATE_DIRNAME / EXTENSIONS, prefix, confined=True)

    @classmethod
    def beside(cls, directory: Path) -> ExtensionState:
        """``<directory>/.pipfix``: the state of files outside any installation."""
        return cls(directory / store.STATE_DIRNAME, directory)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    # -- paths -------------------------------------------------------------------------

    def key(self, path: Path) -> str:
        """``path`` relative to the base, as the manifest spells it."""
        key = Path(os.path.relpath(canonical(path), self.base.resolve())).as_posix()
        if self.confined and not self._inside(key):
            raise PipfixError(path, f"resolves outside {self.base}; pipfix keeps the originals "
                              "of an installation's files by their path inside its prefix")
        return key

    @staticmethod
    def _inside(key: str) -> bool:
        return not os.path.isabs(key) and ".." not in Path(key).parts

    def path_of(self, key: str) -> Path:
        return Path(os.path.normpath(self.base / key))

    def backup_path(self, entry: Entry) -> Path:
        return self.root / entry.backup

    def modules(self) -> Iterator[Path]:
        """The extension modules this state holds an original of (fixed before)."""
        for key, entry in sorted(self.entries().items()):
            if entry.kind == "extension":
                yield self.path_of(key)

    # -- manifest ----------------------------------------------------------------------

    def reload(self) -> None:
        """Read the manifest again on next use (after taking the lock)."""
        self._entries = None

    def entries(self) -> dict[str, Entry]:
        if self._entries is None:
            self._entries = self._load()
        return self._entries

    def _load(self) -> dict[str, Entry]:
        path = self.manifest_path
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
            if data.get("schema") != SCHEMA:
                raise ValueError(f"schema {data.get('schema')!r}, expected {SCHEMA}")
            entries = {str(k): Entry(**v) for k, v in data["files"].items()}
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError,
                AttributeError) as exc:
            raise PipfixError(path, f"unreadable extensions manifest: {exc}") from None
        for key, entry in entries.items():
            backup = Path(entry.backup)
            if (entry.kind not in KINDS or not self._inside(entry.backup)
                    or backup.parts[:1] != (FILES,) or os.path.isabs(key)
                    or (self.confined and not self._inside(key))):
                raise PipfixError(path, f"unreadable extensions manifest: bad entry {key}")
        return entries

    def _save(self) -> None:
        entries = self.entries()
        if not entries:
            self._discard()
            return
        payload = {"schema": SCHEMA,
                   "files": {k: asdict(v) for k, v in sorted(entries.items())}}
        data = (json.dumps(payload, indent=1, sort_keys=True) + "\n").encode()
        self.ensure_root()
        store.replace_atomically(self.manifest_path, data,
                                 store.expect_sha256(hashlib.sha256(data).hexdigest()),
                                 staging_root=self.root)

    def _discard(self) -> None:
        """No entry left: remove the manifest, the backups and the directory if it is empty."""
        if self.manifest_path.exists():
            self.manifest_path.unlink()
            store.fsync_directory(self.root)
        shutil.rmtree(self.root / FILES, ignore_errors=True)
        store.remove_stale_staging(self.root)
        store.clean_state_dir(self.root)

    def ensure_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PipfixError(self.root, f"cannot create: {describe_os_error(exc)}") from None

    def check_same_filesystem(self, path: Path) -> None:
        """Refuse a file whose replacement could not be an atomic rename from the state dir."""
        anchor = self.root
        while not anchor.exists() and anchor != anchor.parent:
            anchor = anchor.parent
        if anchor.stat().st_dev != path.parent.stat().st_dev:
            raise PipfixError(path, f"not on the filesystem of {self.root}: pipfix keeps its "
                              "backups and temporary files there and renames must stay atomic")

    # -- originals ---------------------------------------------------------------------

    def original(self, key: str, current: bytes | None) -> bytes | None:
        """The verified original of the file at ``key`` (whose bytes now are ``current``).

        None when there is no entry, or when its backup was deleted while the file
        no longer is what pipfix wrote (the user gave that original up: ``forget``
        it). A backup that is altered, or missing while the file still holds
        pipfix's output, is refused: the original would be lost.
        """
        entry = self.entries().get(key)
        if entry is None:
            return None
        backup = self.backup_path(entry)
        if not backup.is_file():
            if entry.written and sha256_of(current) == entry.sha256:
                raise PipfixError(backup, f"backup of {key} is missing, so pipfix's change "
                                  "cannot be undone; reinstall its distribution to get the "
                                  "original back")
            return None
        try:
            saved = backup.read_bytes()
        except OSError as exc:
            raise PipfixError(backup, f"cannot read backup: {describe_os_error(exc)}") from None
        if sha256_of(saved) != entry.original_sha256:
            raise PipfixError(backup, f"backup of {key} was altered (its sha256 is not the "
                              "manifest's); refusing to use it")
        return saved

    def keep_original(self, path: Path, kind: str, original: bytes, written: bytes) -> Path:
        """Back up ``original`` (the verified bytes now at ``path``) and record that pipfix
        is about to write ``written`` there; before the first change to ``path``.

        An entry whose backup holds the same original is kept (its backup is never
        rewritten); any other entry must have been given up (``original`` returned None).
        """
        key = self.key(path)
        original_sha = hashlib.sha256(original).hexdigest()
        entry = self.entries().get(key)
        if entry is not None and entry.original_sha256 != original_sha:
            if self.backup_path(entry).exists():
                raise PipfixError(self.backup_path(entry), f"a different original of {key} is "
                                  "kept there; refusing to replace it")
            entry = None  # given up: its backup was deleted
        if entry is None:
            entry = Entry(kind, self._new_backup_name(key), original_sha, original_sha)
            backup = self.backup_path(entry)
            self.ensure_root()
            try:
                backup.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise PipfixError(backup.parent,
                                  f"cannot create: {describe_os_error(exc)}") from None
            store.replace_atomically(backup, original, store.expect_sha256(original_sha),
                                     staging_root=self.root)
        elif (not self.backup_path(entry).is_file()
              or store.sha256_file(self.backup_path(entry)) != original_sha):
            raise PipfixError(self.backup_path(entry), f"backup of {key} is missing or altered")
        self.entries()[key] = Entry(kind, entry.backup, original_sha,
                                    hashlib.sha256(written).hexdigest())
        self._save()
        return self.backup_path(entry)

    def _new_backup_name(self, key: str) -> str:
        """``files/<key>`` (``..`` spelled ``__up__``), unless another entry uses that name."""
        parts = ["__up__" if p == ".." else p for p in Path(key).parts]
        name = Path(FILES, *parts).as_posix()
        taken = {e.backup for e in self.entries().values()}
        candidate, number = name, 0
        while candidate in taken:
            number += 1
            candidate = f"{name}.{number}"
        return candidate

    def set_written(self, path: Path, written: bytes) -> None:
        """Pipfix wrote ``written`` to ``path`` (already in the manifest)."""
        key = self.key(path)
        entry = self.entries()[key]
        sha = hashlib.sha256(written).hexdigest()
        if entry.sha256 != sha:
            self.entries()[key] = Entry(entry.kind, entry.backup, entry.original_sha256, sha)
            self._save()

    def forget(self, key: str) -> None:
        """Drop the entry of ``key`` and its backup (restored, or given up)."""
        entry = self.entries().pop(key, None)
        if entry is None:
            return
        self._save()
        backup = self.backup_path(entry)
        if backup.is_file():
            backup.unlink()
        self._prune(backup.parent)

    def _prune(self, directory: Path) -> None:
        files = self.root / FILES
        while directory != files and files in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent
        if not self.entries():
            self._discard()

    def sweep(self) -> None:
        """Remove backups no entry refers to (left by a run killed between two steps)."""
        files = self.root / FILES
        if not files.is_dir():
            return
        wanted = {self.backup_path(e) for e in self.entries().values()}
        for directory, _, names in os.walk(files, topdown=False):
            for name in names:
                path = Path(directory) / name
                if path not in wanted:
                    path.unlink()
            if Path(directory) != files:
                store.clean_state_dir(Path(directory))
        if not self.entries():
            self._discard()

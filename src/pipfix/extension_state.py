"""What fix-extensions and its restore agree on: the fix itself, and where backups are.

Both sides recompute the fixed bytes from the backup (``without_libpython``),
so a restore only ever replaces a file that is exactly what pipfix wrote.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from . import elf, linkage, record, store
from .errors import PipfixError


def without_libpython(original: bytes) -> tuple[bytes, tuple[str, ...]]:
    """``original`` minus every libpython DT_NEEDED entry, and the names removed."""
    names = linkage.libpython_names(elf.parse(original).needed)
    fixed = original
    for name in names:
        fixed = elf.remove_needed(fixed, name)
    return fixed, names


def backed_up_modules(roots: Iterable[Path]) -> Iterator[Path]:
    """Modules under ``roots`` that have a pipfix backup (fixed before)."""
    for root in roots:
        for directory, subdirs, files in os.walk(root):
            if Path(directory).name != store.STATE_DIRNAME:
                continue
            subdirs[:] = []
            for name in files:
                if not name.endswith(store.BACKUP_SUFFIX):
                    continue
                original = Path(directory).parent / name[: -len(store.BACKUP_SUFFIX)]
                if linkage.SHARED_OBJECT.search(original.name):
                    yield original


def differing_rows(saved: bytes, current: bytes, where: Path) -> set[str]:
    """Paths whose RECORD row differs between a RECORD backup and the current RECORD."""
    try:
        before = record.parse(saved.decode("utf-8"))
        after = record.parse(current.decode("utf-8"))
    except (UnicodeDecodeError, record.RecordError) as exc:
        raise PipfixError(where, f"cannot compare RECORD with its backup: {exc}") from None
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}

"""The installed distribution whose RECORD lists a file, and that file's row.

When pipfix rewrites an installed file, the RECORD row of that file must
follow (sha256 and size), or pip's and installer's verification would see a
tampered file. Rows of every other file stay byte for byte (``record.rewrite``).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from installer.records import RecordEntry

from . import record
from .errors import PipfixError

_MAX_LEVELS = 8  # site-packages/pkg/sub/.../module.so


@dataclass(frozen=True)
class Owner:
    record_file: Path
    row_path: str  # the file's path as RECORD spells it (relative to site_dir)

    @property
    def site_dir(self) -> Path:
        return self.record_file.parent.parent

    @property
    def dist_info(self) -> str:
        return self.record_file.parent.name

    @property
    def distribution(self) -> tuple[str, str]:
        name, _, version = self.dist_info[: -len(".dist-info")].partition("-")
        return name, version

    def entries(self) -> dict[str, RecordEntry]:
        """Strictly parsed rows; PipfixError when RECORD cannot be trusted."""
        try:
            return record.parse(self.record_file.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, record.RecordError) as exc:
            raise PipfixError(self.record_file, f"cannot use RECORD: {exc}") from None

    def rewritten(self, original_record: bytes, data: bytes) -> bytes:
        """RECORD with this file's row describing ``data``; other rows untouched."""
        entry = record.entry_for(self.row_path, data)
        return record.rewrite(
            original_record, f"{self.dist_info}/RECORD", {self.row_path: entry}, (), ()
        )

    def verify(self, candidate: Path, data: bytes) -> None:
        """The RECORD written at ``candidate`` parses and describes ``data`` for this file."""
        try:
            entries = record.parse(candidate.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, record.RecordError) as exc:
            raise PipfixError(candidate, f"written RECORD does not parse: {exc}") from None
        entry = entries.get(self.row_path)
        if entry is None or not matches(entry, data):
            raise PipfixError(candidate, f"written RECORD does not describe {self.row_path}")


def matches(entry: RecordEntry, data: bytes) -> bool:
    """Does the RECORD row describe ``data`` (hash and size, where given)?"""
    if entry.size is not None and entry.size != len(data):
        return False
    return entry.hash_ is None or entry.hash_.validate(data)


def _row_paths(record_file: Path) -> list[str]:
    try:
        text = record_file.read_bytes().decode("utf-8", "replace")
    except OSError:
        return []
    return [row[0] for row in csv.reader(io.StringIO(text, newline="")) if row]


def find_owner(path: Path) -> Owner | None:
    """The ``*.dist-info/RECORD`` in an ancestor directory that lists ``path``."""
    target = os.path.normpath(path.absolute())
    for level, directory in enumerate(path.absolute().parents):
        if level >= _MAX_LEVELS:
            break
        for dist_info in sorted(directory.glob("*.dist-info")):
            record_file = dist_info / "RECORD"
            if not record_file.is_file():
                continue
            for row_path in _row_paths(record_file):
                if os.path.normpath(directory / row_path) == target:
                    return Owner(record_file, row_path)
    return None

"""RECORD files: parse with installer, rewrite only the rows that change.

Rows of members that pipfix does not touch are kept as they were, byte for
byte (line endings included), so a reviewer's diff of RECORD shows exactly the
files that changed.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable, Mapping

from installer.records import Hash, InvalidRecordEntry, RecordEntry
from installer.utils import copyfileobj_with_hashing

__all__ = [
    "ACCEPTED_HASHES", "SIGNATURE_NAMES", "RecordEntry", "RecordError",
    "entry_for", "parse", "rewrite", "sha256_hex",
]

# PEP 427: sha256 or stronger; md5 and sha1 are refused.
ACCEPTED_HASHES = frozenset({"sha256", "sha384", "sha512"})
SIGNATURE_NAMES = ("RECORD.jws", "RECORD.p7s")


class RecordError(ValueError):
    """RECORD cannot be parsed or does not meet the wheel spec."""


def parse(text: str) -> dict[str, RecordEntry]:
    """Entries by path; malformed rows, duplicates and weak hashes are errors."""
    entries: dict[str, RecordEntry] = {}
    for number, row in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
        if not row:
            continue
        if len(row) != 3:
            raise RecordError(f"RECORD row {number} has {len(row)} fields, expected 3")
        try:
            entry = RecordEntry.from_elements(*row)
        except InvalidRecordEntry as exc:
            raise RecordError(f"RECORD row {number} is invalid: {'; '.join(exc.issues)}") from None
        if entry.hash_ is not None and entry.hash_.name not in ACCEPTED_HASHES:
            raise RecordError(
                f"RECORD row {number} uses {entry.hash_.name} for {entry.path}; "
                "only sha256 or stronger is accepted"
            )
        if entry.path in entries:
            raise RecordError(f"RECORD lists {entry.path} twice")
        entries[entry.path] = entry
    return entries


def entry_for(path: str, payload: bytes) -> RecordEntry:
    """A sha256 entry for ``payload``, hashed by installer."""
    digest, size = copyfileobj_with_hashing(io.BytesIO(payload), io.BytesIO(), "sha256")
    return RecordEntry(path, Hash("sha256", digest), size)


def _row_text(entry: RecordEntry, newline: str) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=newline).writerow(entry.to_row())
    return buffer.getvalue()


def rewrite(
    original: bytes,
    record_path: str,
    updated: Mapping[str, RecordEntry],
    added: Iterable[RecordEntry],
    dropped: Iterable[str],
) -> bytes:
    """RECORD with ``updated`` rows replaced, ``added`` rows before RECORD's own row.

    Every other row stays exactly as it was.
    """
    dropped_set = set(dropped)
    added_list = list(added)
    lines = original.decode("utf-8").splitlines(keepends=True)
    newline = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    out: list[str] = []
    for line in lines:
        row = next(csv.reader([line]), [])
        path = row[0] if row else None
        if path in dropped_set:
            continue
        if path == record_path:
            out.extend(_row_text(entry, newline) for entry in added_list)
            added_list = []
        if path is not None and path in updated:
            out.append(_row_text(updated[path], newline))
        else:
            out.append(line if line.endswith(("\n", "\r")) else line + newline)
    out.extend(_row_text(entry, newline) for entry in added_list)
    return "".join(out).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

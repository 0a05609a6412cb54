"""RECORD files: parse with installer, rewrite only the rows that change.

Rows of members that pipfix does not touch are kept as they were, byte for
byte (line endings included), so a reviewer's diff of RECORD shows exactly the
files that changed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterable, Mapping

from installer.records import Hash, InvalidRecordEntry, RecordEntry
from installer.utils import copyfileobj_with_hashing

__all__ = [
    "ACCEPTED_HASHES", "SIGNATURE_NAMES", "RecordEntry", "RecordError",
    "entry_for", "matches", "parse", "rewrite", "sha256_hex",
]

# PEP 427: sha256 or stronger; md5 and sha1 are refused.
ACCEPTED_HASHES = frozenset({"sha256", "sha384", "sha512"})
SIGNATURE_NAMES = ("RECORD.jws", "RECORD.p7s")


_DIGEST = re.compile(r"[A-Za-z0-9_-]+")
_SIZE = re.compile(r"[0-9]+")


class RecordError(ValueError):
    """RECORD cannot be parsed or does not meet the wheel spec."""


# Unpadded urlsafe base64 of a digest of n bytes has ceil(4n/3) characters, and
# only that length decodes to n bytes.
_DIGEST_LENGTHS = {name: -(-hashlib.new(name).digest_size * 4 // 3) for name in ACCEPTED_HASHES}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _digest_ok(hash_: Hash) -> bool:
    """urlsafe base64 without padding, of the algorithm's digest size (what pip,
    installer and wheel all decode; anything else makes one of them fail)."""
    return (
        len(hash_.value) == _DIGEST_LENGTHS[hash_.name]
        and _DIGEST.fullmatch(hash_.value) is not None
    )


def parse(text: str) -> dict[str, RecordEntry]:
    """Entries by path; malformed rows, duplicates and weak hashes are errors."""
    entries: dict[str, RecordEntry] = {}
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:  # a NUL byte (Python < 3.11), a field over csv's size limit
        raise RecordError(f"RECORD is not valid CSV ({exc})") from None
    for number, row in enumerate(rows, start=1):
        if not row:  # installer and pip fail on an empty row, so refuse it here
            raise RecordError(f"RECORD row {number} is empty")
        if len(row) != 3:
            raise RecordError(f"RECORD row {number} has {len(row)} fields, expected 3")
        if _CONTROL.search(row[0]):
            # Only a quoted field can hold a line break; rewrite() works line by line.
            raise RecordError(f"RECORD row {number} has a control character in its path")
        try:
            entry = RecordEntry.from_elements(*row)
        except InvalidRecordEntry as exc:
            raise RecordError(f"RECORD row {number} is invalid: {'; '.join(exc.issues)}") from None
        if entry.hash_ is not None and entry.hash_.name not in ACCEPTED_HASHES:
            raise RecordError(
                f"RECORD row {number} uses {entry.hash_.name} for {entry.path}; "
                "only sha256 or stronger is accepted"
            )
        if entry.hash_ is not None and not _digest_ok(entry.hash_):
            raise RecordError(f"RECORD row {number} has a malformed digest for {entry.path}")
        if row[2] and not _SIZE.fullmatch(row[2]):
            raise RecordError(f"RECORD row {number} has a malformed size for {entry.path}")
        if entry.path in entries:
            raise RecordError(f"RECORD lists {entry.path} twice")
        entries[entry.path] = entry
    return entries


def matches(entry: RecordEntry, payload: bytes) -> bool:
    """``payload`` has the entry's size and hash (installer 0.7 and 1.x alike)."""
    if entry.size is not None and len(payload) != entry.size:
        return False
    return entry.hash_ is None or entry.hash_.validate(payload)


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

"""Content-addressed cache of patched wheels, in the user's cache directory.

Patching a wheel costs little except the codemods (libcst's import and parse);
the result depends only on the input bytes, its file name, pipfix's version
and the patch set.  So the patched wheel is kept under a key made of exactly
those, in ``$XDG_CACHE_HOME/pipfix`` (``~/.cache/pipfix`` when the variable is
unset or not absolute), and a later run on the same input skips libcst.

An entry is two files: ``<key>.whl``, the patched wheel, and ``<key>.json``,
the codemod ids of each changed file (what a plan reports besides the bytes).
Nothing in an entry is trusted: its sha256 must be the one its index names,
its provenance must name the input's sha256 and file name, this pipfix and
this patch set, and rebuilding the (fully verified) input with its changed
members must give exactly its bytes -- which makes every other byte, RECORD
included, pipfix's own -- and its changed modules must compile (``patcher``
checks that when it takes the entry).  Anything else is a miss, and the cold run that
follows writes a fresh entry over it.  The command then verifies the output
it writes as it does any other (``patcher.verify_output``).

Writes go to a temporary file in the cache directory and are renamed into
place (no fsync: a torn entry fails verification).  The cache never fails a
command: an unwritable or unreadable directory only means no cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import provenance, record, wheelfile, zipraw
from ._version import __version__
from .cachedir import FORMAT, cache_root, entry_paths

_STALE_TEMPORARY_SECONDS = 24 * 3600


@dataclass(frozen=True)
class CachedPatch:
    """A verified cache hit: the patched bytes and what changed, file by file."""

    data: bytes
    changes: tuple[tuple[str, tuple[str, ...], bytes], ...]  # (path, codemod ids, new bytes)


def _ordered_patches(changes: Sequence[tuple[str, tuple[str, ...]]]) -> tuple[str, ...]:
    ordered: dict[str, None] = {}
    for _, codemods in changes:
        ordered.update(dict.fromkeys(codemods))
    return tuple(ordered)


_Changes = list[tuple[str, tuple[str, ...]]]  # (path, codemod ids) of each changed member


def _parse_index(raw: bytes, wheel: wheelfile.VerifiedWheel) -> tuple[str, _Changes]:
    """(output sha256, [(path, codemod ids)]) from an entry's JSON, or ValueError."""
    index = json.loads(raw.decode("utf-8"))
    expected = {
        "format": FORMAT,
        "pipfix_version": __version__,
        "patch_set": provenance.PATCH_SET_VERSION,
        "input_filename": wheel.path.name,
        "input_sha256": wheel.sha256,
    }
    if not isinstance(index, dict) or any(index.get(k) != v for k, v in expected.items()):
        raise ValueError("cache index is for another input or pipfix")
    changes = []
    for item in index["changes"]:
        path, codemods = item["path"], item["codemods"]
        if not isinstance(path, str) or not all(isinstance(c, str) for c in codemods):
            raise ValueError("malformed cache index")
        changes.append((path, tuple(codemods)))
    output_sha256 = index["output_sha256"]
    if not changes or not isinstance(output_sha256, str):
        raise ValueError("malformed cache index")
    return output_sha256, changes


def _check_output(wheel: wheelfile.VerifiedWheel, data: bytes, changes: _Changes) -> CachedPatch:
    """The cached wheel, verified against its input; ValueError otherwise.

    Only the members the entry says changed (and the provenance) are read:
    the entry must then be byte for byte the rebuild of the verified input
    with them, so every other byte -- RECORD included -- is what pipfix
    itself would write, and verifying the whole archive again adds nothing.
    """
    members = {member.name: member for member in zipraw.read_archive(data).members}
    name = provenance.member_name(wheel.dist_info)
    if name not in members:
        raise ValueError("cached wheel lacks its provenance")
    found = provenance.Provenance.from_bytes(zipraw.read_payload(members[name]))
    paths = tuple(path for path, _ in changes)
    wanted = provenance.Provenance(
        pipfix_version=__version__,
        patch_set=provenance.PATCH_SET_VERSION,
        patches=_ordered_patches(changes),
        changed_files=paths,
        original_filename=wheel.path.name,
        original_sha256=wheel.sha256,
    )
    if found != wanted:
        raise ValueError("cached wheel's provenance does not match its input")
    if any(path not in wheel.contents or path not in members for path in paths):
        raise ValueError("cached wheel changes files its input does not have")
    changed = {path: zipraw.read_payload(members[path]) for path in paths}
    # Exactly what rebuilding the input with these members gives: nothing else differs.
    if wheelfile.rebuild(wheel, changed, {name: found.to_bytes()}) != data:
        raise ValueError("cached wheel is not a rebuild of its input")
    return CachedPatch(data, tuple((p, c, changed[p]) for p, c in changes))


def load(wheel: wheelfile.VerifiedWheel, root: Path | None = None) -> CachedPatch | None:
    """The verified patched output of ``wheel``, or None (miss, or a corrupt entry)."""
    root = root if root is not None else cache_root()
    if root is None:
        return None
    wheel_path, index_path = entry_paths(root, wheel.path.name, wheel.sha256)
    try:
        output_sha256, changes = _parse_index(index_path.read_bytes(), wheel)
        if wheel_path.stat().st_size > wheelfile.MAX_WHEEL_BYTES:
            return None
        data = wheel_path.read_bytes()
        if record.sha256_hex(data) != output_sha256:
            return None
        return _check_output(wheel, data, changes)
    except Exception:  # whatever is wrong with an entry, it is a miss
        return None


def _write_atomically(path: Path, data: bytes) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _remove_stale_temporaries(directory: Path) -> None:
    """Temporary files of runs killed mid-write (a day old: no live writer has them)."""
    now = time.time()
    for leftover in directory.glob(".tmp-*"):
        with contextlib.suppress(OSError):
            if now - leftover.stat().st_mtime > _STALE_TEMPORARY_SECONDS:
                leftover.unlink()


def store(
    wheel: wheelfile.VerifiedWheel,
    data: bytes,
    changes: Sequence[tuple[str, tuple[str, ...]]],
    root: Path | None = None,
) -> bool:
    """Keep ``data``, the verified patched output of ``wheel``; False if it could not be.

    ``changes`` holds (path, codemod ids) of each changed member, in plan order.
    """
    root = root if root is not None else cache_root()
    if root is None:
        return False
    wheel_path, index_path = entry_paths(root, wheel.path.name, wheel.sha256)
    index = {
        "format": FORMAT,
        "pipfix_version": __version__,
        "patch_set": provenance.PATCH_SET_VERSION,
        "input_filename": wheel.path.name,
        "input_sha256": wheel.sha256,
        "output_sha256": record.sha256_hex(data),
        "changes": [{"path": path, "codemods": list(codemods)} for path, codemods in changes],
    }
    try:
        wheel_path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(wheel_path.parent)
        # The wheel first: an index never names bytes that are not there yet.
        _write_atomically(wheel_path, data)
        _write_atomically(index_path, (json.dumps(index, indent=1) + "\n").encode("utf-8"))
        return True
    except Exception:  # a cache that cannot be written is no cache
        return False

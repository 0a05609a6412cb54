"""A first look at the input wheels, before pipfix verifies them.

The transform helper (``transform_helper``) starts with this look: it finds the
modules it will most likely be asked to transform, the glibc detection of
pip, packaging and setuptools above all, and transforms them while pipfix
itself is still importing and verifying.  So libcst's import, the longest single step of
a run, starts within milliseconds of the command instead of after it.

Nothing seen here is trusted or decides anything: pipfix verifies every wheel
in full and asks the helper for exactly the modules its plan needs, by their
sha256.  A wrong guess costs the helper some time and changes no result.  The
rules that spare libcst are those of a plan: a wheel pipfix already patched,
one with a cache entry, or modules the byte pre-filter rules out give nothing
to transform.  This module imports neither libcst nor pipfix's verification.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from . import provenance, zipraw
from .codemods.prefilter import could_need_change

# The modules pipfix changes in the pip and setuptools releases ensurepip has
# bundled: their glibc detection (pip's own, packaging's, old setuptools') and
# setuptools' module-level ctypes import on Windows.
LIKELY_FILE_NAMES = frozenset({"glibc.py", "_manylinux.py", "tags.py", "windows_support.py"})
# Bounds of a look (ensurepip's wheels are a few MiB, those modules a few KiB).
MAX_LOOK_BYTES = 64 * 2**20
MAX_MODULE_BYTES = 2**20
# The endings of the members a look reads: those modules, and pipfix's provenance record.
_ENDINGS = (*(f"/{name}" for name in sorted(LIKELY_FILE_NAMES)), provenance.member_name(""))


def is_likely(name: str) -> bool:
    """A member named like the modules the look reads (``LIKELY_FILE_NAMES``)."""
    return name.rpartition("/")[2] in LIKELY_FILE_NAMES


def likely_transforms(paths: Sequence[Path], use_cache: bool) -> list[tuple[str, bytes]]:
    """(member name, source) of the likely modules (``LIKELY_FILE_NAMES``) the byte
    pre-filter lets through, in the first of ``paths`` that has any; unverified."""
    for found in likely_transforms_each(paths, use_cache):
        if found:
            return found
    return []


def likely_transforms_each(
    paths: Sequence[Path], use_cache: bool
) -> Iterator[list[tuple[str, bytes]]]:
    """``likely_transforms`` of each of ``paths`` in turn, one wheel read per step
    (empty for a wheel that cannot be read: verification will say what is wrong)."""
    for path in paths:
        try:
            yield _likely_in(path, use_cache)
        except Exception:  # a guess: whatever is wrong, verification will say it
            yield []


def _likely_in(path: Path, use_cache: bool) -> list[tuple[str, bytes]]:
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > MAX_LOOK_BYTES:
            return []
        # Mapped: the look reads the central directory and a few members, not
        # the whole file (a file cut short meanwhile ends the helper: SIGBUS).
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            members = zipraw.find_members(data, _ENDINGS)
            if any(_is_provenance(member.name) for member in members):
                return []  # patched by pipfix: its plan transforms nothing
            if use_cache and _may_be_cached(path.name, data):
                return []  # its plan takes the cached output
            found = []
            for member in members:
                if is_likely(member.name) and member.size <= MAX_MODULE_BYTES:
                    source = zipraw.read_payload(member)
                    if could_need_change(source):
                        found.append((member.name, source))
            return found


def _may_be_cached(name: str, data: mmap.mmap) -> bool:
    """A cache entry may exist for this wheel (imported here: a run without the
    cache needs neither hashlib nor the cache's naming)."""
    import hashlib

    from . import cachedir

    return cachedir.may_hold(name, hashlib.sha256(data).hexdigest())


def _is_provenance(name: str) -> bool:
    """pipfix's provenance record in a top-level ``.dist-info`` directory."""
    top, _, _ = name.partition("/")
    return top.endswith(".dist-info") and name == provenance.member_name(top)

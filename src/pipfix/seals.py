"""Wheel files pipfix has verified in full before, so that it need not again.

Verifying a wheel inflates and hashes every member: most of the time of a
run that then has nothing to do (``check`` or ``apply`` on a prefix already
patched) or that takes its output from the cache.  After a full verification
(of an input, or of an output it wrote) pipfix leaves a seal: an empty file in
the user's cache named by a digest of the wheel's sha256, its file name and
pipfix's version.  A later run always hashes the bytes it read; when a seal
exists for that sha256 and name, it takes the wheel as verified and inflates
only the members it uses, each still checked against its CRC and size.

Only a seal's name is read, and the name is a sha256 digest, so a torn or
damaged seal cannot vouch for other bytes.  Seals live and die with the cache:
``--no-cache`` neither reads nor leaves them, and a cache directory that
cannot be written only means a full verification every time.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ._version import __version__
from .cachedir import cache_root

_SUBDIR = "verified-v1"


def _seal_path(sha256: str, filename: str) -> Path | None:
    root = cache_root()
    if root is None:
        return None
    material = "\0".join(("pipfix-seal", __version__, filename, sha256))
    return root / _SUBDIR / hashlib.sha256(material.encode("utf-8")).hexdigest()


def is_sealed(sha256: str, filename: str) -> bool:
    """The bytes with ``sha256`` named ``filename`` passed a full verification before."""
    path = _seal_path(sha256, filename)
    return path is not None and path.is_file()


def seal(sha256: str, filename: str) -> None:
    """Record that the bytes with ``sha256`` named ``filename`` verified in full."""
    path = _seal_path(sha256, filename)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
    except OSError:
        pass  # no seal: the next run verifies in full

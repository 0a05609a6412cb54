"""Where pipfix keeps what it may reuse between runs (patched wheels, seals),
and the names of the patched-wheel entries there (``cache`` reads and writes
them; the transform helper looks for one before pipfix's other imports)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from . import provenance
from ._version import __version__

# The format of a patched-wheel entry (``cache``): part of its key and directory.
FORMAT = 1
WHEELS_SUBDIR = f"wheels-v{FORMAT}"


def cache_root() -> Path | None:
    """``$XDG_CACHE_HOME/pipfix``, else ``~/.cache/pipfix``; None without a home."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "pipfix"
    try:
        return Path.home() / ".cache" / "pipfix"
    except RuntimeError:  # no HOME and no passwd entry
        return None


def entry_key(filename: str, sha256: str) -> str:
    """The key of the patched output of ``filename`` with content ``sha256``."""
    material = "\0".join(
        ("pipfix-cache", str(FORMAT), __version__, str(provenance.PATCH_SET_VERSION), filename,
         sha256)
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def entry_paths(root: Path, filename: str, sha256: str) -> tuple[Path, Path]:
    """The patched wheel and index files of that entry under ``root``."""
    key = entry_key(filename, sha256)
    directory = root / WHEELS_SUBDIR
    return directory / f"{key}.whl", directory / f"{key}.json"


def may_hold(filename: str, sha256: str, root: Path | None = None) -> bool:
    """Whether an entry for this input exists (``cache.load`` still checks it): a
    look that costs one ``stat``, before the input is even verified."""
    root = root if root is not None else cache_root()
    if root is None:
        return False
    return entry_paths(root, filename, sha256)[1].exists()

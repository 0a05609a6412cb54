"""Where pipfix keeps what it may reuse between runs (patched wheels, seals)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path | None:
    """``$XDG_CACHE_HOME/pipfix``, else ``~/.cache/pipfix``; None without a home."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "pipfix"
    try:
        return Path.home() / ".cache" / "pipfix"
    except RuntimeError:  # no HOME and no passwd entry
        return None

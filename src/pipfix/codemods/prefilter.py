"""Byte-level pre-filter: decides which files are worth parsing at all.

Most members of a wheel never mention ctypes; parsing them with libcst would only
cost time. This module must stay free of libcst.
"""

from __future__ import annotations

import re

_LOADER = re.compile(rb"\b(CDLL|PyDLL|LoadLibrary|cdll|pydll)\b")
_GLIBC_PROBE = b"gnu_get_libc_version"


def could_need_change(data: bytes) -> bool:
    """True if ``data`` mentions ctypes and either a library loader or the glibc probe."""
    if b"ctypes" not in data:
        return False
    return _GLIBC_PROBE in data or _LOADER.search(data) is not None


def is_glibc_detection_module(data: bytes) -> bool:
    """True for modules that look up the glibc version (the ctypes-import scope)."""
    return _GLIBC_PROBE in data

"""Byte-level pre-filter: decides which files are worth parsing at all.

Most members of a wheel never mention ctypes; parsing them with libcst would only
cost time. This module must stay free of libcst.
"""

from __future__ import annotations

import re

# The names of ctypes' library loaders, and the glibc probe's (``skeleton`` keeps
# every statement that names one of them).
LOADER_NAMES = ("CDLL", "PyDLL", "LoadLibrary", "cdll", "pydll")
GLIBC_PROBE = "gnu_get_libc_version"
_LOADER = re.compile(rb"\b(" + "|".join(LOADER_NAMES).encode("ascii") + rb")\b")
_GLIBC_PROBE = GLIBC_PROBE.encode("ascii")
# A plain ``import ctypes`` line in column 0: only a statement of the module body
# itself can start there.  A trailing comment does not change that.
_MODULE_LEVEL_IMPORT = re.compile(rb"(?m)^import ctypes\s*(?:#.*)?$")


def could_need_change(data: bytes) -> bool:
    """True if ``data`` mentions ctypes and a library loader, the glibc probe,
    or has a module-level ``import ctypes`` line."""
    if b"ctypes" not in data:
        return False
    return (
        _GLIBC_PROBE in data
        or mentions_a_loader(data)
        or _MODULE_LEVEL_IMPORT.search(data) is not None
    )


def mentions_a_loader(data: bytes) -> bool:
    """True if a ctypes loader name appears: ``dlopen-self`` cannot apply otherwise
    (a call can only reach a loader through its name or an import naming it)."""
    return _LOADER.search(data) is not None


def is_glibc_detection_module(data: bytes) -> bool:
    """True for modules that look up the glibc version (every ctypes import is in scope)."""
    return _GLIBC_PROBE in data


def has_module_level_ctypes_import(data: bytes) -> bool:
    """True if a line is a plain ``import ctypes`` (the rule that applies to any module)."""
    return _MODULE_LEVEL_IMPORT.search(data) is not None

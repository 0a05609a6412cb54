"""A fast stand-in for a statically linked musl CPython, as a ``sitecustomize.py``.

Variant "A" behaves like python-build-standalone's static builds: ``import
ctypes`` works, but every ``dlopen`` fails ("Dynamic loading not supported")
and ``os.confstr("CS_GNU_LIBC_VERSION")`` fails with EINVAL as musl's does.
Variant "B" is an interpreter with upstream ctypes: ``import ctypes`` itself
raises OSError, because ctypes runs ``PyDLL(None)`` at import time.

The real static-musl CPython in tests/e2e proves the same behaviour on the
real thing; this double makes the same failures reproducible in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

_COMMON = """\
# pipfix test double: behave like a statically linked musl CPython.
import errno as _errno
import os as _os

_DLOPEN_ERROR = "Dynamic loading not supported"
_real_confstr = getattr(_os, "confstr", None)


def _musl_confstr(name):
    if name in ("CS_GNU_LIBC_VERSION", _os.confstr_names.get("CS_GNU_LIBC_VERSION")):
        raise OSError(_errno.EINVAL, "Invalid argument")
    return _real_confstr(name)


if _real_confstr is not None:
    _os.confstr = _musl_confstr
"""

_VARIANT_A = """
import ctypes as _ctypes

_real_init = _ctypes.CDLL.__init__


def _no_dlopen(self, name, *args, **kwargs):
    raise OSError(_DLOPEN_ERROR)


_ctypes.CDLL.__init__ = _no_dlopen
"""

_VARIANT_B = '''
import sys as _sys


class _CtypesImportFails:
    """``import ctypes`` raises OSError, like upstream ctypes on a static build."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "ctypes" or name.startswith("ctypes."):
            raise OSError(_DLOPEN_ERROR)
        return None


_sys.meta_path.insert(0, _CtypesImportFails)
'''

VARIANTS = ("A", "B")


def sitecustomize_source(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}")
    return _COMMON + (_VARIANT_A if variant == "A" else _VARIANT_B)


def write_sitecustomize(directory: Path, variant: str) -> Path:
    """Write the double into ``directory`` (put it on sys.path) and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "sitecustomize.py"
    path.write_text(sitecustomize_source(variant), encoding="utf-8")
    return path

"""pipfix: make ensurepip's pip and setuptools work on static and musl CPython builds.

Python API for build hooks (each returns a typed :class:`RunReport`)::

    import pipfix
    report = pipfix.apply("/opt/python")          # patch in place, keep backups
    report = pipfix.check("/opt/python")          # report.exit_code: 0 ok, 1 needs patch
    report = pipfix.patch_wheel("pip-23.2.1-py3-none-any.whl", "out/")
    report = pipfix.restore("/opt/python")

User errors raise :class:`PipfixError` (``str(error)`` is the one-line message).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Union

from ._version import __version__
from .errors import PipfixError

if TYPE_CHECKING:
    from .reports import RunReport, WheelReport

Target = Union[str, Path]


def __getattr__(name: str) -> object:
    """``RunReport`` and ``WheelReport``, imported when first asked for: the command
    line forks its transform helper before it needs them (``cli``)."""
    if name in ("RunReport", "WheelReport"):
        from . import reports

        return getattr(reports, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _many(targets: Target | list[Target] | tuple[Target, ...] | None) -> list[Target]:
    if targets is None:
        return []
    if isinstance(targets, (str, Path)):
        return [targets]
    return list(targets)


def apply(target: Target | list[Target], dry_run: bool = False) -> RunReport:
    """Patch the ensurepip wheels of ``target`` in place (exact backups kept)."""
    from . import operations

    return operations.apply(_many(target), dry_run=dry_run)


def check(target: Target | list[Target] | None = None) -> RunReport:
    """Report which ensurepip wheels need patching (default: the running Python)."""
    from . import operations

    return operations.check(_many(target))


def restore(target: Target | list[Target]) -> RunReport:
    """Put back the exact original wheels."""
    from . import operations

    return operations.restore(_many(target))


def patch_wheel(
    path: Target | list[Target], out_dir: Target | None = None, in_place: bool = False
) -> RunReport:
    """Patch loose wheel files into ``out_dir`` (or in place)."""
    from . import operations

    return operations.patch_wheel(_many(path), out_dir, in_place=in_place)


def diff(target: Target | list[Target] | None = None) -> str:
    """The unified diff pipfix would apply."""
    from . import operations

    return operations.diff(_many(target))


__all__ = [
    "PipfixError",
    "RunReport",
    "WheelReport",
    "__version__",
    "apply",
    "check",
    "diff",
    "patch_wheel",
    "restore",
]

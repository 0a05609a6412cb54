"""Result types of the codemods; kept free of libcst so callers can import them cheaply."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CodemodInfo:
    """What a codemod is for: its id, a one-line why, and upstream references."""

    id: str
    why: str
    upstream: tuple[str, ...]


@dataclass(frozen=True)
class Unpatchable:
    """A dlopen(NULL) or ctypes import that could not be guarded without guessing."""

    path: str
    line: int
    reason: str


@dataclass(frozen=True)
class SourceResult:
    """The outcome of running every codemod over one source file."""

    source: bytes
    applied: tuple[str, ...]
    unpatchable: tuple[Unpatchable, ...]

    @property
    def changed(self) -> bool:
        return bool(self.applied)

"""Source rewrites that make glibc detection safe where dlopen(NULL) fails.

Interface used by the rest of pipfix (implementation: see the modules here):

* ``could_need_change(data: bytes) -> bool``: byte pre-filter, never imports libcst.
* ``transform_source(path: str, source: bytes) -> SourceResult``: parse with libcst
  (imported lazily), apply every codemod, return the new bytes, the ids of the
  codemods that changed something, and the shapes that could not be guarded.
  Files that ``ast`` proves out of every codemod's scope (``screen``) are
  returned unchanged without importing libcst.
* ``all_codemods() -> tuple[CodemodInfo, ...]``: id, why and upstream references.
"""

from __future__ import annotations

from .model import CodemodInfo, SourceResult, Unpatchable
from .prefilter import could_need_change

__all__ = [
    "CodemodInfo",
    "SourceResult",
    "Unpatchable",
    "all_codemods",
    "could_need_change",
    "transform_source",
]


def transform_source(path: str, source: bytes) -> SourceResult:
    """Apply every codemod to ``source``; ``path`` only labels Unpatchable reports."""
    if not could_need_change(source):
        return SourceResult(source, (), ())
    from .screen import screen

    in_scope, parsed = screen(source)
    if not in_scope:
        return SourceResult(source, (), ())
    from .engine import transform_source as transform

    return transform(path, source, in_scope, parsed)


def all_codemods() -> tuple[CodemodInfo, ...]:
    """The registered codemods, in the order they run."""
    from .engine import all_codemods as registered

    return registered()

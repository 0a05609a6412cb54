"""Runs the codemods over one source file (imported lazily: it pulls in libcst)."""

from __future__ import annotations

import ast
import warnings
from collections.abc import Collection
from typing import Protocol

import libcst as cst

from . import ctypes_import, dlopen_self, skeleton
from .helpers import Outcome
from .model import CodemodInfo, SourceResult, Unpatchable
from .prefilter import could_need_change
from .screen import parse, screen


class Codemod(Protocol):
    """What the modules in ``REGISTRY`` provide."""

    @property
    def INFO(self) -> CodemodInfo: ...

    def applies_to(self, source: bytes) -> bool: ...

    def run(self, module: cst.Module, source: bytes, /) -> Outcome: ...


# Run order, also the order of SourceResult.applied.  dlopen-self goes first so
# that a CDLL(None) sharing a try with the ctypes import still gets pip 24.2's
# own guard instead of relying on the ImportError handler ctypes-import widens.
REGISTRY: tuple[Codemod, ...] = (dlopen_self, ctypes_import)


def transform_source(
    path: str,
    source: bytes,
    in_scope: Collection[str] | None = None,
    parsed: ast.Module | None = None,
) -> SourceResult:
    """Parse ``source`` once, run every applicable codemod, keep bytes otherwise intact.

    ``in_scope``: the ids ``screen.codemods_in_scope`` returned for ``source``
    (computed here when not given); the others would change and report nothing.
    ``parsed``: ``ast.parse(source)``, as ``screen.screen`` returns it, if at hand.
    libcst parses only what the codemods can see (``transform_visible``) where
    that gives a clean change, the whole module otherwise (``transform_whole``).
    """
    if not could_need_change(source):
        return SourceResult(source, (), ())
    if in_scope is None:
        in_scope, parsed = screen(source)
    if not in_scope:
        return SourceResult(source, (), ())
    if parsed is None:
        parsed = parse(source)
    # CPython is the judge of valid Python: libcst accepts some sources that
    # compile() refuses (bad encodings, misplaced __future__ imports).  A tree
    # ``ast`` parsed from the source compiles with the same verdict, unparsed.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # old sources warn about escapes; not our call
            compile(source if parsed is None else parsed, path, "exec", dont_inherit=True)
    except SyntaxError as exc:
        reason = f"cannot parse: {exc.msg}"
        return SourceResult(source, (), (Unpatchable(path, exc.lineno or 0, reason),))
    except ValueError as exc:  # NUL bytes
        return SourceResult(source, (), (Unpatchable(path, 0, f"cannot parse: {exc}"),))
    visible = None if parsed is None else skeleton.visible_source(source, parsed)
    if visible is not None:
        result = transform_visible(path, source, visible, in_scope)
        if result is not None:
            return result
    return transform_whole(path, source, in_scope)


def transform_whole(path: str, source: bytes, in_scope: Collection[str]) -> SourceResult:
    """The codemods ``in_scope`` on the whole module ``source`` (which compiles)."""
    try:
        original = cst.parse_module(source)
    except cst.ParserSyntaxError as exc:
        return SourceResult(source, (), (_unparsable(path, source, exc),))
    module, applied, unpatchable = _run(path, original, source, in_scope)
    patched = patched_bytes(original, source, module) if applied else source
    return SourceResult(patched, tuple(applied), tuple(unpatchable))


def transform_visible(
    path: str, source: bytes, visible: bytes, in_scope: Collection[str]
) -> SourceResult | None:
    """The codemods on ``visible`` (``skeleton.visible_source(source, ...)``), their
    changed statements spliced into ``source``; None unless that is a clean change
    (libcst parses it, nothing is reported, each changed statement found once):
    then only ``transform_whole`` says exactly what happens."""
    try:
        original = cst.parse_module(visible)
    except cst.ParserSyntaxError:
        return None
    module, applied, unpatchable = _run(path, original, source, in_scope)
    if unpatchable:
        return None
    if not applied:
        return SourceResult(source, (), ())
    patched = _spliced(original, source, module, leading_lines=False)
    return None if patched is None else SourceResult(patched, tuple(applied), ())


def _run(
    path: str, original: cst.Module, source: bytes, in_scope: Collection[str]
) -> tuple[cst.Module, list[str], list[Unpatchable]]:
    """Every codemod in scope, in ``REGISTRY`` order, on the tree ``original`` of
    ``source``: the patched tree, the codemods that changed it, what they report."""
    module = original
    applied: list[str] = []
    unpatchable: list[Unpatchable] = []
    for codemod in REGISTRY:
        if codemod.INFO.id not in in_scope or not codemod.applies_to(source):
            continue
        outcome = codemod.run(module, source)
        if outcome.problems and module is not original:
            # Report line numbers of the input, not of the partly patched tree.
            outcome = codemod.run(original, source)
        unpatchable.extend(Unpatchable(path, line, reason) for line, reason in outcome.problems)
        if outcome.changed:
            applied.append(codemod.INFO.id)
            module = outcome.module
    return module, applied, unpatchable


def _same_frame(original: cst.Module, patched: cst.Module) -> bool:
    """Whether the codemods changed nothing but top-level statements."""
    return (
        len(patched.body) == len(original.body)
        and tuple(patched.header) == tuple(original.header)
        and tuple(patched.footer) == tuple(original.footer)
        and (patched.encoding, patched.default_indent, patched.default_newline)
        == (original.encoding, original.default_indent, original.default_newline)
        and patched.has_trailing_newline == original.has_trailing_newline
    )


def patched_bytes(original: cst.Module, source: bytes, patched: cst.Module) -> bytes:
    """``patched.bytes``, generating code only for the top-level statements that changed.

    The codemods rebuild only the nodes on the way to what they change, so every
    other top-level statement is the very node of ``original`` and its text is
    the source's.  Each changed statement's original text is replaced by its new
    one where it occurs -- exactly once in the source, or the whole module is
    generated (as it is when anything but the statements changed).
    """
    spliced = _spliced(original, source, patched, leading_lines=True)
    return patched.bytes if spliced is None else spliced


def _spliced(
    original: cst.Module, source: bytes, patched: cst.Module, *, leading_lines: bool
) -> bytes | None:
    """``source`` with the top-level statements that changed from ``original`` to
    ``patched`` replaced by their new code; None where that is not exact.

    ``leading_lines`` False: ``original`` was parsed from a skeleton of
    ``source`` (``transform_visible``), so the statements' leading lines are the
    skeleton's: they are left out of both texts, and must not have changed.
    """
    if not _same_frame(original, patched):
        return None
    encoding = original.encoding
    replacements: list[tuple[bytes, bytes]] = []
    for before, after in zip(original.body, patched.body):
        if after is before:
            continue
        if not leading_lines:
            if len(after.leading_lines) != len(before.leading_lines) or not all(
                a.deep_equals(b) for a, b in zip(after.leading_lines, before.leading_lines)
            ):
                return None
            before = before.with_changes(leading_lines=())
            after = after.with_changes(leading_lines=())
        replacements.append(
            (
                original.code_for_node(before).encode(encoding),
                patched.code_for_node(after).encode(encoding),
            )
        )
    return _splice(source, replacements)


def _splice(source: bytes, replacements: list[tuple[bytes, bytes]]) -> bytes | None:
    """``source`` with each old text replaced by its new one; None unless each old
    text occurs exactly once."""
    found: list[tuple[int, int, bytes]] = []
    for old, new in replacements:
        start = source.find(old)
        if start < 0 or source.find(old, start + 1) >= 0:
            return None
        found.append((start, start + len(old), new))
    result, position = [], 0
    for start, end, new in sorted(found):
        result += [source[position:start], new]
        position = end
    result.append(source[position:])
    return b"".join(result)


def _unparsable(path: str, source: bytes, exc: cst.ParserSyntaxError) -> Unpatchable:
    """Report a file libcst cannot parse, at the line CPython's parser names if it can."""
    try:
        ast.parse(source)
    except SyntaxError as error:
        return Unpatchable(path, error.lineno or exc.raw_line, f"cannot parse: {error.msg}")
    except ValueError:  # e.g. NUL bytes
        pass
    return Unpatchable(path, exc.raw_line, "libcst cannot parse this file")


def all_codemods() -> tuple[CodemodInfo, ...]:
    return tuple(codemod.INFO for codemod in REGISTRY)

"""A module's source with the top-level statements no codemod can see blanked out.

libcst builds a Python object for every node it parses: ~1.4 ms per KB of
source, most of the time the codemods take (pip's ``_manylinux.py``, 11.5 KB,
16 ms).  The codemods only ever act on, or look at, nodes that name ctypes, a
ctypes loader, the glibc probe, ``ImportError``, or a name some ctypes import
binds -- and libcst compares names as they are written.  A top-level statement
whose text holds none of those words is invisible to them, so libcst need not
parse it: each is replaced by as many empty lines (line numbers stay those of
the source), the rest is kept byte for byte.

The engine then only splices the statements the codemods changed back into
the whole source, and falls back to parsing the whole module whenever the
result is not a clean change (``engine.transform_visible``); a test runs both
ways on every candidate module of the pinned wheels.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator

from .prefilter import GLIBC_PROBE, LOADER_NAMES
from .screen import first_line, import_bindings, is_ctypes

# Words the codemods look for.  A statement whose text holds none of them, nor
# a name a ctypes import binds, is never read by a codemod.
_WORDS = ("ctypes", *LOADER_NAMES, GLIBC_PROBE, "ImportError")
_BOM = b"\xef\xbb\xbf"
_COMPOUND = (
    ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.If, ast.For, ast.AsyncFor,
    ast.While, ast.With, ast.AsyncWith, ast.Try,
)


def visible_source(source: bytes, tree: ast.Module) -> bytes | None:
    """``source`` with every top-level statement no codemod can see replaced by
    empty lines; None when none is, or when in doubt (then libcst parses it all).

    ``tree`` is ``ast.parse(source)``.  Kept as they are: every line outside a
    statement (comments, blank lines, an encoding declaration), statements that
    share a line, star imports, and every statement before the first one that
    opens an indented block on a line of its own.  libcst takes the module's
    default indentation from that block, and writes the guards it adds with it:
    if that statement is hidden, a stand-in block (``if 1:`` and ``pass``,
    indented alike) takes two of its lines.
    """
    if not tree.body or source.startswith(_BOM):
        return None
    words = _words(tree)
    if words is None:
        return None
    lines: list[bytes] = source.splitlines(keepends=True)
    shown: list[bytes] = list(lines)
    indented = False
    for first, last, statements in _groups(tree.body):
        opening = None if indented else _opening(statements, lines)
        if not indented and opening is None:
            continue  # before the first indented block (or in doubt): kept
        indented = True
        if any(_star_import(statement) for statement in statements):
            continue  # may bind any name, ctypes' too
        if words.search(b"".join(lines[first - 1 : last])) is not None:
            continue
        shown[first - 1 : last] = [_line_end(line) for line in lines[first - 1 : last]]
        if opening is not None:
            line, indent = opening
            shown[first - 1] = b"if 1:" + _line_end(lines[first - 1])
            shown[line - 1] = indent + b"pass" + _line_end(lines[line - 1])
    if shown == lines:
        return None
    return b"".join(shown)


def _words(tree: ast.Module) -> re.Pattern[bytes] | None:
    """A pattern for ``_WORDS`` and every name a ctypes import binds; None if one
    of those is not ASCII (libcst reads a name as written, ``ast`` normalized)."""
    names = set(_WORDS)
    for node in _statements(tree.body):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for bound, target in import_bindings(node):
                if is_ctypes(target) and bound != "*":
                    if not bound.isascii():
                        return None
                    names.add(bound)
    alternatives = "|".join(re.escape(name) for name in sorted(names))
    return re.compile(rf"\b(?:{alternatives})\b".encode("ascii"))


def _statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Every statement in ``body`` and in the blocks below it (imports are
    statements: the expressions, most of the tree, need not be walked)."""
    for statement in body:
        yield statement
        for field in ("body", "orelse", "finalbody"):
            inner = getattr(statement, field, None)
            if isinstance(inner, list):
                yield from _statements(inner)
        for clause in (*getattr(statement, "handlers", ()), *getattr(statement, "cases", ())):
            yield from _statements(clause.body)


def _star_import(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.ImportFrom) and any(a.name == "*" for a in statement.names)


def _groups(body: list[ast.stmt]) -> list[tuple[int, int, list[ast.stmt]]]:
    """Top-level statements as (first line, last line, statements); statements
    sharing a line (``a = 1; import ctypes``) form one group."""
    groups: list[tuple[int, int, list[ast.stmt]]] = []
    for statement in body:
        first = first_line(statement)
        last = statement.end_lineno or statement.lineno
        if groups and first <= groups[-1][1]:
            start, end, members = groups[-1]
            groups[-1] = (start, max(end, last), [*members, statement])
        else:
            groups.append((first, last, [statement]))
    return groups


def _opening(statements: list[ast.stmt], lines: list[bytes]) -> tuple[int, bytes] | None:
    """(line, indentation) of the indented block the first of ``statements`` opens,
    if it certainly opens one on a line of its own: its first body statement
    starts a physical line, indented, after a line that does not end with a
    backslash (which would make it a continuation line).  None in doubt: that
    statement is kept, as are the ones after it, up to one that certainly does."""
    statement = statements[0]
    if not isinstance(statement, _COMPOUND) or not statement.body:
        return None
    inner = statement.body[0]
    if inner.lineno <= statement.lineno or first_line(inner) != inner.lineno:
        return None
    line = lines[inner.lineno - 1]
    indent = line[: len(line) - len(line.lstrip(b" \t"))]
    previous = lines[inner.lineno - 2].rstrip(b"\r\n")
    if not 0 < len(indent) == inner.col_offset or previous.endswith(b"\\"):
        return None
    return inner.lineno, indent


def _line_end(line: bytes) -> bytes:
    return line[len(line.rstrip(b"\r\n")) :]

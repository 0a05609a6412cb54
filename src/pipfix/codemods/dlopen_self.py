"""Codemod ``dlopen-self``: guard ``ctypes.CDLL(None)`` against OSError.

``CDLL(None)`` calls ``dlopen(NULL)`` to look up symbols of the running
interpreter.  On a statically linked interpreter (musl) this raises
``OSError: Dynamic loading not supported``, and pip's glibc detection only
expected the symbol to be missing.  The statement is wrapped in
``try: ... except OSError: return None`` -- the shape pip 24.2 ships.
"""

from __future__ import annotations

import libcst as cst

from .helpers import (
    Outcome,
    PathTransformer,
    Site,
    Statement,
    as_line,
    dotted_name,
    find,
    guard,
    import_bindings,
    is_ctypes,
    is_protected,
    locate,
    outcome,
    return_none,
)
from .model import CodemodInfo
from .screen import LOADERS, STAR_NAMES

INFO = CodemodInfo(
    id="dlopen-self",
    why="ctypes.CDLL(None) is dlopen(NULL), which raises OSError on statically linked "
    "interpreters; return None instead, as pip 24.2 does",
    upstream=("pypa/pip#12716", "pypa/packaging#294"),
)

# The loaders, and what ``from ctypes import *`` binds among them: shared with
# ``screen``, which must reach the same verdict without libcst.
_LOADERS = LOADERS
_STAR_NAMES = STAR_NAMES


def applies_to(source: bytes) -> bool:
    """Any file the pre-filter lets through may call ``CDLL(None)``."""
    return True


def _is_none(expr: cst.BaseExpression) -> bool:
    return isinstance(expr, cst.Name) and expr.value == "None"


def _passes_none(call: cst.Call) -> bool:
    """True if the library name argument is literally ``None``."""
    positional = [arg for arg in call.args if arg.keyword is None and not arg.star]
    if positional:
        return _is_none(positional[0].value)
    return any(
        arg.keyword is not None and arg.keyword.value == "name" and _is_none(arg.value)
        for arg in call.args
    )


class _Finder:
    """Collects ctypes aliases and every ``<something>(None)`` call with its ancestors."""

    def __init__(self, module: cst.Module) -> None:
        self.aliases: dict[str, str] = {}
        self.calls: list[tuple[cst.Call, str, tuple[cst.CSTNode, ...]]] = []
        for node, ancestors in find(module, (cst.Call, cst.Import, cst.ImportFrom)):
            if isinstance(node, cst.Call):
                name = dotted_name(node.func)
                if name is not None and _passes_none(node):
                    self.calls.append((node, name, ancestors))
            elif isinstance(node, (cst.Import, cst.ImportFrom)):
                self._bind(node)

    def _bind(self, node: cst.Import | cst.ImportFrom) -> None:
        for local, target in import_bindings(node):
            if not is_ctypes(target):
                continue
            if local == "*":
                self.aliases.update((name, f"ctypes.{name}") for name in _STAR_NAMES)
            else:
                self.aliases[local] = target

    def qualified(self, name: str) -> str:
        """Qualified name of ``name`` as written, following import aliases."""
        head, dot, rest = name.partition(".")
        return self.aliases.get(head, head) + dot + rest


class _Wrapper(PathTransformer):
    def __init__(self, statements: set[Statement], within: set[cst.CSTNode]) -> None:
        super().__init__(within)
        self.statements = statements

    def leave_SimpleStatementLine(
        self, original_node: cst.SimpleStatementLine, updated_node: cst.SimpleStatementLine
    ) -> cst.BaseStatement:
        if original_node in self.statements:
            return guard(updated_node, ("OSError",), return_none())
        return updated_node

    def leave_SimpleStatementSuite(
        self, original_node: cst.SimpleStatementSuite, updated_node: cst.SimpleStatementSuite
    ) -> cst.BaseSuite:
        if original_node in self.statements:
            return cst.IndentedBlock([guard(as_line(updated_node), ("OSError",), return_none())])
        return updated_node


def run(module: cst.Module, source: bytes) -> Outcome:
    """Wrap every unprotected ``CDLL(None)`` statement, or report why it cannot be.

    ``source`` (the bytes parsed) is not needed: any module may call ``CDLL(None)``.
    """
    finder = _Finder(module)
    statements: set[Statement] = set()
    within: set[cst.CSTNode] = set()
    problems: list[tuple[cst.CSTNode, str]] = []
    for call, name, ancestors in finder.calls:
        if finder.qualified(name) not in _LOADERS or is_protected(ancestors, call):
            continue
        site = locate(ancestors)
        if isinstance(site, Site) and isinstance(site.owner, cst.FunctionDef):
            statements.add(site.statement)
            within.update(ancestors)
        else:
            where = site if isinstance(site, str) else "at module level"
            problems.append((call, f"{name}(None) {where}: cannot guard safely"))
    return outcome(module, _Wrapper(statements, within) if statements else None, problems)

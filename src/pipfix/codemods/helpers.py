"""libcst helpers shared by the codemods.

Both codemods ask the same questions about a node: does an enclosing ``try`` in
the same function already catch OSError, which statement would have to be
wrapped, and is that statement somewhere a ``try`` can be put at all.  They also
build the same guard shapes.  The analyses search the tree with ``find``, which
reads each node's fields and keeps the ancestors on a stack: libcst's visitor
(and ``ParentNodeProvider``) rebuild and re-validate every node they pass, which
made the search most of the cost of a codemod.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Union

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from .screen import is_ctypes as is_ctypes  # shared with the ast screen

OSERROR_CATCHERS = frozenset(
    {"OSError", "IOError", "EnvironmentError", "Exception", "BaseException"}
)
IMPORTERROR_CATCHERS = frozenset({"ImportError", "ModuleNotFoundError"})

TryNode = Union[cst.Try, cst.TryStar]
Handler = Union[cst.ExceptHandler, cst.ExceptStarHandler]
Statement = Union[cst.SimpleStatementLine, cst.SimpleStatementSuite]
Owner = Union[cst.FunctionDef, cst.Module]

# Blocks a statement may sit in (as body, else, handler, finally) on its way up
# to the function or module that owns it.
_BLOCKS = (
    cst.IndentedBlock,
    cst.If,
    cst.Else,
    cst.For,
    cst.While,
    cst.With,
    cst.Try,
    cst.TryStar,
    cst.ExceptHandler,
    cst.ExceptStarHandler,
    cst.Finally,
    cst.Match,
    cst.MatchCase,
)
_COMPREHENSIONS = (cst.ListComp, cst.SetComp, cst.DictComp, cst.GeneratorExp)
_HEADERS: dict[type[cst.CSTNode], str] = {
    cst.If: "in the test of an if statement",
    cst.While: "in the test of a while loop",
    cst.For: "in the header of a for loop",
    cst.With: "in a with item",
    cst.Match: "in a match subject",
    cst.MatchCase: "in a case pattern or guard",
    cst.ExceptHandler: "in an except clause",
    cst.ExceptStarHandler: "in an except clause",
    cst.FunctionDef: "in a function signature",
    cst.ClassDef: "in a class definition header",
}


@dataclass(frozen=True)
class Outcome:
    """What one codemod did to a module: the new tree, or (line, reason) problems.

    A codemod with problems leaves the module untouched: half a patch is harder
    to reason about than none.
    """

    module: cst.Module
    changed: bool
    problems: tuple[tuple[int, str], ...]


def outcome(
    module: cst.Module,
    transformer: cst.CSTTransformer | None,
    problems: Sequence[tuple[cst.CSTNode, str]],
) -> Outcome:
    """Apply ``transformer`` unless there are problems, which are reported in source
    order (by line, then reason: the analyses find some of them in no stable order)."""
    if problems:
        lines = first_lines(module, [node for node, _ in problems])
        reported = sorted((line, reason) for line, (_, reason) in zip(lines, problems))
        return Outcome(module, changed=False, problems=tuple(reported))
    if transformer is None:
        return Outcome(module, changed=False, problems=())
    return Outcome(module.visit(transformer), changed=True, problems=())


Found = list[tuple[cst.CSTNode, tuple[cst.CSTNode, ...]]]
_CHILD_FIELDS: dict[type[cst.CSTNode], tuple[str, ...]] = {}


def find(
    root: cst.CSTNode,
    wanted: tuple[type[cst.CSTNode], ...],
    prune: tuple[type[cst.CSTNode], ...] = (),
) -> Found:
    """Every node of a ``wanted`` type at or below ``root``, with its ancestors
    (outermost first, the node itself excluded); nothing below a ``prune`` node
    is searched, nor formatting (whitespace, comments, brackets, operators).

    Statements come in source order; expressions a statement holds outside its
    body (decorators, annotations) may come after the body.  The tree is only
    read: no node is rebuilt.
    """
    found: Found = []
    path: list[cst.CSTNode] = []

    def search(node: cst.CSTNode) -> None:
        kind = type(node)
        if _is_a(kind, wanted):
            found.append((node, tuple(path)))
        if _is_a(kind, prune):
            return
        path.append(node)
        for name in _child_fields(kind):
            value = getattr(node, name)
            if isinstance(value, (tuple, list)):
                for item in value:
                    if _is_node(item):
                        search(item)
            elif _is_node(value):
                search(value)
        path.pop()

    search(root)
    return found


_NODE = (cst.CSTNode,)


@functools.cache
def _is_a(kind: type, classes: tuple[type, ...]) -> bool:
    """``issubclass(kind, classes)`` for libcst's node classes, which register no
    virtual subclasses.  They are ABCs: ``isinstance`` against one walks its
    subclasses and registry once for each new type it is asked about: ~3.5 ms of
    the first transform in a fresh process (the helper's case)."""
    return any(cls in kind.__mro__ for cls in classes)


def _is_node(value: object) -> bool:
    kind: type = type(value)
    return _is_a(kind, _NODE)


# Fields that only ever hold formatting (whitespace, comments, brackets,
# punctuation, operators): six in ten nodes of a typical module, never a
# statement or an expression.
_FORMATTING_FIELDS = frozenset({
    "asynchronous", "colon", "comma", "dot", "equal", "footer", "header", "lbrace",
    "lbracket", "leading_lines", "lines_after_decorators", "lpar", "newline", "operator",
    "rbrace", "rbracket", "rpar", "semicolon",
})


def _child_fields(kind: type[cst.CSTNode]) -> tuple[str, ...]:
    """The fields of ``kind`` that can hold code (``find`` skips formatting)."""
    names = _CHILD_FIELDS.get(kind)
    if names is None:
        names = _CHILD_FIELDS[kind] = tuple(
            field.name
            for field in dataclasses.fields(kind)
            if field.name not in _FORMATTING_FIELDS
            and not field.name.startswith("whitespace")
            and not field.name.endswith("_whitespace")
        )
    return names


class PathTransformer(cst.CSTTransformer):
    """A transformer that only descends towards the nodes it has to change.

    ``within`` holds every node on the way down to a target (None: descend
    everywhere); revisiting the whole tree would cost as much as the analysis.
    ``leave_*`` still runs for each child of a node it descends into.
    """

    def __init__(self, within: set[cst.CSTNode] | None) -> None:
        super().__init__()
        self.within = within

    def on_visit(self, node: cst.CSTNode) -> bool:
        descend = super().on_visit(node)
        return descend and (self.within is None or node in self.within)


def caught_names(handler: Handler) -> frozenset[str] | None:
    """Exception names an ``except`` clause lists; None for a bare ``except:``."""
    if handler.type is None:
        return None
    exprs: Iterable[cst.BaseExpression]
    if isinstance(handler.type, cst.Tuple):
        exprs = (element.value for element in handler.type.elements)
    else:
        exprs = (handler.type,)
    names = set()
    for expr in exprs:
        if isinstance(expr, cst.Name):
            names.add(expr.value)
        elif isinstance(expr, cst.Attribute):
            names.add(expr.attr.value)
    return frozenset(names)


def handler_catches(handler: Handler, wanted: frozenset[str]) -> bool:
    names = caught_names(handler)
    return names is None or not names.isdisjoint(wanted)


def try_catches(node: TryNode, wanted: frozenset[str]) -> bool:
    return any(handler_catches(handler, wanted) for handler in node.handlers)


def enclosing_tries(ancestors: Sequence[cst.CSTNode], node: cst.CSTNode) -> Iterator[TryNode]:
    """The ``try`` statements whose body holds ``node``, innermost first.

    Only tries of the same function count: the walk stops at the body of a
    ``def`` or ``lambda`` (and at a generator expression, which runs later).
    Handlers, ``else`` and ``finally`` blocks are not protected by their try.
    """
    child = node
    for parent in reversed(ancestors):
        if isinstance(parent, (cst.Try, cst.TryStar)) and parent.body is child:
            yield parent
        if isinstance(parent, (cst.FunctionDef, cst.Lambda)) and parent.body is child:
            return
        if isinstance(parent, cst.GeneratorExp):
            return
        child = parent


def is_protected(ancestors: Sequence[cst.CSTNode], node: cst.CSTNode) -> bool:
    """True if an enclosing try of the same function catches OSError."""
    return any(try_catches(t, OSERROR_CATCHERS) for t in enclosing_tries(ancestors, node))


@dataclass(frozen=True)
class Site:
    """Where a guard can go: the statement to wrap and the def or module owning it."""

    statement: Statement
    owner: Owner


def locate(ancestors: Sequence[cst.CSTNode]) -> Site | str:
    """The statement holding a node (given its ancestors) and its owner, or why none.

    A returned string completes a sentence such as "ctypes.CDLL(None) ...".
    """
    depth = len(ancestors) - 1
    while depth >= 0:
        parent = ancestors[depth]
        if isinstance(parent, (cst.SimpleStatementLine, cst.SimpleStatementSuite)):
            break
        if isinstance(parent, cst.Lambda):
            return "in a lambda"
        if isinstance(parent, _COMPREHENSIONS):
            return "in a comprehension or generator expression"
        if isinstance(parent, cst.Decorator):
            return "in a decorator"
        if isinstance(parent, cst.Param):
            return "in a default argument or parameter annotation"
        if type(parent) in _HEADERS:
            return _HEADERS[type(parent)]
        if isinstance(parent, (cst.BaseSuite, cst.BaseCompoundStatement, cst.Module)):
            return f"in an unsupported position ({type(parent).__name__})"
        depth -= 1
    else:
        return "outside any statement"
    statement = ancestors[depth]
    assert isinstance(statement, (cst.SimpleStatementLine, cst.SimpleStatementSuite))
    for parent in reversed(ancestors[:depth]):
        if isinstance(parent, (cst.FunctionDef, cst.Module)):
            return Site(statement, parent)
        if isinstance(parent, cst.ClassDef):
            return "in a class body"
        if not isinstance(parent, _BLOCKS):
            return f"in an unsupported block ({type(parent).__name__})"
    return "outside any module"


def dotted_name(node: cst.BaseExpression) -> str | None:
    """``a.b.c`` for a Name/Attribute chain, else None."""
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        base = dotted_name(node.value)
        return None if base is None else f"{base}.{node.attr.value}"
    return None


def import_bindings(node: cst.Import | cst.ImportFrom) -> list[tuple[str, str]]:
    """(bound name, dotted name it refers to) for each name an import binds.

    ``from m import *`` gives ``("*", "m")``; relative imports give nothing.
    """
    if isinstance(node, cst.Import):
        bindings = []
        for alias in node.names:
            full = dotted_name(alias.name) or ""
            if alias.asname is not None and isinstance(alias.asname.name, cst.Name):
                bindings.append((alias.asname.name.value, full))
            else:
                head = full.partition(".")[0]
                bindings.append((head, head))
        return bindings
    if node.relative or node.module is None:
        return []
    module = dotted_name(node.module) or ""
    if isinstance(node.names, cst.ImportStar):
        return [("*", module)]
    bindings = []
    for alias in node.names:
        name = dotted_name(alias.name) or ""
        local = name
        if alias.asname is not None and isinstance(alias.asname.name, cst.Name):
            local = alias.asname.name.value
        bindings.append((local, f"{module}.{name}"))
    return bindings


def _comma() -> cst.Comma:
    return cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))


def _names(*names: str) -> cst.BaseExpression:
    if len(names) == 1:
        return cst.Name(names[0])
    elements = [cst.Element(cst.Name(name), comma=_comma()) for name in names[:-1]]
    return cst.Tuple([*elements, cst.Element(cst.Name(names[-1]))])


def return_none() -> cst.SimpleStatementLine:
    return cst.SimpleStatementLine([cst.Return(cst.Name("None"))])


def assign_none(names: Sequence[str]) -> cst.SimpleStatementLine:
    targets = [cst.AssignTarget(cst.Name(name)) for name in names]
    return cst.SimpleStatementLine([cst.Assign(targets, cst.Name("None"))])


def as_line(statement: Statement) -> cst.SimpleStatementLine:
    """The small statements of a one-line suite (``if x: y``) as a line of their own."""
    if isinstance(statement, cst.SimpleStatementLine):
        return statement
    trailing = statement.trailing_whitespace
    return cst.SimpleStatementLine(statement.body, trailing_whitespace=trailing)


def guard(
    line: cst.SimpleStatementLine, catch: Sequence[str], handler: cst.SimpleStatementLine
) -> cst.Try:
    """``try: <line> except <catch>: <handler>``.

    Comments and blank lines above ``line`` move above the ``try:`` so they stay
    where they were; a trailing comment stays on the line itself.
    """
    return cst.Try(
        body=cst.IndentedBlock([line.with_changes(leading_lines=())]),
        handlers=[cst.ExceptHandler(cst.IndentedBlock([handler]), type=_names(*catch))],
        leading_lines=line.leading_lines,
    )


def add_oserror(expr: cst.BaseExpression) -> cst.BaseExpression:
    """``ImportError`` -> ``(ImportError, OSError)``; ``(A, B)`` -> ``(A, B, OSError)``."""
    oserror = cst.Name("OSError")
    if isinstance(expr, cst.Tuple) and expr.elements:
        # The old last element takes the separator style of the one before it
        # (multi-line tuples stay multi-line); OSError takes its trailing comma.
        *rest, last = expr.elements
        separator = rest[-1].comma if rest else _comma()
        if not isinstance(separator, cst.Comma):
            separator = _comma()
        new_last = cst.Element(oserror, comma=last.comma)
        last = last.with_changes(comma=separator.deep_clone())
        return expr.with_changes(elements=[*rest, last, new_last])
    bare = expr.with_changes(lpar=(), rpar=())
    elements = [cst.Element(bare, comma=_comma()), cst.Element(oserror)]
    if expr.lpar:
        return cst.Tuple(elements, lpar=expr.lpar, rpar=expr.rpar)
    return cst.Tuple(elements)


def if_none_return(name: str) -> cst.If:
    """``if <name> is None: return None``."""
    test = cst.Comparison(cst.Name(name), [cst.ComparisonTarget(cst.Is(), cst.Name("None"))])
    return cst.If(test, cst.IndentedBlock([return_none()]))


def first_lines(module: cst.Module, nodes: Sequence[cst.CSTNode]) -> list[int]:
    """1-based start line of each node (metadata is resolved only when needed)."""
    if not nodes:
        return []
    positions = MetadataWrapper(module, unsafe_skip_copy=True).resolve(PositionProvider)
    return [positions[node].start.line for node in nodes]

"""Second pre-filter: CPython's own parser proves that a codemod would do nothing.

The byte pre-filter (``prefilter``) lets through every file that mentions ctypes
together with a loader or a module-level ``import ctypes``.  In a pip wheel
most of those are platform backends (urllib3's SecureTransport, truststore,
platformdirs' and rich's Windows code) that the codemods analyse with libcst
only to leave them alone -- nine tenths of the libcst time of a pip wheel, and
the only reason to import libcst at all for some wheels.

This module answers, with ``ast`` (C parser, no libcst), which codemods *may*
change or report something in a file.  It is conservative: it says "not in
scope" only when the codemod's own rules certainly leave the file unchanged
and report nothing; every doubt (a parse error, an unusual binding) keeps the
codemod in scope, and the codemod then decides exactly as before; a source
CPython cannot parse or compile is never ruled out (the engine reports it).
So the output is byte for byte what the codemods alone produce; only work is
saved.

The facts used, per codemod:

* ``dlopen-self`` finds nothing unless some call ``X(None)`` / ``X(name=None)``
  names a ctypes loader, following import aliases, outside a ``try`` of its own
  function that catches OSError (the codemod's own rules).
* ``ctypes-import`` always runs on glibc-detection modules.  Elsewhere it only
  guards a lone module-level ``import ctypes`` and leaves the module alone if
  (1) there is not exactly one such statement, (2) another ctypes import runs
  at import time outside any ``try``, (3) ``ctypes`` is read at module level
  after the import, or -- when the import is the only binding of ``ctypes``
  in the file -- (4) it is read in a lambda or class body, or (5) a function
  reading it returns a value or yields.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Iterator, Sequence

from .prefilter import (
    has_module_level_ctypes_import,
    is_glibc_detection_module,
    mentions_a_loader,
)

DLOPEN_SELF = "dlopen-self"
CTYPES_IMPORT = "ctypes-import"
ALL = frozenset({DLOPEN_SELF, CTYPES_IMPORT})

# Shared with the dlopen-self codemod (which imports them from here).
LOADERS = frozenset(
    {"ctypes.CDLL", "ctypes.PyDLL", "ctypes.cdll.LoadLibrary", "ctypes.pydll.LoadLibrary"}
)
STAR_NAMES = ("CDLL", "PyDLL", "cdll", "pydll")

_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
# Evaluated lazily in scopes of their own (3.12+): never judged here.
_LAZY: tuple[type[ast.AST], ...] = tuple(
    getattr(ast, name) for name in ("TypeAlias",) if hasattr(ast, name)
)
_TRIES: tuple[type[ast.AST], ...] = (ast.Try,) + (
    (ast.TryStar,) if hasattr(ast, "TryStar") else ()
)
_NAME = "ctypes"


def is_ctypes(dotted: str) -> bool:
    """True for ``ctypes`` and anything inside it (importing any of it runs ctypes)."""
    return dotted == "ctypes" or dotted.startswith("ctypes.")


def codemods_in_scope(source: bytes) -> frozenset[str]:
    """Ids of the codemods that may change or report something in ``source``.

    Only meaningful for sources the byte pre-filter lets through; an empty set
    means libcst need not even be imported for this file.
    """
    return screen(source)[0]


def screen(source: bytes) -> tuple[frozenset[str], ast.Module | None]:
    """``codemods_in_scope``, and the tree it parsed (None where ``ast`` could not
    parse ``source``): the engine compiles that tree rather than the source again."""
    tree = parse(source)
    if tree is None:
        return ALL, None  # let the codemods parse it and report what they find
    return _in_scope(tree, source), tree


def parse(source: bytes) -> ast.Module | None:
    """``ast.parse(source)``; None where it fails (compiling the source says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes etc.: not ours to report
            return ast.parse(source)
    except Exception:  # SyntaxError, ValueError (NUL bytes), RecursionError, ...
        return None


def _in_scope(tree: ast.Module, source: bytes) -> frozenset[str]:
    in_scope = set()
    if mentions_a_loader(source) and _dlopen_self_in_scope(tree):
        in_scope.add(DLOPEN_SELF)
    if _ctypes_import_in_scope(tree, source):
        in_scope.add(CTYPES_IMPORT)
    if not in_scope and not _compiles(tree):
        return ALL  # the engine reports what CPython's compiler refuses (misplaced
        # __future__ imports, return outside a function, ...): ast.parse accepts them
    return frozenset(in_scope)


def _compiles(tree: ast.Module) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(tree, "<screen>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return True


# --- shared -------------------------------------------------------------------


def _children(node: ast.AST) -> list[ast.AST]:
    """``ast.iter_child_nodes(node)`` as a list, without its generators: the screen
    walks whole modules, and this is most of its time after parsing."""
    children: list[ast.AST] = []
    for field in node._fields:
        value = getattr(node, field, None)
        if isinstance(value, list):
            children.extend([item for item in value if isinstance(item, ast.AST)])
        elif isinstance(value, ast.AST):
            children.append(value)
    return children


def _walk(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` (``ast.walk``, in another order)."""
    nodes = [tree]
    for node in nodes:  # grows while it is read
        nodes.extend(_children(node))
    return nodes


def first_line(statement: ast.stmt) -> int:
    """The line a statement starts on: its first decorator's, if it has any."""
    decorators: list[ast.expr] = getattr(statement, "decorator_list", [])
    return min([statement.lineno, *(decorator.lineno for decorator in decorators)])


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def import_bindings(node: ast.Import | ast.ImportFrom) -> list[tuple[str, str]]:
    """(bound name, dotted target) as the codemods' ``import_bindings`` computes them."""
    if isinstance(node, ast.Import):
        result = []
        for alias in node.names:
            if alias.asname is not None:
                result.append((alias.asname, alias.name))
            else:
                head = alias.name.partition(".")[0]
                result.append((head, head))
        return result
    if node.level or node.module is None:
        return []
    if any(alias.name == "*" for alias in node.names):
        return [("*", node.module)]
    return [(alias.asname or alias.name, f"{node.module}.{alias.name}") for alias in node.names]


def _imports_ctypes(node: ast.Import | ast.ImportFrom) -> bool:
    return any(is_ctypes(target) for _, target in import_bindings(node))


# --- dlopen-self ---------------------------------------------------------------


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _passes_none(call: ast.Call) -> bool:
    positional = [arg for arg in call.args if not isinstance(arg, ast.Starred)]
    if positional:
        return _is_none(positional[0])
    return any(k.arg == "name" and _is_none(k.value) for k in call.keywords)


def _dlopen_self_in_scope(tree: ast.Module) -> bool:
    """Some ``X(None)`` call may name a ctypes loader (through any alias) and is not
    already inside a ``try`` of its own function that catches OSError."""
    aliases: dict[str, set[str]] = {}
    calls: list[tuple[str, ast.Call]] = []
    nodes = _walk(tree)
    for node in nodes:
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name is not None and _passes_none(node):
                calls.append((name, node))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for local, target in import_bindings(node):
                if not is_ctypes(target):
                    continue
                if local == "*":
                    for star in STAR_NAMES:
                        aliases.setdefault(star, set()).add(f"ctypes.{star}")
                else:
                    aliases.setdefault(local, set()).add(target)
    loader_calls = []
    for name, call in calls:
        head, dot, rest = name.partition(".")
        if any(base + dot + rest in LOADERS for base in {head, *aliases.get(head, ())}):
            loader_calls.append(call)
    if not loader_calls:
        return False
    # Ancestors are only needed within the top-level statements holding the calls.
    lines = {call.lineno for call in loader_calls}
    parents: dict[ast.AST, ast.AST] = {}
    for statement in tree.body:
        last = statement.end_lineno or statement.lineno
        if any(first_line(statement) <= line <= last for line in lines):
            parents[statement] = tree
            parents.update(
                (child, parent) for parent in _walk(statement) for child in _children(parent)
            )
    return not all(_protected(_path_to(call, parents)) for call in loader_calls)


def _path_to(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> tuple[ast.AST, ...]:
    """``node``'s ancestors, outermost first, then ``node``."""
    path = [node]
    while path[-1] in parents:
        path.append(parents[path[-1]])
    return tuple(reversed(path))


def _protected(path: tuple[ast.AST, ...]) -> bool:
    """The codemods' ``is_protected``: an enclosing ``try`` of the same function
    (its body, not a handler, ``else`` or ``finally``) catches OSError.

    ``path`` holds the call's ancestors, outermost first, then the call.
    """
    for depth in range(len(path) - 1, 0, -1):
        parent, child = path[depth - 1], path[depth]
        if (
            isinstance(parent, _TRIES)
            and _in_list(child, parent.body)  # type: ignore[attr-defined]
            and any(_catches_oserror(h) for h in parent.handlers)  # type: ignore[attr-defined]
        ):
            return True
        if isinstance(parent, _FUNCTIONS) and _in_list(child, parent.body):
            return False
        if isinstance(parent, ast.Lambda) and parent.body is child:
            return False
        if isinstance(parent, ast.GeneratorExp):
            return False
    return False


def _in_list(node: ast.AST, nodes: Sequence[ast.AST]) -> bool:
    return any(item is node for item in nodes)


_OSERROR_CATCHERS = frozenset(
    {"OSError", "IOError", "EnvironmentError", "Exception", "BaseException"}
)


def _catches_oserror(handler: ast.excepthandler) -> bool:
    """The codemods' ``handler_catches(handler, OSERROR_CATCHERS)``."""
    kind = getattr(handler, "type", None)
    if kind is None:
        return True  # bare except
    exprs = kind.elts if isinstance(kind, ast.Tuple) else [kind]
    names = {e.id if isinstance(e, ast.Name) else e.attr for e in exprs
             if isinstance(e, (ast.Name, ast.Attribute))}
    return not names.isdisjoint(_OSERROR_CATCHERS)


# --- ctypes-import ---------------------------------------------------------------


def _ctypes_import_in_scope(tree: ast.Module, source: bytes) -> bool:
    if is_glibc_detection_module(source):
        return True  # rules 1-3 apply to every ctypes import: let the codemod decide
    if not has_module_level_ctypes_import(source):
        return False  # the codemod's own applies_to() says no
    return not _left_alone(tree)


def _is_plain_import(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Import)
        and len(node.names) == 1
        and node.names[0].name == _NAME
        and node.names[0].asname is None
    )


def _left_alone(tree: ast.Module) -> bool:
    """True if rule 4 certainly leaves the module unchanged (and reports nothing)."""
    plain = [i for i, statement in enumerate(tree.body) if _is_plain_import(statement)]
    if len(plain) != 1:
        return True  # (1) no candidate, or the name bound twice at module level
    index = plain[0]
    candidate = tree.body[index]
    for node, in_function, in_try in _imports(tree):
        if node is not candidate and not in_function and not in_try and _imports_ctypes(node):
            return True  # (2) importing the module would still need ctypes
    for statement in tree.body[index + 1 :]:
        if any(_is_read(name) for name in _global_names(statement)):
            return True  # (3)
    reads = _reads_by_scope(tree, candidate)
    if reads is None:
        return False  # reads may refer to another binding: let scope analysis decide
    for scope, _name in reads:
        if isinstance(scope, (ast.Lambda, ast.ClassDef)):
            return True  # (4)
        if isinstance(scope, _FUNCTIONS) and _returns_value(scope):
            return True  # (5)
    return False


def _is_read(name: ast.Name) -> bool:
    return name.id == _NAME and isinstance(name.ctx, ast.Load)


def _imports(
    node: ast.AST, in_function: bool = False, in_try: bool = False
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    """Every import with: inside a ``def``? inside any part of a ``try``?"""
    for child in _children(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function, in_try
        elif isinstance(child, (ast.stmt, ast.excepthandler)) or _is_match_case(child):
            yield from _imports(
                child,
                in_function or isinstance(child, _FUNCTIONS),
                in_try or isinstance(child, _TRIES),
            )


def _is_match_case(node: ast.AST) -> bool:
    return type(node).__name__ == "match_case"


def _global_names(node: ast.AST) -> Iterator[ast.Name]:
    """Names evaluated in the module's own scope: not inside any def, lambda,
    class, comprehension or annotation (those are left to scope analysis)."""
    if isinstance(node, ast.Name):
        yield node
        return
    if isinstance(
        node, (*_SCOPES, *_LAZY, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
    ):
        return
    for field, value in ast.iter_fields(node):
        if field in ("annotation", "returns", "type_comment"):
            continue
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, ast.AST):
                yield from _global_names(child)


# Node types with none of these fields bind no name (most expressions): decided
# once per type, not by four isinstance checks and two getattr calls per node.
_BINDING_FIELDS = frozenset({"name", "names", "rest", "arg"})
_MAY_BIND: dict[type, bool] = {}


def _binds_the_name(node: ast.AST) -> bool:
    """``node`` binds ``ctypes`` (or declares it global/nonlocal, or may bind it)."""
    if isinstance(node, ast.Name):
        return node.id == _NAME and not isinstance(node.ctx, ast.Load)
    kind = type(node)
    may_bind = _MAY_BIND.get(kind)
    if may_bind is None:
        may_bind = _MAY_BIND[kind] = not _BINDING_FIELDS.isdisjoint(kind._fields)
    if not may_bind:
        return False
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return any(local in (_NAME, "*") for local, _ in import_bindings(node)) or any(
            (alias.asname or alias.name).partition(".")[0] == _NAME for alias in node.names
        )
    if isinstance(node, (ast.Global, ast.Nonlocal)):
        return _NAME in node.names
    if isinstance(node, ast.arg):
        return node.arg == _NAME
    if isinstance(node, ast.alias):
        return False  # judged with its import statement
    # def and class names, except-as, match captures, type parameters
    return getattr(node, "name", None) == _NAME or getattr(node, "rest", None) == _NAME


def _reads_by_scope(
    tree: ast.Module, candidate: ast.stmt
) -> list[tuple[ast.AST, ast.Name]] | None:
    """Every read of ``ctypes`` with the def, lambda, class or module whose scope
    evaluates it; None if anything but ``candidate`` binds the name.

    Comprehensions count as their enclosing scope (the codemod looks through
    them the same way); decorators, defaults, annotations and bases belong to
    the scope around the def or class.
    """
    reads: list[tuple[ast.AST, ast.Name]] = []
    stack: list[tuple[ast.AST, ast.AST]] = [(tree, tree)]
    while stack:
        node, scope = stack.pop()
        if node is candidate:
            continue
        if isinstance(node, ast.Name):
            if node.id == _NAME:
                if not isinstance(node.ctx, ast.Load):
                    return None
                reads.append((scope, node))
            continue
        if _binds_the_name(node):
            return None
        if isinstance(node, _SCOPES) and node is not scope:
            inner: list[ast.AST]
            if isinstance(node, ast.Lambda):
                inner = [node.body]
                outer: list[ast.AST] = [node.args]
            else:
                inner = list(node.body)
                outer = [c for c in _children(node) if not _in_list(c, inner)]
            stack.extend((child, scope) for child in outer)
            stack.extend((child, node) for child in inner)
            continue
        stack.extend((child, scope) for child in _children(node))
    return reads


def _returns_value(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """``return <value>`` (not None) or ``yield`` in the body, outside nested scopes."""
    stack: list[ast.AST] = list(function.body)
    while stack:
        node = stack.pop()
        if isinstance(node, _SCOPES):
            continue
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
        if isinstance(node, ast.Return) and node.value is not None and not _is_none(node.value):
            return True
        stack.extend(_children(node))
    return False

"""Codemod ``ctypes-import``: ctypes imports must not raise OSError.

``ctypes/__init__.py`` itself calls ``dlopen(NULL)`` (``pythonapi = PyDLL(None)``),
so on a statically linked interpreter ``import ctypes`` raises OSError, not
ImportError.  In glibc-detection modules (they mention ``gnu_get_libc_version``)
every ctypes import is in scope, and a failed import means "no glibc":

1. ``try: import ctypes / except ImportError:`` also catches OSError;
2. an unguarded import in a function becomes
   ``try: ... except (ImportError, OSError): return None``;
3. an unguarded module-level import binds ``ctypes = None`` on failure, and
   every function reading the name starts with ``if ctypes is None: return None``.

In any other module only one shape is in scope, so that importing the module
does not fail (setuptools' ``windows_support``, imported by ``setuptools.dist``
on every platform, pypa/setuptools#2234):

4. a plain, unguarded ``import ctypes`` statement of the module body gets rule 3,
   provided that afterwards nothing at import time needs ctypes and no function
   changes what it can return.  The module is left as it is (it is not
   unpatchable) if ``ctypes`` is read outside function bodies (module level,
   class bodies, decorators, default arguments, lambdas), if another ctypes
   import would still run unguarded at import time, if the name is bound
   anywhere else, or if a function reading it returns a value or yields: there
   ``return None`` would be a guess.  Such modules (urllib3's SecureTransport,
   truststore's macOS and platformdirs' Windows backends) only import on
   platforms where ctypes works.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import libcst as cst
from libcst.metadata import (
    ComprehensionScope,
    FunctionScope,
    GlobalScope,
    MetadataWrapper,
    ScopeProvider,
)

from .helpers import (
    IMPORTERROR_CATCHERS,
    Handler,
    Outcome,
    PathTransformer,
    Site,
    Statement,
    add_oserror,
    as_line,
    assign_none,
    dotted_name,
    enclosing_tries,
    find,
    guard,
    handler_catches,
    if_none_return,
    import_bindings,
    is_ctypes,
    is_protected,
    locate,
    outcome,
    return_none,
    try_catches,
)
from .model import CodemodInfo
from .prefilter import has_module_level_ctypes_import, is_glibc_detection_module

INFO = CodemodInfo(
    id="ctypes-import",
    why="import ctypes raises OSError (not ImportError) where dlopen(NULL) fails; "
    "glibc detection treats that as no glibc, other modules still import",
    upstream=("pypa/pip#6543", "pypa/setuptools#2234", "pypa/setuptools#3178"),
)

_CATCH = ("ImportError", "OSError")
_WHERE = {
    "FunctionScope": "in a lambda",
    "ClassScope": "in a class body",
    "GlobalScope": "at module level",
}
_Problems = list[tuple[cst.CSTNode, str]]


def applies_to(source: bytes) -> bool:
    """Glibc-detection modules, and modules with a module-level ``import ctypes`` line."""
    return is_glibc_detection_module(source) or has_module_level_ctypes_import(source)


def _ctypes_imports(
    module: cst.Module,
) -> list[tuple[cst.Import | cst.ImportFrom, tuple[cst.CSTNode, ...]]]:
    """Every ctypes import with its ancestors.  Imports are statements: nothing
    below a small statement or an expression can hold one (most of the tree)."""
    found = find(
        module, (cst.Import, cst.ImportFrom), prune=(cst.BaseSmallStatement, cst.BaseExpression)
    )
    return [
        (node, ancestors)
        for node, ancestors in found
        if isinstance(node, (cst.Import, cst.ImportFrom))
        and any(is_ctypes(target) for _, target in import_bindings(node))
    ]


class _Plan:
    """Nodes to change, keyed by identity in the tree that was analysed."""

    def __init__(self) -> None:
        self.handlers: set[Handler] = set()
        self.return_on_failure: set[Statement] = set()
        self.none_on_failure: dict[Statement, list[str]] = {}
        self.function_checks: dict[cst.FunctionDef, str] = {}
        self.within: set[cst.CSTNode] = set()

    def __bool__(self) -> bool:
        return bool(
            self.handlers or self.return_on_failure or self.none_on_failure or self.function_checks
        )


def _module_level(
    site: Site, node: cst.Import | cst.ImportFrom, plan: _Plan, problems: _Problems
) -> None:
    """Rule 3: ``except (ImportError, OSError): ctypes = None`` needs a lone import."""
    bindings = import_bindings(node)
    if len(site.statement.body) != 1:
        why = "module-level ctypes import shares its line with other statements"
    elif not all(is_ctypes(target) for _, target in bindings):
        why = "module-level import of ctypes together with other modules"
    elif any(local == "*" for local, _ in bindings):
        why = "module-level 'from ctypes import *' binds unknown names"
    else:
        plan.none_on_failure[site.statement] = [local for local, _ in bindings]
        return
    problems.append((node, f"{why}: cannot guard safely"))


def _global_scope(module: cst.Module) -> GlobalScope:
    scope = MetadataWrapper(module, unsafe_skip_copy=True).resolve(ScopeProvider)[module]
    assert isinstance(scope, GlobalScope)
    return scope


def _readers(global_scope: GlobalScope, plan: _Plan) -> _Problems:
    """Rule 3, second half: every function reading a name that may now be None checks it.

    Returns the reads that are not in a function body, which no check can cover.
    """
    outside: _Problems = []
    for statement, names in plan.none_on_failure.items():
        import_node = statement.body[0]
        for name in names:
            for assignment in global_scope.assignments[name]:
                if getattr(assignment, "node", None) is not import_node:
                    continue
                for access in assignment.references:
                    scope = access.scope
                    while isinstance(scope, ComprehensionScope):
                        scope = scope.parent
                    if isinstance(scope, FunctionScope) and isinstance(scope.node, cst.FunctionDef):
                        plan.function_checks.setdefault(scope.node, name)
                    else:
                        where = _WHERE.get(type(scope).__name__, "outside a function")
                        reason = f"{name!r} is read {where}: cannot guard its import safely"
                        outside.append((access.node, reason))
    return outside


def _is_docstring(statement: cst.BaseStatement) -> bool:
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return False
    expr = statement.body[0]
    return isinstance(expr, cst.Expr) and isinstance(
        expr.value, (cst.SimpleString, cst.ConcatenatedString)
    )


def _with_check(body: cst.BaseSuite, name: str) -> cst.BaseSuite:
    """Put ``if <name> is None: return None`` first in ``body`` (after a docstring).

    A ``# type: (...) -> ...`` signature comment must stay right under the
    ``def`` line, so it moves above the check.
    """
    check = if_none_return(name)
    if not isinstance(body, cst.IndentedBlock):
        assert isinstance(body, cst.SimpleStatementSuite)
        return cst.IndentedBlock([check, as_line(body)])
    statements = list(body.body)
    index = 1 if statements and _is_docstring(statements[0]) else 0
    first = statements[0] if index == 0 and statements else None
    if isinstance(first, (cst.SimpleStatementLine, cst.BaseCompoundStatement)):
        lines = first.leading_lines
        if lines and lines[0].comment is not None and lines[0].comment.value.startswith("# type:"):
            check = check.with_changes(leading_lines=lines[:1])
            statements[0] = first.with_changes(leading_lines=lines[1:])
    statements.insert(index, check)
    return body.with_changes(body=statements)


def _on_the_way_to(module: cst.Module, functions: Iterable[cst.FunctionDef]) -> set[cst.CSTNode]:
    """The ancestors of ``functions``, which scope analysis found (not a walk down)."""
    wanted = set(functions)
    if not wanted:
        return set()
    found = find(module, (cst.FunctionDef,), prune=(cst.BaseSmallStatement, cst.BaseExpression))
    return {ancestor for node, ancestors in found if node in wanted for ancestor in ancestors}


class _Apply(PathTransformer):
    def __init__(self, plan: _Plan, module: cst.Module) -> None:
        super().__init__(plan.within | _on_the_way_to(module, plan.function_checks))
        self.plan = plan

    def _guarded(self, original: Statement, line: cst.SimpleStatementLine) -> cst.Try | None:
        if original in self.plan.return_on_failure:
            return guard(line, _CATCH, return_none())
        names = self.plan.none_on_failure.get(original)
        if names is not None:
            return guard(line, _CATCH, assign_none(names))
        return None

    def leave_SimpleStatementLine(
        self, original_node: cst.SimpleStatementLine, updated_node: cst.SimpleStatementLine
    ) -> cst.BaseStatement:
        return self._guarded(original_node, updated_node) or updated_node

    def leave_SimpleStatementSuite(
        self, original_node: cst.SimpleStatementSuite, updated_node: cst.SimpleStatementSuite
    ) -> cst.BaseSuite:
        wrapped = self._guarded(original_node, as_line(updated_node))
        return updated_node if wrapped is None else cst.IndentedBlock([wrapped])

    def leave_ExceptHandler(
        self, original_node: cst.ExceptHandler, updated_node: cst.ExceptHandler
    ) -> cst.ExceptHandler:
        if original_node in self.plan.handlers and updated_node.type is not None:
            return updated_node.with_changes(type=add_oserror(updated_node.type))
        return updated_node

    def leave_ExceptStarHandler(
        self, original_node: cst.ExceptStarHandler, updated_node: cst.ExceptStarHandler
    ) -> cst.ExceptStarHandler:
        if original_node in self.plan.handlers:
            return updated_node.with_changes(type=add_oserror(updated_node.type))
        return updated_node

    def leave_FunctionDef(
        self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef
    ) -> cst.BaseStatement:
        name = self.plan.function_checks.get(original_node)
        if name is None:
            return updated_node
        return updated_node.with_changes(body=_with_check(updated_node.body, name))


def _first_importerror_handler(tries: Sequence[cst.Try | cst.TryStar]) -> Handler | None:
    for node in tries:
        if try_catches(node, IMPORTERROR_CATCHERS):
            return next(h for h in node.handlers if handler_catches(h, IMPORTERROR_CATCHERS))
    return None


def run(module: cst.Module, source: bytes) -> Outcome:
    """Make the ctypes imports in scope survive OSError (``source``: the bytes parsed)."""
    if is_glibc_detection_module(source):
        return _run_glibc(module)
    return _run_anywhere(module)


def _run_glibc(module: cst.Module) -> Outcome:
    """Rules 1-3: every ctypes import of a glibc-detection module, or report why not."""
    plan = _Plan()
    problems: _Problems = []
    for node, ancestors in _ctypes_imports(module):
        if is_protected(ancestors, node):
            continue
        plan.within.update(ancestors)
        handler = _first_importerror_handler(list(enclosing_tries(ancestors, node)))
        if handler is not None:
            plan.handlers.add(handler)
            continue
        site = locate(ancestors)
        if isinstance(site, str):
            problems.append((node, f"ctypes import {site}: cannot guard safely"))
        elif isinstance(site.owner, cst.FunctionDef):
            plan.return_on_failure.add(site.statement)
        else:
            _module_level(site, node, plan, problems)
    if plan.none_on_failure and not problems:
        problems.extend(_readers(_global_scope(module), plan))
    return outcome(module, _Apply(plan, module) if plan else None, problems)


def _is_plain_module_level_import(
    node: cst.Import | cst.ImportFrom, ancestors: Sequence[cst.CSTNode]
) -> bool:
    """``import ctypes`` alone on a line of the module body (no alias, no other name)."""
    if not isinstance(node, cst.Import) or len(node.names) != 1:
        return False
    [alias] = node.names
    if alias.asname is not None or dotted_name(alias.name) != "ctypes":
        return False
    if len(ancestors) != 2 or not isinstance(ancestors[0], cst.Module):
        return False
    line = ancestors[1]
    return isinstance(line, cst.SimpleStatementLine) and len(line.body) == 1


def _returns_value(function: cst.FunctionDef) -> bool:
    """``return <value>`` (not None) or ``yield`` in the body, outside nested scopes."""
    found = find(
        function.body, (cst.Return, cst.Yield), prune=(cst.FunctionDef, cst.Lambda, cst.ClassDef)
    )
    for node, _ancestors in found:
        if isinstance(node, cst.Yield):
            return True
        if isinstance(node, cst.Return) and node.value is not None:
            value = node.value
            if not (isinstance(value, cst.Name) and value.value == "None"):
                return True
    return False


def _run_anywhere(module: cst.Module) -> Outcome:
    """Rule 4: a plain module-level ``import ctypes`` whose name only functions read."""
    unchanged = Outcome(module, changed=False, problems=())
    candidate: tuple[cst.Import | cst.ImportFrom, tuple[cst.CSTNode, ...]] | None = None
    for node, ancestors in _ctypes_imports(module):
        if _is_plain_module_level_import(node, ancestors):
            if candidate is not None:
                return unchanged  # imported twice: the name is bound twice
            candidate = (node, ancestors)
        elif not is_protected(ancestors, node) and not any(
            isinstance(ancestor, cst.FunctionDef) for ancestor in ancestors
        ):
            return unchanged  # importing the module would still need ctypes
    if candidate is None:
        return unchanged
    node, ancestors = candidate
    statement = ancestors[1]
    assert isinstance(statement, cst.SimpleStatementLine)
    plan = _Plan()
    plan.none_on_failure[statement] = ["ctypes"]
    plan.within.update(ancestors)
    global_scope = _global_scope(module)
    if len(global_scope.assignments["ctypes"]) != 1 or _readers(global_scope, plan):
        return unchanged
    if any(_returns_value(function) for function in plan.function_checks):
        return unchanged
    return outcome(module, _Apply(plan, module), ())

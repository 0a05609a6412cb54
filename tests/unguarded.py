"""Independent checker (stdlib ``ast`` only) for what the codemods must leave behind.

``find_unguarded(source)`` lists ``(line, what)`` for every ``ctypes.CDLL(None)``
style call, and -- in glibc-detection modules (they mention
``gnu_get_libc_version``) -- every ctypes import, that no enclosing ``try`` body
of the same function protects against OSError.

In any other module it lists a plain ``import ctypes`` statement of the module
body, alone on its line, whose name only functions need: ``ctypes`` is read only inside ``def``
bodies (not at module level, in class bodies, decorators, default arguments,
annotations or lambdas), no other ctypes import runs unprotected at import
time, no function rebinds the name globally, and no function reading it
returns a value or yields.  Importing such a module fails for nothing when
ctypes raises OSError; anything else is out of the codemods' scope.

It shares no code with ``pipfix.codemods`` on purpose.
"""

from __future__ import annotations

import ast
import sys

CATCHES_OSERROR = {"OSError", "IOError", "EnvironmentError", "Exception", "BaseException"}
LOADERS = {"ctypes.CDLL", "ctypes.PyDLL", "ctypes.cdll.LoadLibrary", "ctypes.pydll.LoadLibrary"}
if sys.version_info >= (3, 11):
    TRIES: tuple[type[ast.Try | ast.TryStar], ...] = (ast.Try, ast.TryStar)
else:
    TRIES = (ast.Try,)
# Code under these runs later (or in another frame): an outer try does not protect it.
BOUNDARIES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.GeneratorExp)


def _catches_oserror(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    names = {t.id if isinstance(t, ast.Name) else getattr(t, "attr", None) for t in types}
    return bool(names & CATCHES_OSERROR)


def _ctypes_aliases(tree: ast.AST) -> dict[str, str]:
    """{local name: dotted ctypes name} from every import in the module."""
    aliases = {"ctypes": "ctypes"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "ctypes" or a.name.startswith("ctypes."):
                    aliases[a.asname or "ctypes"] = a.name if a.asname else "ctypes"
        elif isinstance(node, ast.ImportFrom) and node.module == "ctypes" and not node.level:
            for a in node.names:
                if a.name == "*":
                    aliases.update((n, f"ctypes.{n}") for n in ("CDLL", "PyDLL", "cdll", "pydll"))
                else:
                    aliases[a.asname or a.name] = f"ctypes.{a.name}"
    return aliases


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _is_dlopen_self(call: ast.Call, aliases: dict[str, str]) -> bool:
    name = _dotted(call.func)
    if name is None:
        return False
    head, dot, rest = name.partition(".")
    if aliases.get(head, head) + dot + rest not in LOADERS:
        return False
    args = [a for a in call.args if not isinstance(a, ast.Starred)]
    if args:
        return isinstance(args[0], ast.Constant) and args[0].value is None
    return any(
        k.arg == "name" and isinstance(k.value, ast.Constant) and k.value.value is None
        for k in call.keywords
    )


def _imports_ctypes(node: ast.stmt) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name == "ctypes" or a.name.startswith("ctypes.") for a in node.names)
    if isinstance(node, ast.ImportFrom) and not node.level and node.module:
        return node.module == "ctypes" or node.module.startswith("ctypes.")
    return False


def _is_plain_import_ctypes(node: ast.Import) -> bool:
    return [(a.name, a.asname) for a in node.names] == [("ctypes", None)]


def _last_line(node: ast.stmt) -> int:
    return node.end_lineno if node.end_lineno is not None else node.lineno


def _binds_ctypes(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.Import):
        return any((a.asname or a.name.partition(".")[0]) == "ctypes" for a in node.names)
    return any((a.asname or a.name) == "ctypes" for a in node.names)


def _own_nodes(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.AST]:
    """Nodes of a function body, not looking into nested functions, lambdas or classes."""
    nodes: list[ast.AST] = []
    pending: list[ast.AST] = list(function.body)
    while pending:
        node = pending.pop()
        nodes.append(node)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            pending.extend(ast.iter_child_nodes(node))
    return nodes


def _gives_a_value(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for node in _own_nodes(function):
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
        if isinstance(node, ast.Return) and node.value is not None:
            value = node.value
            if not isinstance(value, ast.Constant) or value.value is not None:
                return True
    return False


def _import_only_functions_need(tree: ast.Module, statement: ast.Import) -> bool:
    """True if ``statement`` (``import ctypes``) could fail without failing the import.

    Every read of ``ctypes`` is attributed to the innermost ``def`` whose body
    holds it; a read anywhere else (module level, a class body, a lambda, a
    decorator, a default or an annotation) means the import is needed.
    """
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    readers: list[ast.FunctionDef | ast.AsyncFunctionDef] = []
    needed = False

    def walk(node: ast.AST, owner: ast.AST | None, protected: bool) -> None:
        nonlocal needed
        in_def = isinstance(owner, functions)
        if isinstance(node, ast.Name) and node.id == "ctypes":
            if isinstance(owner, functions):
                readers.append(owner)
            else:
                needed = True  # read, bound or deleted outside a function body
        elif isinstance(node, ast.Global) and "ctypes" in node.names:
            needed = True  # a function binds the module's name
        elif (
            isinstance(node, (ast.Import, ast.ImportFrom))
            and node is not statement
            and not in_def
            and (_binds_ctypes(node) or (_imports_ctypes(node) and not protected))
        ):
            needed = True  # bound twice, or importing the module still needs ctypes
        for field, value in ast.iter_fields(node):
            inner_owner, inner = owner, protected
            if isinstance(node, (*functions, ast.Lambda, ast.ClassDef)) and field == "body":
                inner_owner, inner = node, False
            elif isinstance(node, TRIES) and field == "body":
                inner = protected or any(_catches_oserror(h) for h in node.handlers)
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, ast.AST):
                    walk(child, inner_owner, inner)

    walk(tree, None, False)
    return not needed and not any(_gives_a_value(function) for function in readers)


def find_unguarded(source: bytes) -> list[tuple[int, str]]:
    tree = ast.parse(source)
    aliases = _ctypes_aliases(tree)
    check_imports = b"gnu_get_libc_version" in source
    found: list[tuple[int, str]] = []
    if not check_imports:
        for statement in tree.body:
            if not isinstance(statement, ast.Import) or not _is_plain_import_ctypes(statement):
                continue
            if any(
                other is not statement and other.lineno <= statement.lineno <= _last_line(other)
                for other in tree.body
            ):
                continue  # shares its line: ``import ctypes; x = 1`` is out of scope
            if _import_only_functions_need(tree, statement):
                found.append((statement.lineno, "ctypes import not guarded against OSError"))

    def visit(node: ast.AST, protected: bool) -> None:
        if isinstance(node, ast.Call) and not protected and _is_dlopen_self(node, aliases):
            found.append((node.lineno, f"{_dotted(node.func)}(None) not guarded against OSError"))
        if check_imports and not protected and isinstance(node, ast.stmt) and _imports_ctypes(node):
            found.append((node.lineno, "ctypes import not guarded against OSError"))
        for field, value in ast.iter_fields(node):
            inner = protected
            if isinstance(node, BOUNDARIES) and field in ("body", "elt", "generators"):
                inner = False
            elif isinstance(node, TRIES) and field == "body":
                inner = protected or any(_catches_oserror(h) for h in node.handlers)
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, ast.AST):
                    visit(child, inner)

    visit(tree, False)
    return sorted(found)

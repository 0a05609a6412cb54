"""Independent checker (stdlib ``ast`` only) for what the codemods must leave behind.

``find_unguarded(source)`` lists ``(line, what)`` for every ``ctypes.CDLL(None)``
style call, and -- in glibc-detection modules (they mention
``gnu_get_libc_version``) -- every ctypes import, that no enclosing ``try`` body
of the same function protects against OSError.  It shares no code with
``pipfix.codemods`` on purpose.
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


def find_unguarded(source: bytes) -> list[tuple[int, str]]:
    tree = ast.parse(source)
    aliases = _ctypes_aliases(tree)
    check_imports = b"gnu_get_libc_version" in source
    found: list[tuple[int, str]] = []

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

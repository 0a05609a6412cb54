"""The codemods never break a file: they change nothing but the guarded statements,
and shapes they cannot guard correctly are reported, not guessed at.

* Every ``.py`` member of every pinned wheel: the output equals the input, or its
  AST equals the input's once the guards are unwrapped (``try: X / except
  OSError: return None`` becomes ``X``, ``except (ImportError, OSError)`` becomes
  ``except ImportError``, an inserted ``if ctypes is None: return None`` goes);
  and the output always compiles.
* Synthetic shapes a blind rewrite would get wrong (``CDLL(None)`` in a lambda,
  a class body, a default argument, a comprehension; ctypes under another name):
  each is either guarded *correctly* -- run with a ctypes whose dlopen fails, or
  whose import fails, the function returns None; with a working ctypes it
  returns what it returned before -- or reported as unpatchable with its line,
  and left as it was.
* A wheel holding such a module: ``pipfix patch-wheel`` exits 3, names
  ``file:line``, and writes nothing.
"""

from __future__ import annotations

import ast
import copy
import functools
import importlib.abc
import subprocess
import sys
import textwrap
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipfix.codemods import SourceResult, could_need_change, transform_source

from conftest import PINNED_NAMES, SRC, clean_env, pinned_wheel_paths, tree_digest
from wheelmaker import make_wheel

# --- the AST property over every pinned wheel --------------------------------------------------


_GUARD_CATCHES = {"ImportError", "ModuleNotFoundError", "OSError"}


def _catches_only_guard_errors(handler: ast.ExceptHandler) -> bool:
    """``except OSError`` / ``except (ImportError, OSError)`` / ``except ImportError``:
    what the guards catch (an ImportError guard upstream wrote is unwrapped alike)."""
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return all(isinstance(n, ast.Name) and n.id in _GUARD_CATCHES for n in names)


def _is_none(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _is_guard_body(body: list[ast.stmt]) -> bool:
    """``return None``, or ``name = None`` lines (the two fallbacks the codemods write)."""
    if len(body) == 1 and isinstance(body[0], ast.Return) and _is_none(body[0].value):
        return True
    return bool(body) and all(
        isinstance(s, ast.Assign)
        and _is_none(s.value)
        and all(isinstance(t, ast.Name) for t in s.targets)
        for s in body
    )


class _Unwrap(ast.NodeTransformer):
    """Undo what a guard adds, so that only differences outside guards remain."""

    def visit_Try(self, node: ast.Try) -> Any:
        guard = (  # judged before the handler loses its OSError below
            len(node.handlers) == 1
            and not node.orelse
            and not node.finalbody
            and node.handlers[0].name is None
            and node.handlers[0].type is not None
            and _catches_only_guard_errors(node.handlers[0])
            and _is_guard_body(node.handlers[0].body)
        )
        self.generic_visit(node)
        return node.body if guard else node

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> Any:
        self.generic_visit(node)
        if isinstance(node.type, ast.Tuple):
            kept = [
                e for e in node.type.elts if not (isinstance(e, ast.Name) and e.id == "OSError")
            ]
            node.type = kept[0] if len(kept) == 1 else ast.Tuple(kept, ast.Load())
        return node

    def visit_If(self, node: ast.If) -> Any:
        self.generic_visit(node)
        test = node.test
        if (
            isinstance(test, ast.Compare)
            and isinstance(test.left, ast.Name)
            and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Is)
            and _is_none(test.comparators[0])
            and not node.orelse
            and _is_guard_body(node.body)
            and isinstance(node.body[0], ast.Return)
        ):
            return None
        return node


def _guards(source: bytes) -> dict[str, int]:
    counts = {"try": 0, "catch ImportError": 0}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Try):
            counts["try"] += 1
        elif isinstance(node, ast.ExceptHandler) and node.type is not None:
            names = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
            if any(isinstance(n, ast.Name) and n.id == "ImportError" for n in names):
                counts["catch ImportError"] += 1
    return counts


def normalized(source: bytes) -> str:
    tree = _Unwrap().visit(ast.parse(source))
    return ast.dump(tree, include_attributes=False)


@functools.cache
def _transformed(source: bytes) -> SourceResult:
    return transform_source("member.py", source)


def _py_members(name: str) -> Iterator[tuple[str, bytes]]:
    with zipfile.ZipFile(pinned_wheel_paths()[name]) as archive:
        for member in archive.namelist():
            if member.endswith(".py"):
                yield member, archive.read(member)


@pytest.mark.parametrize("name", PINNED_NAMES)
def test_output_differs_from_input_only_inside_guards(name: str) -> None:
    changed = 0
    for path, source in _py_members(name):
        if not could_need_change(source):
            continue  # never parsed, returned as it is (test_codemods checks the filter)
        result = _transformed(source)
        if result.source == source:
            continue
        changed += 1
        compile(result.source, path, "exec", dont_inherit=True)
        assert normalized(result.source) == normalized(source), path
        # Unwrapping treats upstream's own ImportError guards like ours: make sure none
        # was lost, and that no handler stopped catching what it caught.
        before, after = _guards(source), _guards(result.source)
        assert after["try"] >= before["try"], path
        assert after["catch ImportError"] >= before["catch ImportError"], path
    assert changed > 0  # every pinned wheel needs a patch somewhere


def test_the_unwrapping_is_not_vacuous() -> None:
    """A change outside a guard, or a guard with another fallback, is still seen."""
    source = b"def f():\n    x = ctypes.CDLL(None)\n    return x\n"
    guarded = _shape("""
        def f():
            try:
                x = ctypes.CDLL(None)
            except OSError:
                return None
            return x
        """).encode()
    assert normalized(guarded) == normalized(source)
    assert normalized(guarded.replace(b"return None", b"return 0")) != normalized(source)
    assert normalized(guarded.replace(b"return x", b"return 1")) != normalized(source)
    assert normalized(guarded.replace(b"OSError", b"Exception")) != normalized(source)


# --- synthetic shapes: a correct guard, or a report ---------------------------------------------

HEADER = "# glibc detection: gnu_get_libc_version\n"


def _shape(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


SHAPES = {
    "lambda": _shape("""
        import ctypes
        def probe():
            f = lambda: ctypes.CDLL(None)
            return f()
        """),
    "lambda-as-default": _shape("""
        import ctypes
        def probe(f=lambda: ctypes.CDLL(None)):
            return f()
        """),
    "class-body": _shape("""
        import ctypes
        class C:
            lib = ctypes.CDLL(None)
        def probe():
            return C.lib
        """),
    "default-argument": _shape("""
        import ctypes
        def probe(lib=ctypes.CDLL(None)):
            return lib
        """),
    "decorator": _shape("""
        import ctypes
        @ctypes.CDLL(None)
        def probe():
            return 1
        """),
    "module-level": _shape("""
        import ctypes
        lib = ctypes.CDLL(None)
        def probe():
            return lib
        """),
    "comprehension": _shape("""
        import ctypes
        def probe():
            return [ctypes.CDLL(None) for _ in range(1)][0]
        """),
    "generator": _shape("""
        import ctypes
        def probe():
            return next(ctypes.CDLL(None) for _ in range(1))
        """),
    "if-test": _shape("""
        import ctypes
        def probe():
            if (lib := ctypes.CDLL(None)):
                return lib
        """),
    "aliased-module": _shape("""
        import ctypes as C
        def probe():
            return C.CDLL(None)
        """),
    "from-import-as": _shape("""
        from ctypes import CDLL as X
        def probe():
            return X(None)
        """),
    "local-from-import-as": _shape("""
        def probe():
            from ctypes import CDLL as X
            return X(None)
        """),
    "nested-function": _shape("""
        import ctypes
        def probe():
            def inner():
                return ctypes.CDLL(None)
            return inner()
        """),
    "keyword-argument": _shape("""
        import ctypes
        def probe():
            return ctypes.CDLL(name=None)
        """),
    "load-library": _shape("""
        import ctypes
        def probe():
            return ctypes.cdll.LoadLibrary(None)
        """),
    "method": _shape("""
        import ctypes
        class C:
            def probe(self):
                return ctypes.PyDLL(None)
        def probe():
            return C().probe()
        """),
}


class _Library:
    gnu_get_libc_version = "2.35"


LIBRARY = _Library()


def _working(name: object = None, *args: object, **kwargs: object) -> _Library:
    return LIBRARY


def _no_dlopen(name: object = None, *args: object, **kwargs: object) -> _Library:
    raise OSError("Dynamic loading not supported")


def _fake_ctypes(loader: Any) -> types.ModuleType:
    module = types.ModuleType("ctypes")
    module.CDLL = module.PyDLL = loader  # type: ignore[attr-defined]
    module.cdll = module.pydll = types.SimpleNamespace(LoadLibrary=loader)  # type: ignore[attr-defined]
    return module


class _ImportFails(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "ctypes" or name.startswith("ctypes."):
            raise OSError("Dynamic loading not supported")
        return None


def _outcome(source: bytes, ctypes_kind: str) -> tuple[str, object]:
    """('returned', value) or ('raised', exception type name) of ``probe()``."""
    saved = sys.modules.get("ctypes")
    finder = _ImportFails()
    if ctypes_kind == "import fails":
        sys.modules.pop("ctypes", None)
        sys.meta_path.insert(0, finder)
    else:
        sys.modules["ctypes"] = _fake_ctypes(_working if ctypes_kind == "works" else _no_dlopen)
    try:
        namespace: dict[str, Any] = {"__name__": "probe_module"}
        exec(compile(source, "probe_module.py", "exec", dont_inherit=True), namespace)
        return "returned", namespace["probe"]()
    except Exception as exc:
        return "raised", type(exc).__name__
    finally:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
        if saved is not None:
            sys.modules["ctypes"] = saved
        else:
            sys.modules.pop("ctypes", None)


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_is_guarded_correctly_or_reported(shape: str) -> None:
    source = (HEADER + SHAPES[shape]).encode()
    result = transform_source("glibc.py", source)
    compile(result.source, "glibc.py", "exec", dont_inherit=True)  # never a broken file
    if result.unpatchable:
        lines = source.count(b"\n")
        for problem in result.unpatchable:
            assert problem.path == "glibc.py" and 1 <= problem.line <= lines
            assert "cannot guard" in problem.reason
        return
    assert result.applied, "neither guarded nor reported"
    assert _outcome(source, "works") == ("returned", LIBRARY)
    assert _outcome(result.source, "works") == ("returned", LIBRARY)  # same behaviour
    for broken in ("dlopen fails", "import fails"):
        assert _outcome(source, broken)[0] == "raised"  # the shape really is a crash...
        assert _outcome(result.source, broken) == ("returned", None), broken  # ...guarded


def test_shapes_cover_both_outcomes() -> None:
    outcomes = {
        bool(transform_source("glibc.py", (HEADER + s).encode()).unpatchable)
        for s in SHAPES.values()
    }
    assert outcomes == {True, False}


# --- a wheel holding such a module -------------------------------------------------------------


@pytest.mark.parametrize("shape", ["lambda", "class-body", "default-argument", "comprehension"])
def test_wheel_with_an_unguardable_shape_is_not_written(shape: str, tmp_path: Path) -> None:
    module = (HEADER + SHAPES[shape]).encode()
    wheel = make_wheel(tmp_path, "glibcprobe", "1.0", {"glibcprobe/glibc.py": module})
    result = transform_source("glibcprobe/glibc.py", module)
    line = min(problem.line for problem in result.unpatchable)
    out = tmp_path / "out"
    out.mkdir()
    before = tree_digest(tmp_path)
    for args in (["-o", str(out)], ["--in-place"]):
        run = subprocess.run(
            [sys.executable, "-m", "pipfix", "patch-wheel", str(wheel), *args],
            env=clean_env(PYTHONPATH=str(SRC)),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 3, (run.stdout, run.stderr)
        assert "Traceback" not in run.stdout + run.stderr
        report = run.stdout.splitlines()[0]
        assert report.startswith("glibcprobe 1.0 (wheel): not written [")
        assert f"glibcprobe/glibc.py:{line}: " in report
    after = tree_digest(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith(".pipfix")} == before
    assert list(out.iterdir()) == []


def test_normalizer_keeps_its_input_intact() -> None:
    tree = ast.parse("try:\n    import ctypes\nexcept (ImportError, OSError):\n    ctypes = None\n")
    before = ast.dump(tree)
    _Unwrap().visit(copy.deepcopy(tree))
    assert ast.dump(tree) == before

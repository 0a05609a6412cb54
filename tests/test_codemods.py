"""The codemods, at the level of single source files: real upstream members and
synthetic shapes.  Whole-wheel patching is tested elsewhere."""

from __future__ import annotations

import ast
import builtins
import functools
import importlib.util
import os
import re
import subprocess
import sys
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipfix.codemods import (
    SourceResult,
    Unpatchable,
    all_codemods,
    could_need_change,
    transform_source,
)

from unguarded import find_unguarded

ROOT = Path(__file__).parent.parent
VENDORED = ROOT / "vendored_wheels"
CACHE = VENDORED / "cache"
GLIBC_PROBE = b"gnu_get_libc_version"


def _manifest_names() -> list[str]:
    lines = (VENDORED / "manifest.txt").read_text(encoding="utf-8").splitlines()
    return [line.split()[0] for line in lines if line.strip() and not line.startswith("#")]


WHEELS = _manifest_names()


@functools.cache
def wheel(name: str) -> Path:
    """Path of a pinned wheel, fetched (and verified) by vendored_wheels/fetch.py if missing."""
    path = CACHE / name
    if not path.is_file():
        spec = importlib.util.spec_from_file_location("vendored_fetch", VENDORED / "fetch.py")
        assert spec is not None and spec.loader is not None
        fetch = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fetch)
        fetch.fetch_all(CACHE)
    return path


def py_members(name: str) -> Iterator[tuple[str, bytes]]:
    with zipfile.ZipFile(wheel(name)) as archive:
        for member in archive.namelist():
            if member.endswith(".py"):
                yield member, archive.read(member)


def member(name: str, path: str) -> bytes:
    with zipfile.ZipFile(wheel(name)) as archive:
        return archive.read(path)


@functools.cache
def transformed(source: bytes) -> SourceResult:
    """transform_source, memoised: identical members recur across wheels."""
    return transform_source("member.py", source)


def patch(source: str | bytes, path: str = "t.py") -> SourceResult:
    """Transform a synthetic source; check the output is valid Python and a fixed point."""
    data = source.encode() if isinstance(source, str) else source
    result = transform_source(path, data)
    compile(result.source, path, "exec")
    again = transform_source(path, result.source)
    assert again.source == result.source, "not idempotent"
    assert again.applied == ()
    return result


def text(result: SourceResult) -> str:
    return result.source.decode()


GUARDED_IMPORT = "try:\n    import ctypes\nexcept (ImportError, OSError):\n    ctypes = None\n"


# --- real upstream wheels -------------------------------------------------------------


# Outside glibc detection, the only members the codemods change: setuptools'
# windows_support.py, whose module-level ``import ctypes`` setuptools.dist runs
# on every platform (pypa/setuptools#2234; moved into hide_file() in 60.x).
WINDOWS_SUPPORT = "setuptools/windows_support.py"
WINDOWS_SUPPORT_WHEELS = {
    "setuptools-40.6.2-py2.py3-none-any.whl",
    "setuptools-41.2.0-py2.py3-none-any.whl",
    "setuptools-47.1.0-py3-none-any.whl",
    "setuptools-49.2.1-py3-none-any.whl",
    "setuptools-56.0.0-py3-none-any.whl",
    "setuptools-58.1.0-py3-none-any.whl",
}
# Members with a module-level ``import ctypes`` line that ctypes-import leaves as
# they are: macOS- or Windows-only modules, where ``return None`` would change
# what a function returns, or where ctypes is used at import time anyway.
MODULE_LEVEL_IMPORT_LEFT_ALONE = {
    "pip/_vendor/platformdirs/windows.py",  # readers return values
    "pip/_vendor/rich/_win32_console.py",  # read at module level, from ctypes import ...
    "pip/_vendor/truststore/_macos.py",  # from ctypes import ... at module level
    "pip/_vendor/urllib3/contrib/_securetransport/low_level.py",  # readers return values
    "pip/_vendor/urllib3/contrib/securetransport.py",  # readers return values
}
MODULE_LEVEL_IMPORT = re.compile(rb"(?m)^import ctypes\s*$")


@pytest.mark.parametrize("name", WHEELS)
def test_every_python_member_of_every_pinned_wheel(name: str) -> None:
    glibc_members = []
    other_changed = set()
    for path, source in py_members(name):
        if not could_need_change(source):
            if b"ctypes" in source:  # without the word ctypes nothing can be flagged
                assert find_unguarded(source) == [], path
            continue
        result = transformed(source)
        assert result.unpatchable == (), path
        ast.parse(result.source)
        compile(result.source, path, "exec")
        assert find_unguarded(result.source) == [], path
        assert transformed(result.source).source == result.source, f"{path}: not idempotent"
        if GLIBC_PROBE in source:
            glibc_members.append(path)
            assert result.changed, path
            assert find_unguarded(source) != [], f"{path}: checker sees nothing to fix"
        elif result.changed:
            other_changed.add(path)
            assert result.applied == ("ctypes-import",), path
            assert find_unguarded(source) != [], f"{path}: checker sees nothing to fix"
        else:
            assert result.source == source, path
            assert result.applied == ()
    assert glibc_members, f"{name}: no glibc-detection module found"
    basenames = {path.rsplit("/", 1)[-1] for path in glibc_members}
    assert basenames <= {"glibc.py", "tags.py", "_manylinux.py"}, glibc_members
    assert other_changed == ({WINDOWS_SUPPORT} if name in WINDOWS_SUPPORT_WHEELS else set())


def test_module_level_ctypes_imports_outside_glibc_detection() -> None:
    """Every such member is selected; only windows_support.py changes, silently elsewhere."""
    changed, left_alone = set(), set()
    for name in WHEELS:
        for path, source in py_members(name):
            if GLIBC_PROBE in source or not MODULE_LEVEL_IMPORT.search(source):
                continue
            assert could_need_change(source), path
            result = transformed(source)
            assert result.unpatchable == (), path
            if result.changed:
                changed.add((name, path))
            else:
                assert find_unguarded(source) == [], path
                left_alone.add(path)
    assert changed == {(name, WINDOWS_SUPPORT) for name in WINDOWS_SUPPORT_WHEELS}
    assert left_alone == MODULE_LEVEL_IMPORT_LEFT_ALONE


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("pip-26.3-py3-none-any.whl", "pip/_vendor/truststore/_macos.py"),
        ("pip-24.0-py3-none-any.whl", "pip/_vendor/truststore/_macos.py"),
        ("pip-25.0.1-py3-none-any.whl", "pip/_vendor/urllib3/contrib/securetransport.py"),
        ("pip-10.0.1-py2.py3-none-any.whl", "pip/_vendor/urllib3/contrib/securetransport.py"),
        (
            "pip-25.0.1-py3-none-any.whl",
            "pip/_vendor/urllib3/contrib/_securetransport/low_level.py",
        ),
        ("pip-24.0-py3-none-any.whl", "pip/_vendor/platformdirs/windows.py"),
        ("pip-26.3-py3-none-any.whl", "pip/_vendor/rich/_win32_console.py"),
    ],
)
def test_platform_only_modules_keep_their_module_level_import(name: str, path: str) -> None:
    source = member(name, path)
    assert MODULE_LEVEL_IMPORT.search(source) and GLIBC_PROBE not in source
    assert could_need_change(source)
    assert transform_source(path, source) == SourceResult(source, (), ())
    assert find_unguarded(source) == []


def test_setuptools_58_windows_support_diff_is_exactly_the_import_guard() -> None:
    source = member("setuptools-58.1.0-py3-none-any.whl", WINDOWS_SUPPORT)
    result = transform_source(WINDOWS_SUPPORT, source)
    expected = source.replace(
        b"import platform\nimport ctypes\n",
        b"import platform\ntry:\n    import ctypes\nexcept (ImportError, OSError):\n"
        b"    ctypes = None\n",
    ).replace(
        b'    `path` must be text.\n    """\n',
        b'    `path` must be text.\n    """\n    if ctypes is None:\n        return None\n',
    )
    assert expected.count(b"ctypes is None") == 1
    assert result.source == expected
    assert result.applied == ("ctypes-import",)
    assert find_unguarded(source) == [(2, "ctypes import not guarded against OSError")]


def _function_dump(source: bytes, name: str) -> str:
    """ast.dump of function ``name`` with ``x: T = v`` read as ``x = v``."""

    class DropAnnotations(ast.NodeTransformer):
        def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.Assign:
            assert node.value is not None
            return ast.Assign(targets=[node.target], value=node.value, type_comment=None)

    tree = ast.parse(source)
    function = next(
        node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == name
    )
    return ast.dump(DropAnnotations().visit(function))


def test_patched_pip_24_0_matches_what_pip_24_2_ships() -> None:
    path = "pip/_internal/utils/glibc.py"
    old = transform_source(path, member("pip-24.0-py3-none-any.whl", path))
    new = transform_source(path, member("pip-24.2-py3-none-any.whl", path))
    assert old.applied == ("dlopen-self", "ctypes-import")
    assert new.applied == ("ctypes-import",)  # 24.2 already guards CDLL(None)
    name = "glibc_version_string_ctypes"
    assert _function_dump(old.source, name) == _function_dump(new.source, name)


def test_pip_23_2_1_glibc_diff_is_exactly_the_two_guards() -> None:
    path = "pip/_internal/utils/glibc.py"
    source = member("pip-23.2.1-py3-none-any.whl", path)
    result = transform_source(path, source)
    expected = source.replace(
        b"    except ImportError:\n        return None\n",
        b"    except (ImportError, OSError):\n        return None\n",
    ).replace(
        b"    process_namespace = ctypes.CDLL(None)\n",
        b"    try:\n        process_namespace = ctypes.CDLL(None)\n"
        b"    except OSError:\n        return None\n",
    )
    assert expected != source
    assert result.source == expected


def test_pip_10_glibc_keeps_crlf_and_guards_module_level_import() -> None:
    path = "pip/_internal/utils/glibc.py"
    source = member("pip-10.0.1-py2.py3-none-any.whl", path)
    assert b"\r\n" in source
    result = transform_source(path, source)
    assert result.source.count(b"\n") == result.source.count(b"\r\n")
    assert result.source.startswith(
        b"from __future__ import absolute_import\r\n\r\n"
        b"try:\r\n    import ctypes\r\nexcept (ImportError, OSError):\r\n    ctypes = None\r\n"
        b"import re\r\n"
    )
    assert (
        b'    "Returns glibc version string, or None if not using glibc."\r\n'
        b"    if ctypes is None:\r\n        return None\r\n\r\n"
    ) in result.source
    assert result.source.count(b"ctypes is None") == 1  # only glibc_version_string reads it


# --- behaviour of patched code, with a broken ctypes --------------------------------


def _run_module(
    source: bytes, ctypes_module: Any, others: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Execute ``source`` with ``import ctypes`` answered by ``ctypes_module``.

    ``ctypes_module`` may be an exception instance, raised by the import;
    ``others`` answers imports of further modules.
    """

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ctypes":
            if isinstance(ctypes_module, BaseException):
                raise ctypes_module
            return ctypes_module
        if others and name in others:
            return others[name]
        return builtins.__import__(name, *args, **kwargs)

    namespace: dict[str, Any] = {
        "__name__": "glibc_under_test",
        "__builtins__": {**vars(builtins), "__import__": fake_import},
    }
    exec(compile(source, "glibc.py", "exec"), namespace)
    return namespace


def _static_ctypes() -> types.SimpleNamespace:
    def cdll(name: object, *args: object, **kwargs: object) -> None:
        raise OSError("Dynamic loading not supported")

    return types.SimpleNamespace(CDLL=cdll, c_char_p=object())


PIP_23_GLIBC = ("pip-23.2.1-py3-none-any.whl", "pip/_internal/utils/glibc.py")
PIP_10_GLIBC = ("pip-10.0.1-py2.py3-none-any.whl", "pip/_internal/utils/glibc.py")


def test_unpatched_pip_23_glibc_crashes_under_static_ctypes() -> None:
    namespace = _run_module(member(*PIP_23_GLIBC), _static_ctypes())
    with pytest.raises(OSError, match="Dynamic loading"):
        namespace["glibc_version_string_ctypes"]()


@pytest.mark.parametrize(
    "ctypes_module",
    [_static_ctypes(), OSError("Dynamic loading not supported"), ImportError("no ctypes")],
    ids=["CDLL-raises-OSError", "import-raises-OSError", "import-raises-ImportError"],
)
def test_patched_pip_23_glibc_returns_none_under_broken_ctypes(ctypes_module: Any) -> None:
    patched = transform_source(PIP_23_GLIBC[1], member(*PIP_23_GLIBC)).source
    namespace = _run_module(patched, ctypes_module)
    assert namespace["glibc_version_string_ctypes"]() is None


@pytest.mark.parametrize(
    "ctypes_module",
    [_static_ctypes(), OSError("Dynamic loading not supported")],
    ids=["CDLL-raises-OSError", "import-raises-OSError"],
)
def test_patched_pip_10_glibc_imports_and_returns_none(ctypes_module: Any) -> None:
    patched = transform_source(PIP_10_GLIBC[1], member(*PIP_10_GLIBC)).source
    namespace = _run_module(patched, ctypes_module)
    assert namespace["glibc_version_string"]() is None
    assert namespace["have_compatible_glibc"](2, 5) is False
    assert namespace["libc_ver"]() == ("", "")


def test_patched_pip_10_glibc_still_reads_a_working_glibc() -> None:
    class Symbol:
        restype = None

        def __call__(self) -> bytes:
            return b"2.31"

    working = types.SimpleNamespace(
        CDLL=lambda name: types.SimpleNamespace(gnu_get_libc_version=Symbol()),
        c_char_p=object(),
    )
    patched = transform_source(PIP_10_GLIBC[1], member(*PIP_10_GLIBC)).source
    assert _run_module(patched, working)["libc_ver"]() == ("glibc", "2.31")


SETUPTOOLS_WINDOWS_SUPPORT = ("setuptools-58.1.0-py3-none-any.whl", WINDOWS_SUPPORT)


def test_unpatched_setuptools_windows_support_does_not_import_under_static_ctypes() -> None:
    with pytest.raises(OSError, match="Dynamic loading"):
        _run_module(member(*SETUPTOOLS_WINDOWS_SUPPORT), OSError("Dynamic loading not supported"))


@pytest.mark.parametrize("system", ["Linux", "Windows"])
@pytest.mark.parametrize(
    "ctypes_module",
    [OSError("Dynamic loading not supported"), ImportError("no ctypes")],
    ids=["import-raises-OSError", "import-raises-ImportError"],
)
def test_patched_setuptools_windows_support_imports_and_hide_file_does_nothing(
    ctypes_module: Any, system: str
) -> None:
    patched = transform_source(WINDOWS_SUPPORT, member(*SETUPTOOLS_WINDOWS_SUPPORT)).source
    fake_platform = types.SimpleNamespace(system=lambda: system)
    namespace = _run_module(patched, ctypes_module, {"platform": fake_platform})
    assert namespace["ctypes"] is None
    assert namespace["hide_file"]("some/path") is None


def test_patched_setuptools_windows_support_still_uses_a_working_ctypes() -> None:
    calls = []

    def set_file_attributes(path: str, attributes: int) -> int:
        calls.append((path, attributes))
        return 1

    kernel32 = types.SimpleNamespace(SetFileAttributesW=set_file_attributes)
    working = types.SimpleNamespace(
        windll=types.SimpleNamespace(kernel32=kernel32),
        wintypes=types.SimpleNamespace(LPWSTR=str, DWORD=int, BOOL=int),
    )
    patched = transform_source(WINDOWS_SUPPORT, member(*SETUPTOOLS_WINDOWS_SUPPORT)).source
    fake_platform = types.SimpleNamespace(system=lambda: "Windows")
    others = {"platform": fake_platform, "ctypes.wintypes": working}
    namespace = _run_module(patched, working, others)
    assert namespace["hide_file"]("some/path") is None
    assert calls == [("some/path", 0x02)]


# --- pre-filter and interface ------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"import ctypes\nctypes.CDLL(None)\n", True),
        (b"from ctypes import PyDLL\n", True),
        (b"import ctypes\nctypes.cdll.LoadLibrary('x')\n", True),
        (b"import ctypes\nctypes.pydll\n", True),
        (b"import ctypes\nf = lib.gnu_get_libc_version\n", True),
        (b"CDLL(None)\n", False),  # no ctypes
        (b"def f():\n    import ctypes\n    return ctypes.c_int\n", False),
        (b"from ctypes import c_int\nMyCDLL(None)\n", False),  # word boundary
        (b"def f():\n    import ctypes\n    ctypes.CDLLx\n", False),
        # a module-level ``import ctypes`` line, in any module
        (b"import ctypes\nctypes.c_int\n", True),
        (b"import platform\r\nimport ctypes \r\n", True),
        (b"import ctypes  # noqa: F401\n", True),
        (b"import ctypes", True),
        (b"import ctypes as c\n", False),
        (b"import ctypes.util\n", False),
        (b"import ctypes, re\n", False),
        (b"import ctypeslib\n", False),
        (b"if win:\n    import ctypes\n", False),
        (b"# import ctypes\n", False),
    ],
)
def test_prefilter(data: bytes, expected: bool) -> None:
    assert could_need_change(data) is expected


def test_prefilter_false_means_not_parsed_and_unchanged() -> None:
    source = b"x = (\n"  # not even valid Python
    assert transform_source("x.py", source) == SourceResult(source, (), ())


def test_importing_codemods_and_prefilter_does_not_import_libcst() -> None:
    code = (
        "import sys, pipfix.codemods as c\n"
        "assert c.could_need_change(b'import ctypes; ctypes.CDLL(None)')\n"
        "assert 'libcst' not in sys.modules, 'libcst imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_all_codemods() -> None:
    infos = all_codemods()
    assert [info.id for info in infos] == ["dlopen-self", "ctypes-import"]
    assert "pypa/pip#12716" in infos[0].upstream
    for info in infos:
        assert info.why and "\n" not in info.why
        assert all(ref.startswith("pypa/") and "#" in ref for ref in info.upstream)


# --- dlopen-self: synthetic sources ------------------------------------------------


def test_wraps_statement_keeping_comments_in_place() -> None:
    source = (
        "import ctypes\n"
        "\n"
        "\n"
        "def f():\n"
        "    x = 1\n"
        "\n"
        "    # Look up symbols of the running program.\n"
        "    # (dlopen(NULL))\n"
        "    lib = ctypes.CDLL(None)  # type: ignore\n"
        "    return lib  # done\n"
        "    # trailing block comment\n"
    )
    expected = (
        "import ctypes\n"
        "\n"
        "\n"
        "def f():\n"
        "    x = 1\n"
        "\n"
        "    # Look up symbols of the running program.\n"
        "    # (dlopen(NULL))\n"
        "    try:\n"
        "        lib = ctypes.CDLL(None)  # type: ignore\n"
        "    except OSError:\n"
        "        return None\n"
        "    return lib  # done\n"
        "    # trailing block comment\n"
    )
    result = patch(source)
    assert text(result) == expected
    assert result.applied == ("dlopen-self",)
    assert result.unpatchable == ()


@pytest.mark.parametrize(
    ("imports", "call"),
    [
        ("import ctypes", "ctypes.CDLL(None)"),
        ("import ctypes", "ctypes.PyDLL(None)"),
        ("import ctypes", "ctypes.CDLL(name=None)"),
        ("import ctypes", "ctypes.CDLL(None, mode=ctypes.RTLD_GLOBAL)"),
        ("import ctypes.util", "ctypes.CDLL(None)"),
        ("import ctypes as c", "c.CDLL(None)"),
        ("from ctypes import CDLL", "CDLL(None)"),
        ("from ctypes import CDLL as X", "X(None)"),
        ("from ctypes import PyDLL as P", "P(name=None)"),
        ("from ctypes import *", "CDLL(None)"),
        ("import ctypes", "ctypes.cdll.LoadLibrary(None)"),
        ("import ctypes as c", "c.pydll.LoadLibrary(None)"),
        ("from ctypes import cdll", "cdll.LoadLibrary(None)"),
        ("from ctypes import pydll as loader", "loader.LoadLibrary(None)"),
    ],
)
def test_recognises_the_call_through_aliases(imports: str, call: str) -> None:
    source = f"{imports}\n\n\ndef f():\n    handle = {call}\n    return handle\n"
    assert find_unguarded(source.encode()) != []
    result = patch(source)
    assert text(result) == (
        f"{imports}\n\n\ndef f():\n    try:\n        handle = {call}\n"
        "    except OSError:\n        return None\n    return handle\n"
    )
    assert find_unguarded(result.source) == []


@pytest.mark.parametrize(
    "call",
    [
        "ctypes.CDLL('libc.so.6')",
        "ctypes.CDLL(path)",
        "ctypes.CDLL(path, None)",
        "ctypes.CDLL(*args)",
        "ctypes.cdll.LoadLibrary('libc.so.6')",
        "other.CDLL(None)",
        "CDLL(None)",  # not imported from ctypes
        "ctypes.CDLL",
    ],
)
def test_ignores_other_calls(call: str) -> None:
    source = f"import ctypes\n\n\ndef f(path, args):\n    return {call}\n"
    result = patch(source)
    if "ctypes" in call:  # f reads ctypes and returns a value: ctypes-import keeps out
        assert result == SourceResult(source.encode(), (), ())
    else:  # ctypes is never read: ctypes-import guards the import, nothing else changes
        assert result.applied == ("ctypes-import",) and result.unpatchable == ()
        assert text(result) == source.replace("import ctypes\n", GUARDED_IMPORT)


@pytest.mark.parametrize(
    "handler",
    [
        "except OSError:",
        "except OSError as exc:",
        "except IOError:",
        "except EnvironmentError:",
        "except Exception:",
        "except BaseException:",
        "except:",
        "except (ValueError, OSError):",
        "except (AttributeError, builtins.OSError) as e:",
    ],
)
def test_leaves_already_guarded_calls_alone(handler: str) -> None:
    source = (
        "import builtins\nimport ctypes\n\n\ndef f():\n"
        "    try:\n"
        "        with lock:\n"
        "            if ready:\n"
        "                handle = ctypes.CDLL(None)\n"
        f"    {handler}\n"
        "        return None\n"
        "    return handle\n"
    )
    assert find_unguarded(source.encode()) == []
    assert patch(source) == SourceResult(source.encode(), (), ())


def test_try_catching_only_attribute_error_gets_a_guard_inside() -> None:
    source = (
        "import ctypes\n\n\ndef f():\n"
        "    try:\n"
        "        handle = ctypes.CDLL(None).some_symbol\n"
        "    except AttributeError:\n"
        "        return None\n"
        "    return handle\n"
    )
    expected = (
        "import ctypes\n\n\ndef f():\n"
        "    try:\n"
        "        try:\n"
        "            handle = ctypes.CDLL(None).some_symbol\n"
        "        except OSError:\n"
        "            return None\n"
        "    except AttributeError:\n"
        "        return None\n"
        "    return handle\n"
    )
    assert text(patch(source)) == expected


def test_handlers_else_and_finally_are_not_protected_by_their_try() -> None:
    source = (
        "import ctypes\n\n\ndef f():\n"
        "    try:\n"
        "        pass\n"
        "    except OSError:\n"
        "        a = ctypes.CDLL(None)\n"
        "    else:\n"
        "        b = ctypes.CDLL(None)\n"
        "    finally:\n"
        "        c = ctypes.CDLL(None)\n"
    )
    unguarded = find_unguarded(source.encode())
    assert unguarded[0] == (1, "ctypes import not guarded against OSError")  # f returns nothing
    assert len(unguarded) == 4
    result = patch(source)
    assert text(result).count("except OSError:\n") == 4
    assert find_unguarded(result.source) == []


def test_outer_try_does_not_protect_a_nested_function() -> None:
    source = (
        "import ctypes\n\n\ndef outer():\n"
        "    try:\n"
        "        def inner():\n"
        "            return ctypes.CDLL(None)\n"
        "    except OSError:\n"
        "        return None\n"
        "    return inner\n"
    )
    result = patch(source)
    assert (
        "        def inner():\n"
        "            try:\n"
        "                return ctypes.CDLL(None)\n"
        "            except OSError:\n"
        "                return None\n"
    ) in text(result)


def test_statements_in_nested_blocks_and_one_line_suites() -> None:
    source = (
        "import ctypes\n\n\nasync def f(items):\n"
        "    for item in items:\n"
        "        if item: lib = ctypes.CDLL(None)  # one-liner\n"
        "        while True:\n"
        "            with item:\n"
        "                ctypes.CDLL(None); n = 1\n"
        "\n"
        "\n"
        "def g(): return ctypes.CDLL(None)\n"
    )
    expected = (
        "import ctypes\n\n\nasync def f(items):\n"
        "    for item in items:\n"
        "        if item:\n"
        "            try:\n"
        "                lib = ctypes.CDLL(None)  # one-liner\n"
        "            except OSError:\n"
        "                return None\n"
        "        while True:\n"
        "            with item:\n"
        "                try:\n"
        "                    ctypes.CDLL(None); n = 1\n"
        "                except OSError:\n"
        "                    return None\n"
        "\n"
        "\n"
        "def g():\n"
        "    try:\n"
        "        return ctypes.CDLL(None)\n"
        "    except OSError:\n"
        "        return None\n"
    )
    assert text(patch(source)) == expected


def test_methods_and_tab_indentation() -> None:
    source = "import ctypes\n\n\nclass A:\n\tdef m(self):\n\t\tself.lib = ctypes.CDLL(None)\n"
    expected = (
        "try:\n\timport ctypes\nexcept (ImportError, OSError):\n\tctypes = None\n"
        "\n\nclass A:\n\tdef m(self):\n\t\tif ctypes is None:\n\t\t\treturn None\n"
        "\t\ttry:\n\t\t\tself.lib = ctypes.CDLL(None)\n\t\texcept OSError:\n\t\t\treturn None\n"
    )
    result = patch(source)
    assert text(result) == expected
    assert result.applied == ("dlopen-self", "ctypes-import")  # m returns nothing


def test_crlf_newlines_are_kept() -> None:
    source = b"import ctypes\r\n\r\ndef f():\r\n    # c\r\n    lib = ctypes.CDLL(None)\r\n"
    expected = (
        b"try:\r\n    import ctypes\r\nexcept (ImportError, OSError):\r\n    ctypes = None\r\n"
        b"\r\ndef f():\r\n    if ctypes is None:\r\n        return None\r\n    # c\r\n    try:\r\n"
        b"        lib = ctypes.CDLL(None)\r\n    except OSError:\r\n        return None\r\n"
    )
    assert patch(source).source == expected


def test_latin_1_file_is_kept_byte_for_byte() -> None:
    source = (
        "# -*- coding: latin-1 -*-\n"
        "import ctypes\n\n\n"
        "def f():\n"
        "    # Caf\xe9: \xbfd\xf3nde est\xe1 glibc?\n"
        "    lib = ctypes.CDLL(None)\n"
        "    return '\xe9t\xe9', lib\n"
    ).encode("latin-1")
    expected = source.replace(
        b"    lib = ctypes.CDLL(None)\n",
        b"    try:\n        lib = ctypes.CDLL(None)\n    except OSError:\n        return None\n",
    )
    result = patch(source)
    assert result.source == expected
    assert b"Caf\xe9" in result.source


# --- unpatchable shapes -----------------------------------------------------------


UNPATCHABLE = [
    ("x = ctypes.CDLL(None)\n", 3, "at module level"),
    ("def f():\n    g = lambda: ctypes.CDLL(None)\n", 4, "in a lambda"),
    ("class A:\n    lib = ctypes.CDLL(None)\n", 4, "in a class body"),
    ("def f(lib=ctypes.CDLL(None)):\n    pass\n", 3, "in a default argument"),
    ("def f():\n    return [ctypes.CDLL(None) for _ in 'ab']\n", 4, "in a comprehension"),
    ("def f():\n    return list(ctypes.CDLL(None) for _ in 'a')\n", 4, "generator expression"),
    ("@register(ctypes.CDLL(None))\ndef f():\n    pass\n", 3, "in a decorator"),
    ("def f():\n    if ctypes.CDLL(None):\n        pass\n", 4, "in the test of an if"),
    ("def f():\n    while ctypes.CDLL(None):\n        pass\n", 4, "in the test of a while"),
    ("def f():\n    with ctypes.CDLL(None) as lib:\n        pass\n", 4, "in a with item"),
    ("def f():\n    for _ in ctypes.CDLL(None):\n        pass\n", 4, "for loop"),
    (
        "def f():\n    try:\n        pass\n    except ctypes.CDLL(None):\n        pass\n",
        6,
        "in an except clause",
    ),
    ("if True:\n    lib = ctypes.CDLL(None)\n", 4, "at module level"),
]


@pytest.mark.parametrize(("body", "line", "reason"), UNPATCHABLE)
def test_unpatchable_shapes_are_reported_and_left_alone(body: str, line: int, reason: str) -> None:
    # Read at import time, so ctypes-import keeps out (see the test below).
    source = f"import ctypes\nc_int = ctypes.c_int\n{body}"
    result = patch(source, "mod.py")
    assert result.source == source.encode()
    assert result.applied == ()
    [problem] = result.unpatchable
    assert (problem.path, problem.line) == ("mod.py", line)
    assert reason in problem.reason and "ctypes.CDLL(None)" in problem.reason
    assert find_unguarded(source.encode()) == [
        (line, "ctypes.CDLL(None) not guarded against OSError")
    ]


def test_ctypes_import_still_guards_the_import_where_dlopen_self_cannot() -> None:
    source = "import ctypes\n\n\ndef f():\n    if ctypes.CDLL(None):\n        pass\n"
    result = patch(source)
    assert result.applied == ("ctypes-import",)
    assert result.unpatchable == (
        Unpatchable(
            "t.py", 5, "ctypes.CDLL(None) in the test of an if statement: cannot guard safely"
        ),
    )
    assert text(result) == (
        GUARDED_IMPORT + "\n\ndef f():\n    if ctypes is None:\n        return None\n"
        "    if ctypes.CDLL(None):\n        pass\n"
    )


def test_one_unpatchable_call_leaves_the_whole_file_to_the_user() -> None:
    source = (
        "import ctypes\n\n\n"
        "def f():\n    return ctypes.CDLL(None)\n\n\n"  # patchable
        "g = lambda: ctypes.CDLL(None)\n"
    )
    result = patch(source)
    assert result.source == source.encode()
    assert result.unpatchable == (
        Unpatchable("t.py", 8, "ctypes.CDLL(None) in a lambda: cannot guard safely"),
    )


def test_unparsable_file_is_reported_not_raised() -> None:
    source = b"import ctypes\nprint 'python 2'\nctypes.CDLL(None)\n"
    result = transform_source("old.py", source)
    assert result.source == source and result.applied == ()
    [problem] = result.unpatchable
    assert problem.path == "old.py" and problem.line == 2 and "parse" in problem.reason


# --- ctypes-import: synthetic glibc-detection modules ------------------------------


def _glibc_module(function_body: str) -> str:
    return (
        "def glibc_version_string_ctypes():\n"
        f"{function_body}"
        "    return ctypes.CDLL('libc.so.6').gnu_get_libc_version()\n"
    )


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        ("except ImportError:", "except (ImportError, OSError):"),
        ("except ImportError as exc:", "except (ImportError, OSError) as exc:"),
        ("except (ImportError):", "except (ImportError, OSError):"),
        ("except ModuleNotFoundError:", "except (ModuleNotFoundError, OSError):"),
        ("except (AttributeError, ImportError):", "except (AttributeError, ImportError, OSError):"),
        ("except (ImportError,):", "except (ImportError, OSError,):"),
        ("except(ImportError, ValueError) as e:", "except(ImportError, ValueError, OSError) as e:"),
    ],
)
def test_import_error_handler_also_catches_oserror(handler: str, expected: str) -> None:
    source = _glibc_module(
        f"    try:\n        import ctypes\n    {handler}  # no ctypes\n        return None\n"
    )
    result = patch(source)
    assert text(result) == source.replace(handler, expected)
    assert result.applied == ("ctypes-import",)
    assert find_unguarded(result.source) == []


def test_multiline_handler_tuple_keeps_its_layout() -> None:
    source = _glibc_module(
        "    try:\n"
        "        from ctypes import CDLL, c_char_p\n"
        "    except (\n"
        "        AttributeError,\n"
        "        ImportError,\n"
        "    ):\n"
        "        return None\n"
    )
    expected = source.replace("        ImportError,\n", "        ImportError,\n        OSError,\n")
    assert text(patch(source)) == expected


def test_only_the_import_error_handler_changes() -> None:
    source = _glibc_module(
        "    try:\n"
        "        import ctypes\n"
        "    except ValueError:\n"
        "        raise\n"
        "    except ImportError:\n"
        "        return None\n"
    )
    expected = source.replace("    except ImportError:", "    except (ImportError, OSError):")
    assert text(patch(source)) == expected


def test_unguarded_import_in_a_function_is_wrapped() -> None:
    source = (
        "def _glibc_version_string():\n"
        "    # Returns glibc version string, or None if not using glibc.\n"
        "    import ctypes\n"
        "\n"
        "    process_namespace = ctypes.CDLL(None)\n"
        "    return process_namespace.gnu_get_libc_version\n"
    )
    expected = (
        "def _glibc_version_string():\n"
        "    # Returns glibc version string, or None if not using glibc.\n"
        "    try:\n"
        "        import ctypes\n"
        "    except (ImportError, OSError):\n"
        "        return None\n"
        "\n"
        "    try:\n"
        "        process_namespace = ctypes.CDLL(None)\n"
        "    except OSError:\n"
        "        return None\n"
        "    return process_namespace.gnu_get_libc_version\n"
    )
    result = patch(source)
    assert text(result) == expected
    assert result.applied == ("dlopen-self", "ctypes-import")


def test_module_level_import_gets_a_none_fallback_and_readers_check_it() -> None:
    source = (
        "from __future__ import absolute_import\n"
        "\n"
        "# We need ctypes.\n"
        "import ctypes  # noqa\n"
        "import re\n"
        "\n"
        "\n"
        "def glibc_version_string():\n"
        '    """Docstring."""\n'
        "\n"
        "    # Comment.\n"
        "    handle = ctypes.CDLL('libc.so.6')\n"
        "    return handle.gnu_get_libc_version()\n"
        "\n"
        "\n"
        "def typed():\n"
        "    # type: () -> int\n"
        "    return [ctypes.sizeof(t) for t in (ctypes.c_int,)][0]\n"
        "\n"
        "\n"
        "def one_liner(): return ctypes.c_int\n"
        "\n"
        "\n"
        "def unrelated(version):\n"
        "    return re.match('x', version)\n"
    )
    expected = (
        "from __future__ import absolute_import\n"
        "\n"
        "# We need ctypes.\n"
        "try:\n"
        "    import ctypes  # noqa\n"
        "except (ImportError, OSError):\n"
        "    ctypes = None\n"
        "import re\n"
        "\n"
        "\n"
        "def glibc_version_string():\n"
        '    """Docstring."""\n'
        "    if ctypes is None:\n"
        "        return None\n"
        "\n"
        "    # Comment.\n"
        "    handle = ctypes.CDLL('libc.so.6')\n"
        "    return handle.gnu_get_libc_version()\n"
        "\n"
        "\n"
        "def typed():\n"
        "    # type: () -> int\n"
        "    if ctypes is None:\n"
        "        return None\n"
        "    return [ctypes.sizeof(t) for t in (ctypes.c_int,)][0]\n"
        "\n"
        "\n"
        "def one_liner():\n"
        "    if ctypes is None:\n"
        "        return None\n"
        "    return ctypes.c_int\n"
        "\n"
        "\n"
        "def unrelated(version):\n"
        "    return re.match('x', version)\n"
    )
    result = patch(source)
    assert text(result) == expected
    assert result.applied == ("ctypes-import",)
    assert find_unguarded(result.source) == []


def test_module_level_from_import_binds_every_name_to_none() -> None:
    source = (
        "from ctypes import CDLL as Loader, c_char_p\n"
        "\n"
        "\n"
        "def version():\n"
        "    return Loader('libc.so.6').gnu_get_libc_version\n"
    )
    expected = (
        "try:\n"
        "    from ctypes import CDLL as Loader, c_char_p\n"
        "except (ImportError, OSError):\n"
        "    Loader = c_char_p = None\n"
        "\n"
        "\n"
        "def version():\n"
        "    if Loader is None:\n"
        "        return None\n"
        "    return Loader('libc.so.6').gnu_get_libc_version\n"
    )
    assert text(patch(source)) == expected


@pytest.mark.parametrize(
    ("source", "line", "reason"),
    [
        ("import ctypes\nc_char_p = ctypes.c_char_p\n", 2, "'ctypes' is read at module level"),
        ("import ctypes\nclass A:\n    t = ctypes.c_int\n", 3, "'ctypes' is read in a class body"),
        ("import ctypes\nf = lambda: ctypes.c_int\n", 2, "'ctypes' is read in a lambda"),
        ("import ctypes, re\n", 1, "together with other modules"),
        ("import ctypes; import re\n", 1, "shares its line"),
        ("from ctypes import *\n", 1, "from ctypes import *"),
        ("class A:\n    import ctypes\n", 2, "ctypes import in a class body"),
    ],
)
def test_ctypes_import_unpatchable(source: str, line: int, reason: str) -> None:
    source += "# gnu_get_libc_version\n"
    result = patch(source)
    assert result.source == source.encode()
    [problem] = result.unpatchable
    assert problem.line == line and reason in problem.reason


def test_unpatchable_lines_refer_to_the_input_even_after_another_codemod_ran() -> None:
    source = (
        "import ctypes\n\n\n"
        "def f():\n    return ctypes.CDLL(None).gnu_get_libc_version\n\n\n"
        "c_char_p = ctypes.c_char_p\n"
    )
    result = patch(source)
    assert result.applied == ("dlopen-self",)  # dlopen-self still applies
    assert [(p.line, p.reason) for p in result.unpatchable] == [
        (8, "'ctypes' is read at module level: cannot guard its import safely"),
    ]


def test_imports_in_functions_are_only_touched_in_glibc_detection_modules() -> None:
    source = "def f():\n    import ctypes\n    return ctypes.CDLL('x')\n"
    assert patch(source) == SourceResult(source.encode(), (), ())
    assert text(patch(source + "# gnu_get_libc_version\n")).startswith(
        "def f():\n    try:\n        import ctypes\n    except (ImportError, OSError):\n"
    )


def test_imports_already_protected_against_oserror_are_left_alone() -> None:
    source = _glibc_module(
        "    try:\n"
        "        try:\n"
        "            import ctypes\n"
        "        except ImportError:\n"
        "            return None\n"
        "    except OSError:\n"
        "        return None\n"
    )
    assert patch(source) == SourceResult(source.encode(), (), ())


# --- ctypes-import: a module-level import ctypes in any module --------------------


def test_module_level_import_in_any_module_binds_none_and_procedures_check_it() -> None:
    source = (
        "import platform\n"
        "import ctypes\n"
        "\n"
        "\n"
        "def windows_only(func):\n"
        "    if platform.system() != 'Windows':\n"
        "        return lambda *args, **kwargs: None\n"
        "    return func\n"
        "\n"
        "\n"
        "@windows_only\n"
        "def hide_file(path):\n"
        '    """\n'
        "    Set the hidden attribute on a file or directory.\n"
        '    """\n'
        "    __import__('ctypes.wintypes')\n"
        "    SetFileAttributes = ctypes.windll.kernel32.SetFileAttributesW\n"
        "    ret = SetFileAttributes(path, 0x02)\n"
        "    if not ret:\n"
        "        raise ctypes.WinError()\n"
        "\n"
        "\n"
        "class Console:\n"
        "    def beep(self): ctypes.windll.user32.MessageBeep(0)\n"
        "\n"
        "    def clear(self, handles):\n"
        "        def one(handle):\n"
        "            ctypes.windll.kernel32.CloseHandle(handle)\n"
        "        for handle in handles:\n"
        "            if not handle:\n"
        "                return None\n"
        "            [one(h) for h in [handle] if ctypes.windll]\n"
        "        return\n"
    )
    expected = (
        "import platform\n"
        "try:\n"
        "    import ctypes\n"
        "except (ImportError, OSError):\n"
        "    ctypes = None\n"
        "\n"
        "\n"
        "def windows_only(func):\n"
        "    if platform.system() != 'Windows':\n"
        "        return lambda *args, **kwargs: None\n"
        "    return func\n"
        "\n"
        "\n"
        "@windows_only\n"
        "def hide_file(path):\n"
        '    """\n'
        "    Set the hidden attribute on a file or directory.\n"
        '    """\n'
        "    if ctypes is None:\n"
        "        return None\n"
        "    __import__('ctypes.wintypes')\n"
        "    SetFileAttributes = ctypes.windll.kernel32.SetFileAttributesW\n"
        "    ret = SetFileAttributes(path, 0x02)\n"
        "    if not ret:\n"
        "        raise ctypes.WinError()\n"
        "\n"
        "\n"
        "class Console:\n"
        "    def beep(self):\n"
        "        if ctypes is None:\n"
        "            return None\n"
        "        ctypes.windll.user32.MessageBeep(0)\n"
        "\n"
        "    def clear(self, handles):\n"
        "        if ctypes is None:\n"
        "            return None\n"
        "        def one(handle):\n"
        "            if ctypes is None:\n"
        "                return None\n"
        "            ctypes.windll.kernel32.CloseHandle(handle)\n"
        "        for handle in handles:\n"
        "            if not handle:\n"
        "                return None\n"
        "            [one(h) for h in [handle] if ctypes.windll]\n"
        "        return\n"
    )
    assert find_unguarded(source.encode()) == [(2, "ctypes import not guarded against OSError")]
    result = patch(source, "setuptools/windows_support.py")
    assert text(result) == expected
    assert result.applied == ("ctypes-import",)
    assert result.unpatchable == ()
    assert find_unguarded(result.source) == []
    namespace = _run_module(result.source, OSError("Dynamic loading not supported"))
    assert namespace["Console"]().clear([1]) is None


def test_module_level_import_keeps_its_comments() -> None:
    source = "# Windows only.\nimport ctypes  # noqa: F401\n\n\ndef f():\n    ctypes.x()\n"
    expected = (
        "# Windows only.\ntry:\n    import ctypes  # noqa: F401\n"
        "except (ImportError, OSError):\n    ctypes = None\n"
        "\n\ndef f():\n    if ctypes is None:\n        return None\n    ctypes.x()\n"
    )
    assert text(patch(source)) == expected


# Each makes the module need ctypes at import time (then guarding the import
# would not help), or makes ``return None`` a guess about a function's result.
NEEDS_CTYPES = [
    pytest.param("c_int = ctypes.c_int\n", id="module-level-read"),
    pytest.param("if True:\n    print(ctypes)\n", id="module-level-read-in-if"),
    pytest.param("names = [ctypes.c_int for _ in 'a']\n", id="module-level-comprehension"),
    pytest.param("class A:\n    t = ctypes.c_int\n", id="class-body"),
    pytest.param("@register(ctypes)\ndef g():\n    pass\n", id="decorator"),
    pytest.param("def g(t=ctypes.c_int):\n    pass\n", id="default-argument"),
    pytest.param("def g(t: ctypes.c_int):\n    pass\n", id="annotation"),
    pytest.param("g = lambda: ctypes.c_int\n", id="module-level-lambda"),
    pytest.param("def g():\n    h = lambda: ctypes.c_int\n", id="lambda-in-function"),
    pytest.param("def g():\n    class B:\n        t = ctypes.c_int\n", id="class-in-function"),
    pytest.param("def g():\n    return ctypes.sizeof(ctypes.c_int)\n", id="returns-a-value"),
    pytest.param("def g():\n    if ctypes.windll:\n        return 1\n", id="returns-a-value-2"),
    pytest.param("def g():\n    yield ctypes.c_int\n", id="generator"),
    pytest.param("from ctypes import wintypes\n", id="other-ctypes-import"),
    pytest.param("import ctypes.wintypes\n", id="binds-the-name-again"),
    pytest.param("import ctypes\n", id="imported-twice"),
    pytest.param("class A:\n    import ctypes.util\n", id="import-in-class-body"),
    pytest.param("def g():\n    global ctypes\n    ctypes = None\n", id="global-rebinding"),
    pytest.param("del ctypes\n", id="deleted"),
]


@pytest.mark.parametrize("shape", NEEDS_CTYPES)
def test_module_level_import_left_alone_where_ctypes_is_needed(shape: str) -> None:
    source = f"import ctypes\n\n\ndef procedure():\n    ctypes.windll.x()\n\n\n{shape}"
    assert could_need_change(source.encode())
    assert patch(source) == SourceResult(source.encode(), (), ())  # not unpatchable either
    assert find_unguarded(source.encode()) == []


@pytest.mark.parametrize(
    "header",
    [
        "import ctypes as c\n",
        "import ctypes, re\n",
        "import ctypes; x = 1\n",
        "try:\n    import ctypes\nexcept ImportError:\n    ctypes = None\n",
        "if sys.platform == 'win32':\n    import ctypes\n",
    ],
)
def test_other_import_shapes_are_out_of_scope_outside_glibc_detection(header: str) -> None:
    source = f"import sys\n{header}\n\ndef procedure():\n    ctypes.windll.x()\n"
    assert patch(source) == SourceResult(source.encode(), (), ())
    assert find_unguarded(source.encode()) == []


def test_protected_or_function_level_ctypes_imports_do_not_keep_the_rule_out() -> None:
    source = (
        "import ctypes\n"
        "try:\n    from ctypes import wintypes\nexcept OSError:\n    wintypes = None\n"
        "\n\ndef f():\n    ctypes.x()\n"
        "\n\ndef g():\n    import ctypes.util  # binds g's own ctypes\n"
        "    return ctypes.util.find_library('c')\n"
    )
    result = patch(source)
    assert text(result) == (
        GUARDED_IMPORT
        + "try:\n    from ctypes import wintypes\nexcept OSError:\n    wintypes = None\n"
        "\n\ndef f():\n    if ctypes is None:\n        return None\n    ctypes.x()\n"
        "\n\ndef g():\n    import ctypes.util  # binds g's own ctypes\n"
        "    return ctypes.util.find_library('c')\n"
    )
    assert find_unguarded(result.source) == []


# --- property: random nesting of blocks, comments and dlopen(NULL) calls ------------

_CALL = "lib = ctypes.CDLL(None)"


@st.composite
def _block(draw: st.DrawFn, depth: int = 1) -> list[str]:
    """Lines of a block body at indentation ``depth`` (4 spaces each)."""
    pad = "    " * depth
    lines: list[str] = []
    kinds = ["call", "plain", "comment"] + (["if", "for", "with", "try"] if depth < 4 else [])
    for kind in draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=3)):
        if kind == "call":
            lines.append(pad + _CALL + draw(st.sampled_from(["", "  # type: ignore"])))
        elif kind == "plain":
            lines.append(pad + "x = 1")
        elif kind == "comment":
            lines += [pad + "# note", pad + "x = 2"]
        elif kind == "try":
            caught = draw(st.sampled_from(["AttributeError", "OSError", "(ValueError, OSError)"]))
            lines += [pad + "try:", *draw(_block(depth + 1)), pad + f"except {caught}:"]
            lines += draw(_block(depth + 1))
            if draw(st.booleans()):
                lines += [pad + "finally:", *draw(_block(depth + 1))]
        else:
            header = {"if": "if items:", "for": "for item in items:", "with": "with items:"}[kind]
            lines += [pad + header, *draw(_block(depth + 1))]
            if kind == "if" and draw(st.booleans()):
                lines += [pad + "else:", *draw(_block(depth + 1))]
    return lines


@settings(max_examples=50, deadline=None, database=None)
@given(_block())
def test_any_nesting_of_blocks_ends_up_guarded(body: list[str]) -> None:
    source = "import ctypes\n\n\ndef f(items):\n" + "\n".join(body) + "\n"
    # f returns nothing: ctypes-import guards the module-level import as well.
    import_line, *unguarded = find_unguarded(source.encode())
    assert import_line == (1, "ctypes import not guarded against OSError")
    result = patch(source)
    assert result.unpatchable == ()
    assert find_unguarded(result.source) == []
    assert text(result).startswith(GUARDED_IMPORT)
    assert text(result).count(_CALL) == source.count(_CALL)
    guards = text(result).count("except OSError:") - source.count("except OSError:")
    assert guards == len(unguarded)
    assert result.applied == ("dlopen-self",) * bool(unguarded) + ("ctypes-import",)


# --- the ast screen only saves work ------------------------------------------------------

SCREEN_EXTRA = [
    b"from ctypes import CDLL as load\ndef f():\n    return load(None)\n",
    b"import ctypes as c\ndef f():\n    c.cdll.LoadLibrary(name=None)\n",
    b"import ctypes\ndef f():\n    return 1\n",  # module-level import, no loader
    b"import ctypes\nX = ctypes.c_int\n",  # read at module level: left alone
    b"import ctypes\ndef f():\n    ctypes.CDLL(None)\n",
    b"import ctypes\nfrom __future__ import annotations\n",  # does not compile
    b"import ctypes\ndef f():\n    ctypes.pydll.LoadLibrary('x')\n",
]


def _screened_sources() -> list[bytes]:
    """Every distinct member of the pinned wheels the byte pre-filter lets through,
    the unsafe shapes of test_codemod_safety, and a few more."""
    from test_codemod_safety import SHAPES

    sources = {s for name in WHEELS for _, s in py_members(name) if could_need_change(s)}
    sources.update(shape.encode("utf-8") for shape in SHAPES.values())
    sources.update(SCREEN_EXTRA)
    return sorted(sources)


def test_screen_never_hides_a_change_or_a_report() -> None:
    """Whatever the ``ast`` screen rules out, the codemods run on everything would have
    left unchanged and unreported: the output is byte for byte the same."""
    from pipfix.codemods import engine, screen

    sources = _screened_sources()
    ruled_out = 0
    for source in sources:
        screened = transform_source("m.py", source)
        unscreened = engine.transform_source("m.py", source, in_scope=screen.ALL)
        assert screened == unscreened, source[:200]
        ruled_out += screen.codemods_in_scope(source) != screen.ALL
    assert ruled_out > len(sources) // 2  # the screen does rule most of them out


# Sources ``ast.parse`` accepts and CPython's compiler refuses, one per check after parsing.
NOT_COMPILING = [
    b"import ctypes\nreturn None\n",
    b"import ctypes\nnonlocal ctypes\n",
    b"import ctypes\ndef f(a, a):\n    ctypes.CDLL(None)\n",
    b"import ctypes\nbreak\n",
    b"import ctypes\nawait ctypes.CDLL(None)\n",
    b"import ctypes\nyield ctypes.CDLL(None)\n",
    b"import ctypes\ndef f():\n    x = 1\n    global x\n    ctypes.CDLL(None)\n",
    b"gnu_get_libc_version = 1\nimport ctypes\nfrom __future__ import braces\n",
]


def test_the_screens_tree_compiles_as_the_source_does() -> None:
    """The engine compiles the tree the screen parsed instead of the source: same
    verdict, same report, for every screened source and every kind of refusal."""
    from pipfix.codemods import engine, screen

    sources = [*_screened_sources(), *NOT_COMPILING]
    refused = 0
    for source in sources:
        in_scope, parsed = screen.screen(source)
        assert in_scope == screen.codemods_in_scope(source)
        if parsed is None:
            continue
        from_tree = engine.transform_source("m.py", source, screen.ALL, parsed)
        assert from_tree == engine.transform_source("m.py", source, screen.ALL), source[:200]
        refused += any("cannot parse" in u.reason for u in from_tree.unpatchable)
    assert refused >= len(NOT_COMPILING) + 1  # and SCREEN_EXTRA's misplaced __future__


# --- the tree search skips formatting only -----------------------------------------------


def _every_node(node: Any) -> Iterator[Any]:
    """Every node below ``node`` through every field, as libcst's dataclasses define them."""
    import dataclasses

    import libcst as cst

    yield node
    for field in dataclasses.fields(node):
        value = getattr(node, field.name)
        for child in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(child, cst.CSTNode):
                yield from _every_node(child)


def test_find_skips_nothing_but_formatting() -> None:
    """``helpers.find`` does not descend into whitespace, brackets or operators; on every
    candidate module of the pinned wheels it still finds each node a full walk finds,
    of every type that is not formatting."""
    import libcst as cst

    from pipfix.codemods.helpers import find

    formatting = (
        cst.BaseParenthesizableWhitespace, cst.EmptyLine, cst.TrailingWhitespace, cst.Newline,
        cst.Comment, cst.LeftParen, cst.RightParen, cst.LeftSquareBracket,
        cst.RightSquareBracket, cst.LeftCurlyBrace, cst.RightCurlyBrace, cst.Comma,
        cst.Semicolon, cst.Colon, cst.AssignEqual, cst.Dot, cst.BaseBinaryOp, cst.BaseBooleanOp,
        cst.BaseCompOp, cst.BaseUnaryOp, cst.BaseAugOp, cst.Asynchronous,
    )
    for source in _screened_sources():
        try:
            module = cst.parse_module(source)
        except cst.ParserSyntaxError:
            continue
        everything = [node for node in _every_node(module) if not isinstance(node, formatting)]
        found = [node for node, _ in find(module, (cst.CSTNode,))]
        code = [node for node in found if not isinstance(node, formatting)]
        assert {id(node) for node in code} == {id(node) for node in everything}, source[:200]


# --- only the changed statements are generated ------------------------------------------

SPLICE_EXTRA = [
    # the same function twice: its text is not unique, the whole module is generated
    b"import ctypes\n\ndef f():\n    x = ctypes.CDLL(None)\n    return x\n\n"
    b"def f():\n    x = ctypes.CDLL(None)\n    return x\n",
    # the changed statement ends the file without a newline
    b"import ctypes\ndef f():\n    x = ctypes.CDLL(None)\n    return x",
    # a module-level import becomes a try statement
    b"# header\nimport ctypes\n\n\ndef f():\n    return ctypes.CDLL(None)\n",
]


def test_splicing_changed_statements_equals_generating_the_module() -> None:
    """The engine regenerates only the top-level statements that changed and splices
    them into the source; on every module the codemods change, the result is byte for
    byte libcst's code for the whole patched module."""
    import libcst as cst

    from pipfix.codemods import engine

    checked = 0
    for source in [*_screened_sources(), *SPLICE_EXTRA]:
        result = transform_source("m.py", source)
        if not result.applied or result.unpatchable:
            continue
        module = cst.parse_module(source)
        for codemod in engine.REGISTRY:
            if codemod.INFO.id in result.applied:
                module = codemod.run(module, source).module
        assert result.source == module.bytes, source[:200]
        checked += 1
    assert checked >= 20

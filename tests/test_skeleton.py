"""libcst parses only what the codemods can see (``codemods.skeleton``): the
result is byte for byte the whole module's, on every candidate module of the
pinned wheels, on hand-made edge cases and on random modules."""

from __future__ import annotations

import ast

import libcst as cst
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pipfix.codemods import engine, screen
from pipfix.codemods.skeleton import visible_source
from test_codemods import _screened_sources, member

EDGE_CASES = [
    # the first indented block is tab-indented and hidden: the guards are written with tabs
    b"import os\n\ndef plain():\n\treturn os.sep\n\n\ndef load():\n    lib = ctypes.CDLL(None)\n"
    b"    return lib\n\nimport ctypes\n",
    # aliases: the hidden statements do not name them, the kept ones do
    b"from ctypes import CDLL as L\n\nclass K:\n  def m(self):\n    return 1\n\n"
    b"def f():\n    L(None)\n",
    b"import ctypes as c\n\ndef g():\n    pass\n\ndef f():\n    lib = c.cdll.LoadLibrary(None)\n",
    # a star import may rebind anything: kept
    b"import ctypes\n\ndef g():\n    pass\n\nfrom os import *\n\ndef f():\n    ctypes.CDLL(None)\n",
    # statements sharing a line form one group
    b"def g():\n    pass\n\nx = 1; import ctypes\n\ndef f():\n    return 1\n",
    # the first block's body continues its header's line: in doubt, kept until a sure one
    b"def g(): \\\n    return 1\n\ndef h():\n  return 2\n\ndef f():\n    ctypes.CDLL(None)\n"
    b"import ctypes\n",
    # a module-level import becomes a try statement, after hidden statements with comments
    b"# header\nimport os\n\n\ndef g():\n    return os.sep\n\n# about ctypes\nimport ctypes\n\n\n"
    b"def f():\n    return ctypes.sizeof(ctypes.c_int)\n",
    # CRLF and a latin-1 declaration
    b"# -*- coding: latin-1 -*-\r\nimport os\r\n\r\ndef g():\r\n    return '\xe9'\r\n\r\n"
    b"def f():\r\n    x = ctypes.CDLL(None)\r\n    return x\r\n\r\nimport ctypes\r\n",
    # the changed function twice: not spliceable, the whole module is parsed
    b"import ctypes\n\ndef g():\n    pass\n\ndef f():\n    x = ctypes.CDLL(None)\n    return x\n\n"
    b"def f():\n    x = ctypes.CDLL(None)\n    return x\n",
    # a comment indented under the changed function, then a hidden one
    b"import ctypes\n\ndef g():\n    pass\n\ndef f():\n    x = ctypes.CDLL(None)\n    # end\n\n"
    b"def h():\n    pass\n",
    # an unguardable call is reported with the line numbers of the source
    b"import ctypes\n\ndef g():\n    pass\n\n\nlib = ctypes.CDLL(None)\n",
    # the last statement, hidden, ends the file without a newline
    b"import ctypes\n\ndef f():\n    ctypes.CDLL(None)\n\ndef g():\n    pass",
]


def _whole(source: bytes, in_scope: frozenset[str] = screen.ALL) -> object:
    """What the engine gives parsing the whole module (of a source that compiles:
    the engine reports one that does not before parsing anything with libcst)."""
    return engine.transform_whole("m.py", source, in_scope)


def _compiles(source: bytes) -> bool:
    try:
        compile(source, "m.py", "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return True


@pytest.mark.parametrize("source", EDGE_CASES)
def test_edge_cases_come_out_as_from_the_whole_module(source: bytes) -> None:
    assert _compiles(source)
    assert engine.transform_source("m.py", source, screen.ALL) == _whole(source)


def test_every_candidate_of_the_pinned_wheels_comes_out_as_from_the_whole_module() -> None:
    """Most candidates take the short path, and every one gives the same result."""
    short = 0
    for source in [*_screened_sources(), *EDGE_CASES]:
        in_scope, tree = screen.screen(source)
        if tree is None or not in_scope or not _compiles(source):
            continue
        assert engine.transform_source("m.py", source, in_scope, tree) == _whole(
            source, in_scope
        ), source[:200]
        visible = visible_source(source, tree)
        if visible is not None:
            short += engine.transform_visible("m.py", source, visible, in_scope) is not None
    assert short >= 20


@pytest.mark.parametrize(
    "path", ["pip/_internal/utils/glibc.py", "pip/_vendor/packaging/_manylinux.py"]
)
def test_pips_glibc_detection_takes_the_short_path(path: str) -> None:
    source = member("pip-23.2.1-py3-none-any.whl", path)
    tree = ast.parse(source)
    visible = visible_source(source, tree)
    assert visible is not None
    assert len(visible.splitlines()) == len(source.splitlines())
    assert len(visible.strip()) < 0.9 * len(source)
    result = engine.transform_visible(path, source, visible, screen.ALL)
    assert result is not None and result.applied
    assert result == _whole(source)


def test_hidden_statements_become_empty_lines_and_the_first_block_a_stand_in() -> None:
    source = b"import os\n\n\nclass K:\n\tX = 1\n\tY = 2\n\n\ndef f():\n    ctypes.CDLL(None)\n"
    visible = visible_source(source, ast.parse(source))
    assert visible == b"import os\n\n\nif 1:\n\tpass\n\n\n\ndef f():\n    ctypes.CDLL(None)\n"
    assert cst.parse_module(visible).default_indent == cst.parse_module(source).default_indent


@pytest.mark.parametrize(
    "source",
    [
        b"\xef\xbb\xbfimport ctypes\n\ndef g():\n    pass\n\ndef f():\n    ctypes.CDLL(None)\n",
        # a non-ASCII alias: ast normalizes it, libcst does not
        "import ctypes as \u00e7\n\ndef g():\n    pass\n\n"
        "def f():\n    \u00e7.CDLL(None)\n".encode(),
        # nothing to hide
        b"import ctypes\n\ndef f():\n    ctypes.CDLL(None)\n",
    ],
)
def test_in_doubt_or_with_nothing_to_hide_the_whole_module_is_parsed(source: bytes) -> None:
    assert visible_source(source, ast.parse(source)) is None


# --- random modules ---------------------------------------------------------------------

_CHUNKS = [
    "import os",
    "import ctypes",
    "import ctypes as c",
    "from ctypes import CDLL as L",
    "from ctypes import *",
    "from os import *",
    "x = 1; y = 2",
    "X = ctypes.c_int",
    "# a comment",
    "if True: z = 1\nelse: z = 2",
    "s = '''\nctypes in a string\n'''",
    "def plain(x):\n{I}return x",
    "def cont(): \\\n{I}return 1",
    "class K:\n{I}def m(self):\n{I}{I}return 1",
    "@decorator\ndef deco():\n{I}pass",
    "def load():\n{I}lib = ctypes.CDLL(None)\n{I}return lib",
    "def proc():\n{I}ctypes.CDLL(None)",
    "def aliased():\n{I}lib = c.CDLL(None)",
    "def star():\n{I}x = CDLL(None)",
    "def named():\n{I}L(None)",
    "def glibc():\n{I}try:\n{I}{I}import ctypes\n{I}except ImportError:\n{I}{I}return None\n"
    "{I}return ctypes.CDLL(None).gnu_get_libc_version",
    "try:\n{I}import ctypes\nexcept ImportError:\n{I}ctypes = None",
    "lib = ctypes.CDLL(None)",
]


@st.composite
def _modules(draw: st.DrawFn) -> bytes:
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    chunks = []
    for chunk in draw(st.lists(st.sampled_from(_CHUNKS), min_size=1, max_size=8)):
        indent = draw(st.sampled_from(["    ", "\t", "  "]))
        gap = draw(st.sampled_from(["", "\n", "\n\n# between\n"]))
        chunks.append(chunk.replace("{I}", indent) + "\n" + gap)
    return "".join(chunks).replace("\n", newline).encode()


@settings(max_examples=150, deadline=None, database=None)
@given(_modules())
def test_random_modules_come_out_as_from_the_whole_module(source: bytes) -> None:
    assume(_compiles(source))
    assert engine.transform_source("m.py", source, screen.ALL) == _whole(source)
    in_scope = screen.codemods_in_scope(source)
    if in_scope:
        assert engine.transform_source("m.py", source, in_scope) == _whole(source, in_scope)

"""Real ELF files for the tests, built with the machine's gcc / musl-gcc.

A missing compiler skips the test with the reason, except in CI (``CI=true``),
where it fails: CI installs them (build-essential, musl-tools).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from pipfix import elf, linkage

from conftest import IN_CI

DEMO_MODULE = "pipfixdemo"
DEMO_SUFFIX = ".abi3.so"  # limited API: one build loads in every Python 3 on this machine

DEMO_SOURCE = r"""
#define Py_LIMITED_API 0x03070000
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *add(PyObject *self, PyObject *args) {
    long a, b;
    if (!PyArg_ParseTuple(args, "ll", &a, &b)) return NULL;
    return PyLong_FromLong(a + b);
}
static PyMethodDef methods[] = {{"add", add, METH_VARARGS, "a + b"}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "pipfixdemo", NULL, -1, methods};
PyMODINIT_FUNC PyInit_pipfixdemo(void) { return PyModule_Create(&module); }
"""

STUB_SOURCE = "int pipfix_stub(void) { return 42; }\n"
MAIN_SOURCE = "int main(void) { return 0; }\n"


def require_tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed (apt-get install {package})"
    if IN_CI:
        pytest.fail(f"{message}; CI must provide it")
    pytest.skip(message)


def python_include() -> Path:
    include = Path(sysconfig.get_path("include"))
    if not (include / "Python.h").is_file():
        message = f"Python.h not found in {include} (install the python3-dev headers)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return include


def compile_c(compiler: str, source: str, output: Path, *flags: str) -> Path:
    source_file = output.with_name(output.name + ".c")
    source_file.write_text(source, encoding="utf-8")
    completed = subprocess.run(
        [compiler, *flags, "-o", str(output), str(source_file)],
        capture_output=True, text=True, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    source_file.unlink()
    return output


def stand_in_soname() -> str:
    """A libpython name no loader on this machine can find (a debug-ABI name)."""
    return f"libpython{sys.version_info[0]}.{sys.version_info[1]}d.so.1.0"


def build_stub(directory: Path, soname: str) -> Path:
    gcc = require_tool("gcc", "gcc")
    directory.mkdir(parents=True, exist_ok=True)
    return compile_c(gcc, STUB_SOURCE, directory / soname,
                     "-shared", "-fPIC", f"-Wl,-soname,{soname}")


def build_demo(output: Path, library: Path, *link_flags: str) -> Path:
    """The demo extension module, with ``DT_NEEDED`` on ``library``'s soname."""
    gcc = require_tool("gcc", "gcc")
    include = python_include()
    flags = ["-shared", "-fPIC", "-O0", f"-I{include}", *link_flags,
             "-Wl,--no-as-needed", str(library)]
    compile_c(gcc, DEMO_SOURCE, output, *flags)
    return output


def static_libpython_python() -> Path:
    """A dynamically linked python that has libpython linked in (Debian's), else the running one.

    Either way the stand-in libpython name is not loaded by it, so the module's
    entry cannot be satisfied; Debian's binary is the case users meet.
    """
    for candidate in sorted(Path("/usr/bin").glob("python3.*")):
        if not candidate.name[len("python"):].replace(".", "").isdigit():
            continue
        try:
            binary = elf.read(candidate.resolve())
        except (OSError, elf.ElfError):
            continue
        if binary.interpreter and not linkage.libpython_names(binary.needed):
            return candidate
    return Path(sys.executable).resolve()


def fake_prefix(root: Path, version: str, executable: Path | None = None) -> Path:
    """PREFIX with bin/python<version> (a copy or symlink), lib/python<version>/os.py."""
    stdlib = root / "lib" / f"python{version}"
    (stdlib / "site-packages").mkdir(parents=True)
    (stdlib / "os.py").write_text("# fake stdlib landmark\n", encoding="utf-8")
    bindir = root / "bin"
    bindir.mkdir()
    if executable is not None:
        (bindir / f"python{version}").symlink_to(executable)
    return root


def install_module(site: Path, module: Path, distribution: str = "pipfixdemo") -> Path:
    """Place ``module`` in ``site`` with a dist-info whose RECORD lists it."""
    import base64
    import hashlib

    target = site / module.name
    shutil.copyfile(module, target)
    dist_info = site / f"{distribution}-1.0.dist-info"
    dist_info.mkdir()
    files = {
        target.name: target.read_bytes(),
        f"{dist_info.name}/METADATA": b"Metadata-Version: 2.1\nName: pipfixdemo\nVersion: 1.0\n",
        f"{dist_info.name}/INSTALLER": b"pip\n",
    }
    rows = []
    for name, payload in files.items():
        if "/" in name:
            (site / name).write_bytes(payload)
        digest = base64.urlsafe_b64encode(hashlib.sha256(payload).digest()).rstrip(b"=")
        rows.append(f"{name},sha256={digest.decode()},{len(payload)}\n")
    rows.append(f"{dist_info.name}/RECORD,,\n")
    (dist_info / "RECORD").write_text("".join(rows), encoding="utf-8")
    return target


def import_demo(python: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """Import the demo module from ``site`` in ``python`` and call it."""
    code = (
        f"import sys; sys.path.insert(0, {str(site)!r}); import {DEMO_MODULE}; "
        f"print({DEMO_MODULE}.add(2, 3))"
    )
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "LD_LIBRARY_PATH", "VIRTUAL_ENV"))}
    return subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True,
                          env=env, check=False, timeout=60)

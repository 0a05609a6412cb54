"""Facts measured by running the target, when it runs on this host.

Each probe is a separate ``python -I -B -c`` subprocess (isolated, and writing
no bytecode: doctor stays read-only), so a probe that crashes
the interpreter (a broken extension module, a failing ``dlopen``) loses only
its own answer. The environment is the caller's minus everything that changes
how Python or pip behave (``PYTHON*``, ``PIP_*``, ``VIRTUAL_ENV``,
``LD_PRELOAD``); ``LD_LIBRARY_PATH`` is kept because a shared-libpython build
may need it to start at all, exactly as it does for the user. Probes print one
line, ``PIPFIX-PROBE <json>``, so output from a ``sitecustomize`` cannot be
mistaken for an answer. The probe code runs on any Python 3.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MARKER = "PIPFIX-PROBE "
TIMEOUT = 60.0

_HELPERS = r"""
import json, os, sys, traceback
def _err(exc):
    return "%s: %s" % (type(exc).__name__, exc)
def _emit(data):
    sys.stdout.write("\nPIPFIX-PROBE " + json.dumps(data) + "\n")
"""

FACTS_PROBE = _HELPERS + r"""
import site, sysconfig, importlib.machinery
out = {"errors": {}}
def get(name, fn):
    try:
        out[name] = fn()
    except BaseException as exc:
        out[name] = None
        out["errors"][name] = _err(exc)
get("version", lambda: "%d.%d.%d" % sys.version_info[:3])
get("implementation", lambda: sys.implementation.name)
get("executable", lambda: sys.executable)
get("prefix", lambda: sys.prefix)
get("base_prefix", lambda: getattr(sys, "base_prefix", sys.prefix))
get("stdlib", lambda: sysconfig.get_path("stdlib"))
get("purelib", lambda: sysconfig.get_path("purelib"))
get("platlib", lambda: sysconfig.get_path("platlib"))
get("site_packages", lambda: site.getsitepackages())
get("user_base", lambda: site.getuserbase())
get("user_scripts", lambda: sysconfig.get_path("scripts", "%s_user" % os.name))
get("platform", lambda: sysconfig.get_platform())
get("confstr_libc", lambda: os.confstr("CS_GNU_LIBC_VERSION"))
get("py_enable_shared", lambda: sysconfig.get_config_var("Py_ENABLE_SHARED"))
get("ldlibrary", lambda: sysconfig.get_config_var("LDLIBRARY"))
get("libdir", lambda: sysconfig.get_config_var("LIBDIR"))
get("extension_suffixes", lambda: list(importlib.machinery.EXTENSION_SUFFIXES))
get("euid", lambda: os.geteuid())
_emit(out)
"""

LOADING_PROBE = _HELPERS + r"""
import importlib, importlib.util, importlib.machinery
out = {}
try:
    import ctypes
    out["import_ctypes"] = "ok"
    try:
        ctypes.CDLL(None)
        out["dlopen_self"] = "ok"
    except BaseException as exc:
        out["dlopen_self"] = _err(exc)
except BaseException as exc:
    out["import_ctypes"] = _err(exc)
    try:
        import _ctypes
        _ctypes.dlopen(None, getattr(os, "RTLD_NOW", 2))
        out["dlopen_self"] = "ok (through _ctypes.dlopen)"
    except BaseException as exc:
        out["dlopen_self"] = _err(exc)
out["extension"] = None
for name in ("_json", "_bisect", "_heapq", "_random", "_csv", "array", "cmath", "_contextvars",
             "_opcode", "_statistics", "_zoneinfo", "_queue", "_datetime", "math", "_struct"):
    if name in sys.builtin_module_names or name in sys.modules:
        continue
    try:
        spec = importlib.util.find_spec(name)
    except BaseException:
        continue
    if spec is None or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
        continue
    result = {"module": name, "path": spec.origin}
    try:
        importlib.import_module(name)
        result["result"] = "ok"
    except BaseException as exc:
        result["result"] = _err(exc)
    out["extension"] = result
    break
_emit(out)
"""

TAGS_PROBE = _HELPERS + r"""
out = {}
try:
    try:
        import pip
        out["pip_from"] = "installed"
    except ImportError:
        if len(sys.argv) < 2:
            raise
        sys.path.insert(0, sys.argv[1])
        import pip
        out["pip_from"] = "ensurepip wheel"
    out["pip_version"] = pip.__version__
    out["pip_path"] = os.path.dirname(pip.__file__)
    from pip._vendor.packaging import tags
    platforms = []
    count = 0
    for tag in tags.sys_tags():
        count += 1
        if tag.platform not in platforms:
            platforms.append(tag.platform)
    out["platforms"] = platforms
    out["tag_count"] = count
except BaseException as exc:
    out["error"] = _err(exc)
    frames = traceback.extract_tb(sys.exc_info()[2])
    shown = [f for f in frames if "/pip/" in f.filename.replace(os.sep, "/")][-2:]
    shown += [f for f in frames[-1:] if f not in shown]
    out["traceback"] = ["%s:%s in %s" % (f.filename, f.lineno, f.name) for f in shown]
_emit(out)
"""


def clean_env() -> dict[str, str]:
    dropped = ("PYTHON", "PIP_", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__", "LD_PRELOAD")
    return {k: v for k, v in os.environ.items() if not k.startswith(dropped)}


@dataclass(frozen=True)
class ProbeResult:
    data: dict[str, Any] | None
    problem: str | None  # why there is no data


def run_probe(executable: Path, code: str, args: Sequence[str] = ()) -> ProbeResult:
    command = [str(executable), "-I", "-B", "-c", code, *args]  # -B: write no bytecode
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, errors="replace",
            env=clean_env(), timeout=TIMEOUT, check=False, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return ProbeResult(None, f"did not answer within {TIMEOUT:g} s")
    except OSError as exc:
        return ProbeResult(None, f"cannot be run on this host: {exc.strerror or exc}")
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith(MARKER):
            try:
                return ProbeResult(json.loads(line[len(MARKER):]), None)
            except json.JSONDecodeError:
                break
    last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
    return ProbeResult(None, f"exited with status {completed.returncode} without answering: {last}")


@dataclass(frozen=True)
class LiveFacts:
    """Everything the probes measured; ``available`` is False when the target did not run."""

    available: bool
    reason: str | None
    facts: dict[str, Any] = field(default_factory=dict)
    loading: dict[str, Any] | None = None
    tags: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"available": self.available, "reason": self.reason}


def gather(executable: Path | None, pip_wheel: Path | None, *, allowed: bool) -> LiveFacts:
    if not allowed:
        return LiveFacts(False, "not run (--static-only)")
    if executable is None:
        return LiveFacts(False, "no python executable found")
    first = run_probe(executable, FACTS_PROBE)
    if first.data is None:
        return LiveFacts(False, f"{executable} {first.problem}")
    loading = run_probe(executable, LOADING_PROBE)
    tags = run_probe(executable, TAGS_PROBE, [str(pip_wheel)] if pip_wheel else [])
    return LiveFacts(
        True,
        None,
        first.data,
        loading.data if loading.data is not None else {"crashed": loading.problem},
        tags.data if tags.data is not None else {"error": tags.problem},
    )

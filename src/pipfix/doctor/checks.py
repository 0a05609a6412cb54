"""Checks 1 and 2: what the interpreter binary is, and whether it can load extension modules."""

from __future__ import annotations

from collections.abc import Iterator

from .. import elf
from .context import Context
from .findings import Fact, Finding, Item, Severity

DYNAMIC_BUILD_ADVICE = (
    "Use a dynamically linked CPython build (for musl: Alpine's python3 or the "
    "python:3.X-alpine image, or build CPython with musl-gcc without -static); "
    "until then install only pure-Python packages, and run `pipfix apply {prefix}` "
    "so pip, setuptools and `python -m venv` do not crash on dlopen(NULL)."
)


def _type_name(binary: elf.ElfFile) -> str:
    if binary.type == elf.ET_EXEC:
        return "executable"
    if binary.type == elf.ET_DYN:
        return "position-independent executable" if binary.interpreter else "static-pie or library"
    return f"ELF type {binary.type}"


def _libc(ctx: Context) -> tuple[str, str]:
    """(description, source) of the C library the interpreter runs on."""
    live_libc = ctx.live.facts.get("confstr_libc") if ctx.live.available else None
    interpreter = ctx.binary.interpreter
    family = interpreter.libc if interpreter else "unknown"
    if isinstance(live_libc, str) and live_libc.startswith("glibc"):
        return live_libc, "live"
    if family == "musl":
        if ctx.binary.musl_version:
            return f"musl {ctx.binary.musl_version} (from the loader)", "host"
        return "musl (version unknown: loader not run)", "static"
    if family == "glibc" and interpreter is not None:
        needed = interpreter.binary.glibc_version_needed()
        floor = f"needs at least {needed[0]}.{needed[1]}" if needed else "version unknown"
        return f"glibc ({floor}, from the binary's symbol versions)", "static"
    from_build = ctx.libc_from_build_vars()
    if family == "none":
        linked = f"{from_build}, linked in" if from_build else "unknown, linked in"
        return f"{linked} (static executable; from sysconfig data)", "static"
    return from_build or "unknown", "static"


def interpreter_items(ctx: Context) -> Iterator[Item]:
    facts = ctx.binary
    version = ctx.live.facts.get("version") if ctx.live.available else None
    yield Fact("interpreter.version", "Python", version or ctx.subject.version,
               "live" if version else "static")
    yield Fact("interpreter.executable", "executable",
               str(facts.path) if facts.path else None, "static")
    if facts.path is None:
        yield Finding(
            "interpreter.not-found", Severity.ERROR,
            f"no python{ctx.subject.version} executable under {ctx.subject.prefix}/bin",
            "static", {"prefix": str(ctx.subject.prefix)},
            "Name the executable itself: pipfix doctor PREFIX/bin/python3.X",
        )
        return
    if facts.interpreter is None:
        yield Finding(
            "interpreter.unreadable", Severity.WARNING,
            f"cannot read the interpreter binary: {facts.problem}", "static",
            {"path": str(facts.path), "problem": facts.problem},
            "Binary facts, linking and tag predictions are unavailable; the other checks ran.",
        )
        return
    binary = facts.interpreter.binary
    yield Fact("interpreter.elf", "ELF",
               f"{binary.elf_class} {binary.machine_name} "
               f"({'little' if binary.little_endian else 'big'}-endian) {_type_name(binary)}",
               "static")
    if binary.interpreter:
        linking = f"dynamic, loader {binary.interpreter}"
    else:
        linking = "static (no PT_INTERP: no dynamic loader)"
    yield Fact("interpreter.linking", "linking", linking, "static")
    yield Fact("interpreter.needed", "DT_NEEDED", list(binary.needed), "static")
    libc, libc_source = _libc(ctx)
    yield Fact("interpreter.libc", "libc", libc, libc_source)
    if facts.interpreter.libpython_static:
        libpython = "linked into the executable"
    else:
        where = facts.libpython_shared_path or "not found on its search path"
        libpython = f"shared: {', '.join(facts.interpreter.libpython_needed)} -> {where}"
    yield Fact("interpreter.libpython", "libpython", libpython, "static")
    yield Fact("interpreter.libpython_files", "libpython files",
               [str(p) for p in facts.libpython_files], "static")
    yield Fact("interpreter.rpath", "RPATH",
               list(binary.rpath) if binary.rpath is not None else None, "static")
    yield Fact("interpreter.runpath", "RUNPATH",
               list(binary.runpath) if binary.runpath is not None else None, "static")
    kind = "dynamically" if binary.interpreter else "statically"
    yield Finding(
        "interpreter.summary", Severity.INFO,
        f"{binary.elf_class} {binary.arch}, {kind} linked, libc: {libc}; "
        f"libpython {'static' if facts.interpreter.libpython_static else 'shared'}",
        "static",
        {"path": str(facts.path), "interpreter": binary.interpreter,
         "needed": list(binary.needed), "libc source": libc_source},
    )


def loading_items(ctx: Context) -> Iterator[Item]:
    works, evidence, source = ctx.dlopen_self()
    loading = ctx.live.loading or {}
    yield Fact("loading.dlopen_self", "dlopen(NULL)", evidence, source)
    extension = loading.get("extension")
    if isinstance(extension, dict):
        yield Fact("loading.extension", "extension module",
                   f"{extension.get('module')} from {extension.get('path')}: "
                   f"{extension.get('result')}", "live")
    if "import_ctypes" in loading:
        yield Fact("loading.import_ctypes", "import ctypes", loading["import_ctypes"], "live")
    if "crashed" in loading:
        yield Finding(
            "loading.probe-crashed", Severity.ERROR,
            f"the target crashed while loading a module: {loading['crashed']}", "live",
            {"problem": loading["crashed"]},
        )
    prefix = ctx.subject.base.prefix
    if ctx.binary.static:
        yield Finding(
            "loading.impossible", Severity.ERROR,
            "statically linked interpreter: it cannot load extension modules at all",
            source if source == "live" else "static",
            {"executable": str(ctx.binary.path), "PT_INTERP": None, "dlopen(NULL)": evidence},
            DYNAMIC_BUILD_ADVICE.format(prefix=prefix),
            explanation=(
                "A fully static executable has no dynamic loader, so dlopen() cannot map "
                "shared objects: every .so extension module fails to import, and "
                "dlopen(NULL) fails with 'Dynamic loading not supported'. Binary wheels "
                "cannot work here, whatever platform tags pip selects; only modules built "
                "into the executable and pure-Python packages can."
            ),
        )
        return
    if works is False:
        yield Finding(
            "loading.dlopen-self-fails", Severity.ERROR,
            f"dlopen(NULL) fails in the running target: {evidence}", source,
            {"executable": str(ctx.binary.path), "dlopen(NULL)": evidence},
            f"Run `pipfix apply {prefix}`: unguarded ctypes.CDLL(None) calls in pip and "
            "setuptools crash here.",
        )
    import_ctypes = loading.get("import_ctypes")
    if isinstance(import_ctypes, str) and import_ctypes != "ok":
        yield Finding(
            "loading.ctypes-import-fails", Severity.WARNING,
            f"`import ctypes` raises in the target: {import_ctypes}", "live",
            {"import ctypes": import_ctypes},
            f"Run `pipfix apply {prefix}`: pip and setuptools import ctypes to detect glibc.",
        )
    if isinstance(extension, dict) and extension.get("result") != "ok":
        yield Finding(
            "loading.extension-fails", Severity.ERROR,
            f"loading the stdlib extension module {extension.get('module')} fails",
            "live", dict(extension),
            "The build's lib-dynload modules do not load: check the loader and libc the "
            "interpreter was built for.",
        )
    elif works:
        if isinstance(extension, dict):
            summary = f"extension modules load (confirmed by loading {extension.get('module')})"
        elif source == "live":
            summary = "extension modules can be loaded (dlopen(NULL) works)"
        else:
            summary = "dynamically linked: extension modules should load (target not run)"
        yield Finding("loading.ok", Severity.INFO, summary, source, {"dlopen(NULL)": evidence})

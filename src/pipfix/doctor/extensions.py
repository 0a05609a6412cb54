"""Check 5: shared objects in site-packages that need a libpython this interpreter lacks.

See ``pipfix.linkage`` for the loader model; ``pipfix fix-extensions``
repairs what this check lists.
"""

from __future__ import annotations

from collections.abc import Iterator

from .. import linkage
from .context import Context
from .findings import Fact, Finding, Item, Severity

_MAX_LISTED = 20


def _listed(links: list[linkage.ModuleLink]) -> list[dict[str, object]]:
    return [link.to_json() for link in links[:_MAX_LISTED]]


def extension_items(ctx: Context) -> Iterator[Item]:
    interpreter = ctx.binary.interpreter
    roots, roots_source = ctx.site_packages()
    if interpreter is None:
        yield Fact("extensions.scanned", "shared objects", "not scanned: interpreter unreadable",
                   "static")
        return
    result = linkage.scan(roots, interpreter)
    yield Fact("extensions.scanned", "shared objects",
               f"{result.count} under {', '.join(str(r) for r in roots)}", roots_source)
    fix = f"pipfix fix-extensions {ctx.subject.prefix}"
    if result.skipped:
        yield Finding(
            "extensions.unreadable", Severity.INFO,
            f"{len(result.skipped)} shared object(s) skipped: not readable ELF for this "
            "interpreter", "static",
            {"files": [{"path": str(s.path), "reason": s.reason}
                       for s in result.skipped[:_MAX_LISTED]]},
        )
    if not interpreter.can_load:
        if result.count:
            yield Finding(
                "extensions.unloadable", Severity.WARNING,
                f"{result.count} shared object(s) in site-packages can never be loaded by this "
                "static interpreter", "static",
                {"count": result.count, "libpython_linked": _listed(list(result.linked))},
                "Reinstall those packages under a dynamically linked build.",
            )
        return
    missing = [m for m in result.linked if m.problem == "missing"]
    second = [m for m in result.linked if m.problem == "second-copy"]
    version = ctx.subject.version
    if missing:
        yield Finding(
            "extensions.libpython-missing", Severity.ERROR,
            f"{len(missing)} extension module(s) need a libpython the loader cannot find: "
            f"importing them fails", "static",
            {"modules": _listed(missing), "interpreter_libpython": _libpython(interpreter)},
            fix,
            explanation=(
                f"They name libpython{version}.so* in DT_NEEDED; this interpreter "
                f"{_libpython_text(interpreter)}, and the library is not on the module's "
                "search path (a module's RUNPATH does not inherit the executable's; RPATH "
                f"does). Import fails with 'ImportError: libpython{version}.so.1.0: cannot "
                "open shared object file'. Dropping the DT_NEEDED entry makes the module "
                "resolve the Python API from the interpreter itself."
            ),
        )
    if second:
        yield Finding(
            "extensions.libpython-second-copy", Severity.WARNING,
            f"{len(second)} extension module(s) would load a second copy of libpython",
            "static",
            {"modules": _listed(second), "interpreter_libpython": _libpython(interpreter)},
            fix,
            explanation=(
                f"This interpreter {_libpython_text(interpreter)}; loading another libpython "
                "next to it puts two Python runtimes in one process."
            ),
        )
    if not missing and not second:
        yield Finding(
            "extensions.ok", Severity.INFO,
            f"{result.count} shared object(s) checked; none needs a libpython it cannot get",
            "static", {"libpython_linked": len(result.linked)},
        )


def _libpython(interpreter: linkage.Interpreter) -> str:
    return "static" if interpreter.libpython_static else ", ".join(interpreter.libpython_needed)


def _libpython_text(interpreter: linkage.Interpreter) -> str:
    if interpreter.libpython_static:
        return "has libpython linked into the executable"
    return f"loads {', '.join(interpreter.libpython_needed)}"

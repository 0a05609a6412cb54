"""Check 3: the platform tags pip would select wheels with.

Live, they are computed inside the target by its own pip's vendored
``packaging.tags`` (the installed pip, else the ensurepip wheel on
``sys.path``), so a pip that pipfix patched answers for itself. Otherwise they
are predicted from the binary the way ``packaging`` derives them:
``manylinux_2_N`` from the glibc version, ``musllinux_1_N`` from the version
the ``PT_INTERP`` musl loader prints, always ``linux_ARCH`` last.
"""

from __future__ import annotations

from collections.abc import Iterator

from .checks import DYNAMIC_BUILD_ADVICE
from .context import Context
from .findings import Fact, Finding, Item, Severity

_LEGACY = {(2, 17): "manylinux2014", (2, 12): "manylinux2010", (2, 5): "manylinux1"}
_LEGACY_ARCHES = {
    "manylinux2014": {"x86_64", "i686", "aarch64", "armv7l", "ppc64", "ppc64le", "s390x"},
    "manylinux2010": {"x86_64", "i686"},
    "manylinux1": {"x86_64", "i686"},
}


def manylinux_platforms(arch: str, glibc: tuple[int, int]) -> list[str]:
    oldest = 4 if arch in ("x86_64", "i686") else 16  # packaging's "too old" glibc minor
    platforms = []
    for minor in range(glibc[1], oldest, -1):
        platforms.append(f"manylinux_2_{minor}_{arch}")
        legacy = _LEGACY.get((2, minor))
        if legacy and arch in _LEGACY_ARCHES[legacy]:
            platforms.append(f"{legacy}_{arch}")
    return platforms


def musllinux_platforms(arch: str, version: str) -> list[str]:
    major, minor = (int(p) for p in version.split(".")[:2])
    return [f"musllinux_{major}_{m}_{arch}" for m in range(minor, -1, -1)]


def _glibc_version(ctx: Context) -> tuple[tuple[int, int] | None, str]:
    live = ctx.live.facts.get("confstr_libc") if ctx.live.available else None
    if isinstance(live, str) and live.startswith("glibc "):
        major, _, minor = live.split()[1].partition(".")
        return (int(major), int(minor.split(".")[0])), "os.confstr in the target"
    interpreter = ctx.binary.interpreter
    needed = interpreter.binary.glibc_version_needed() if interpreter else None
    return needed, "the binary's GLIBC_2.x symbol versions (a lower bound)"


def predict(ctx: Context) -> tuple[list[str], str, bool]:
    """(platforms, how they were derived, whether the libc version was known)."""
    interpreter = ctx.binary.interpreter
    if interpreter is None:
        return [], "not predicted: the interpreter binary could not be read", False
    arch = interpreter.binary.arch
    platforms: list[str] = []
    known = True
    if interpreter.libc == "glibc":
        version, source = _glibc_version(ctx)
        if version:
            platforms += manylinux_platforms(arch, version)
            basis = f"predicted; glibc {version[0]}.{version[1]} from {source}"
        else:
            basis, known = "predicted; glibc version unknown", False
    elif interpreter.libc == "musl":
        musl = ctx.binary.musl_version
        if musl:
            platforms += musllinux_platforms(arch, musl)
            basis = f"predicted; musl {musl} from the loader"
        else:
            known = False
            basis = "predicted; musllinux tags depend on the musl version (loader not run)"
    elif interpreter.libc == "none":
        basis = "predicted; static executable: no loader, so no manylinux/musllinux tags"
    else:
        basis, known = "predicted; libc not recognised", False
    return [*platforms, f"linux_{arch}"], basis, known


def _abbreviated(platforms: list[str]) -> str:
    if len(platforms) <= 3:
        return ", ".join(platforms)
    return f"{platforms[0]}, {platforms[1]} ... {platforms[-1]}"


def _no_binary_explanation(ctx: Context) -> tuple[str, str]:
    prefix = ctx.subject.base.prefix
    if ctx.binary.static:
        return (
            "pip's packaging gets musllinux tags from _get_musl_version(sys.executable), "
            "which reads the executable's PT_INTERP to find the ld-musl loader and runs it "
            "for its version. A static executable has no PT_INTERP, so it returns None: "
            "no musllinux tags. No glibc is found either (os.confstr fails on musl, "
            "ctypes.CDLL(None) fails without a loader): no manylinux tags. Only linux_ARCH "
            "remains, and PyPI accepts no linux_* wheels, so pip installs only pure-Python "
            "wheels and builds sdists from source; extension modules built that way still "
            "cannot load in a static interpreter.",
            DYNAMIC_BUILD_ADVICE.format(prefix=prefix),
        )
    facts = ctx.live.facts if ctx.live.available else {}
    confstr = facts.get("confstr_libc") or (facts.get("errors") or {}).get("confstr_libc")
    works, dlopen, _ = ctx.dlopen_self()
    loader = ctx.binary.binary.interpreter if ctx.binary.binary else None
    return (
        "pip found no glibc version (os.confstr('CS_GNU_LIBC_VERSION'): "
        f"{confstr or 'not measured'}; ctypes.CDLL(None): {dlopen}) and no musl loader "
        f"version (PT_INTERP: {loader or 'none'}), so it generates no manylinux or "
        "musllinux tags and falls back to sdists and pure-Python wheels.",
        "Use a build in which dlopen(NULL) works; `pipfix apply "
        f"{prefix}` keeps pip and venv from crashing but cannot make binary wheels "
        "selectable." if works is False else
        "Check that os.confstr('CS_GNU_LIBC_VERSION') works (glibc) or that the PT_INTERP "
        "loader exists and prints its version (musl).",
    )


def tag_items(ctx: Context) -> Iterator[Item]:
    live = ctx.live.tags if ctx.live.available else None
    if live and isinstance(live.get("platforms"), list):
        platforms = [str(p) for p in live["platforms"] if p != "any"]
        source = "live"
        basis = f"pip {live.get('pip_version')} ({live.get('pip_from')}) in the target"
        known = True
    else:
        if live and live.get("error"):
            yield Finding(
                "tags.crash", Severity.ERROR,
                f"pip's tag computation crashes in the target: {live['error']}", "live",
                {"pip": live.get("pip_version"), "from": live.get("pip_from"),
                 "traceback": live.get("traceback")},
                f"Run `pipfix apply {ctx.subject.base.prefix}`"
                + (" and reinstall pip from the patched wheel" if live.get("pip_from") ==
                   "installed" else "")
                + "; pip cannot select any wheel until then.",
            )
        platforms, basis, known = predict(ctx)
        source = "static"
    manylinux = any(p.startswith("manylinux") for p in platforms)
    musllinux = any(p.startswith("musllinux") for p in platforms)
    yield Fact("tags.platforms", "platform tags", platforms, source)
    yield Fact("tags.basis", "computed by", basis, source)
    if not platforms:
        return
    yield Finding(
        "tags.platforms", Severity.INFO,
        f"{'pip would use' if source == 'live' else 'predicted'} {len(platforms)} platform "
        f"tag(s): {_abbreviated(platforms)}", source,
        {"platforms": platforms, "manylinux": manylinux, "musllinux": musllinux,
         "computed by": basis},
    )
    if known and not (manylinux or musllinux):
        explanation, action = _no_binary_explanation(ctx)
        yield Finding(
            "tags.no-binary-wheels", Severity.WARNING,
            "no manylinux or musllinux tags: only pure-Python wheels and sdists will install",
            source, {"platforms": platforms, "computed by": basis}, action,
            explanation=explanation,
        )

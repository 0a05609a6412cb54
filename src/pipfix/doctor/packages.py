"""Check 4: the ensurepip wheels (pipfix's own ``check``) and the installed pip.

An unguarded ``ctypes.CDLL(None)`` only hurts where dlopen(NULL) fails, so a
wheel that "needs patch" is a warning there and merely information elsewhere.
The installed pip counts as patched when its dist-info holds ``pipfix.json``,
which only pipfix's patched wheels carry.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .. import operations, patcher, provenance
from ..errors import PipfixError
from ..patcher import WheelState
from .context import Context
from .findings import Fact, Finding, Item, Severity
from .subject import Subject


def installed_pips(site_packages: tuple[Path, ...]) -> list[tuple[Path, bool]]:
    """[(pip-*.dist-info, patched by pipfix?)] in the site-packages directories."""
    found = []
    for directory in site_packages:
        for dist_info in sorted(directory.glob("pip-*.dist-info")):
            if dist_info.is_dir():
                found.append((dist_info, (dist_info / provenance.FILENAME).is_file()))
    return found


def ensurepip_pip_wheel(subject: Subject) -> Path | None:
    """The pip wheel ensurepip would install, if any (for the live tag probe)."""
    wheels = [w for w in subject.base.ensurepip_wheels() if w.name.startswith("pip-")]
    return wheels[-1] if wheels else None


def package_items(ctx: Context) -> Iterator[Item]:
    harmful, evidence, source = ctx.ctypes_breaks()
    prefix = ctx.subject.base.prefix
    try:
        states = [(w.path, w.distribution, w.version, w.state, w.reason)
                  for w in operations.check([prefix]).wheels]
    except PipfixError as exc:
        yield Finding(
            "ensurepip.check-failed", Severity.WARNING, f"`pipfix check` fails: {exc}",
            "static", {"prefix": str(prefix), "error": str(exc)},
            "`pipfix apply` will refuse this target until the file named above is "
            "consistent again (reinstall the package it belongs to).",
        )
        states = list(_wheel_states(ctx.subject))
    yield Fact("ensurepip.wheels", "ensurepip wheels",
               [f"{name} {version}: {state}" for _, name, version, state, _ in states], "static")
    if not states:
        yield Finding("ensurepip.none", Severity.INFO,
                      "no ensurepip wheels found (ensurepip unavailable or unbundled)",
                      "static", {"prefix": str(prefix)})
    by_state: dict[str, list[dict[str, str]]] = {}
    for path, _, _, state, reason in states:
        by_state.setdefault(state, []).append({"path": path, "reason": reason})
    for state, wheels in by_state.items():
        yield _wheel_finding(state, wheels, harmful, evidence, source, prefix)
    yield from _installed_pip_items(ctx, harmful)


def _wheel_states(subject: Subject) -> Iterator[tuple[str, str, str, str, str]]:
    """The wheel half of ``check``, for when its installed-files half fails."""
    for path in subject.base.ensurepip_wheels():
        try:
            plan = patcher.plan(path)
        except PipfixError as exc:
            yield str(path), path.name, "", "unreadable", str(exc)
            continue
        wheel = plan.wheel
        yield str(path), wheel.distribution, wheel.version, plan.state.value, plan.reason


def _wheel_finding(
    state: str, wheels: list[dict[str, str]], harmful: bool, evidence: str, source: str,
    prefix: Path,
) -> Finding:
    names = ", ".join(Path(w["path"]).name for w in wheels)
    data = {"wheels": wheels, "ctypes.CDLL(None)": evidence}
    if state == WheelState.NEEDS_PATCH.value:
        return Finding(
            "ensurepip.needs-patch", Severity.WARNING if harmful else Severity.INFO,
            f"{names}: need(s) patching" + ("" if harmful else
                                            " (harmless here: ctypes.CDLL(None) works)"),
            source, data, f"pipfix apply {prefix}",
        )
    if state == WheelState.PATCHED.value:
        return Finding("ensurepip.patched", Severity.INFO, f"{names}: patched by pipfix",
                       "static", data)
    if state == WheelState.UNPATCHABLE.value:
        return Finding(
            "ensurepip.unpatchable", Severity.ERROR if harmful else Severity.WARNING,
            f"{names}: code pipfix cannot guard safely", "static", data,
            "Report it to pipfix with `pipfix diff`'s output; use a newer pip wheel meanwhile.",
        )
    if state == "unreadable":
        return Finding("ensurepip.unreadable", Severity.ERROR, f"{names}: cannot be verified",
                       "static", data, "Replace it with the wheel CPython shipped.")
    return Finding("ensurepip.safe", Severity.INFO, f"{names}: safe upstream", "static", data)


def _installed_pip_items(ctx: Context, harmful: bool) -> Iterator[Item]:
    site_packages, source = ctx.site_packages()
    pips = installed_pips(site_packages)
    yield Fact("ensurepip.installed_pip", "installed pip",
               [f"{d} ({'patched' if p else 'not patched'})" for d, p in pips] or None, source)
    if not pips:
        yield Finding("ensurepip.pip-not-installed", Severity.INFO,
                      "pip is not installed in site-packages", "static",
                      {"site_packages": [str(p) for p in site_packages]},
                      f"python{ctx.subject.version} -m ensurepip (after `pipfix apply`)")
        return
    for dist_info, patched in pips:
        version = dist_info.name[len("pip-"):-len(".dist-info")]
        if patched:
            yield Finding("ensurepip.pip-patched", Severity.INFO,
                          f"installed pip {version} is pipfix-patched", "static",
                          {"dist_info": str(dist_info)})
        else:
            yield Finding(
                "ensurepip.pip-unpatched", Severity.WARNING if harmful else Severity.INFO,
                f"installed pip {version} is not pipfix-patched"
                + ("" if harmful else " (harmless here: ctypes.CDLL(None) works)"),
                "static", {"dist_info": str(dist_info)},
                _reinstall_advice(ctx) if harmful else None,
            )


def _reinstall_advice(ctx: Context) -> str:
    wheel = ensurepip_pip_wheel(ctx.subject)
    where = str(wheel) if wheel else "PIP_WHEEL"
    return (
        f"Run `pipfix apply {ctx.subject.base.prefix}`, then reinstall pip from the patched "
        f"wheel, importing pip from the wheel itself: PYTHONPATH={where} "
        f"python{ctx.subject.version} -m pip install --force-reinstall --no-deps {where}"
    )

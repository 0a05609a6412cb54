"""Check 6: installs that pip refuses (PEP 668) or puts where the shell cannot find them."""

from __future__ import annotations

import configparser
import os
from collections.abc import Iterator
from pathlib import Path

from .context import Context
from .findings import Fact, Finding, Item, Severity


def _venv_advice(ctx: Context) -> str:
    return (
        f"Create a venv and install there: python{ctx.subject.version} -m venv ~/.venvs/NAME "
        "&& ~/.venvs/NAME/bin/pip install PACKAGE (pipx for command-line applications)."
    )


def _marker_error(path: Path) -> str | None:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
        return parser.get("externally-managed", "Error", fallback=None)
    except (configparser.Error, OSError, UnicodeDecodeError):
        return None


def _stdlib(ctx: Context) -> tuple[Path, str]:
    live = ctx.live.facts.get("stdlib") if ctx.live.available else None
    if isinstance(live, str) and not ctx.subject.venv:
        return Path(live), "live"
    return ctx.subject.lib.stdlib, "static"


def _user_scripts(ctx: Context) -> tuple[Path, str]:
    live = ctx.live.facts.get("user_scripts") if ctx.live.available else None
    if isinstance(live, str) and live:
        return Path(live), "live"
    base = ctx.env.get("PYTHONUSERBASE") or os.path.join(ctx.env.get("HOME", "~"), ".local")
    return Path(base) / "bin", "host"


def _on_path(directory: Path, env_path: str) -> bool:
    for entry in env_path.split(os.pathsep):
        if entry and os.path.normpath(os.path.expanduser(entry)) == os.path.normpath(directory):
            return True
    return False


def install_items(ctx: Context) -> Iterator[Item]:
    stdlib, stdlib_source = _stdlib(ctx)
    marker = stdlib / "EXTERNALLY-MANAGED"
    managed = marker.is_file() and not ctx.subject.venv
    yield Fact("installs.externally_managed", "EXTERNALLY-MANAGED",
               str(marker) if managed else None, stdlib_source)
    if managed:
        message = _marker_error(marker)
        yield Finding(
            "installs.externally-managed", Severity.WARNING,
            "pip refuses to install into this Python (PEP 668 EXTERNALLY-MANAGED marker)",
            stdlib_source, {"marker": str(marker), "message": message}, _venv_advice(ctx),
            explanation="Outside a venv, `pip install` fails with "
            "'error: externally-managed-environment'. --break-system-packages overrides "
            "it at the risk of breaking the distribution's own Python packages.",
        )
    scripts, scripts_source = _user_scripts(ctx)
    on_path = _on_path(scripts, ctx.env.get("PATH", ""))
    yield Fact("installs.user_scripts", "user scripts dir",
               f"{scripts} ({'on' if on_path else 'not on'} PATH)", scripts_source)
    if not on_path and not ctx.subject.venv:
        present = sorted(p.name for p in scripts.iterdir()) if scripts.is_dir() else []
        yield Finding(
            "installs.user-scripts-off-path",
            Severity.WARNING if present else Severity.INFO,
            f"`pip install --user` puts commands in {scripts}, which is not on PATH",
            scripts_source, {"directory": str(scripts), "installed_there": present[:20],
                             "PATH": ctx.env.get("PATH", "").split(os.pathsep)},
            f'Add it to PATH (export PATH="{scripts}:$PATH"), or use a venv.',
        )
    in_venv = bool(ctx.env.get("VIRTUAL_ENV"))
    if ctx.euid == 0 and not ctx.subject.venv and not in_venv:
        yield Finding(
            "installs.root-outside-venv", Severity.WARNING,
            f"running as root outside a venv: pip would write into {ctx.subject.prefix} "
            "as root",
            "host", {"euid": 0, "VIRTUAL_ENV": None, "prefix": str(ctx.subject.prefix)},
            _venv_advice(ctx),
            explanation="Root-owned files installed over the interpreter's own packages "
            "can break it and anything else that uses it; pip warns about this too.",
        )

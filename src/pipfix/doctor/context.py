"""Everything the checks read, gathered once: the target, its binary, live facts, this host."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .binary import BinaryFacts
from .live import LiveFacts
from .subject import Subject


@dataclass(frozen=True)
class Context:
    subject: Subject
    binary: BinaryFacts
    live: LiveFacts
    env: Mapping[str, str]  # this host's environment (PATH, HOME, VIRTUAL_ENV, ...)
    euid: int | None

    def libc_from_build_vars(self) -> str | None:
        """"musl" or "glibc" as the build's target triplet says, or None."""
        for name in ("MULTIARCH", "HOST_GNU_TYPE", "SOABI"):
            value = self.subject.lib.build_vars.get(name)
            if isinstance(value, str):
                if "musl" in value:
                    return "musl"
                if value.endswith(("-gnu", "gnu")) or "-linux-gnu" in value:
                    return "glibc"
        return None

    def site_packages(self) -> tuple[tuple[Path, ...], str]:
        """The target's site directories: from the layout, plus what the running target says."""
        dirs = list(self.subject.site_packages)
        live = self.live.facts.get("site_packages") if self.live.available else None
        source = "static"
        if isinstance(live, list) and not self.subject.venv:
            extra = [Path(p) for p in live if isinstance(p, str) and Path(p).is_dir()]
            if any(p not in dirs for p in extra):
                source = "live"
            dirs += extra
        seen: set[Path] = set()
        unique = []
        for directory in dirs:
            if directory.resolve() not in seen:
                seen.add(directory.resolve())
                unique.append(directory)
        return tuple(unique), source

    def dlopen_self(self) -> tuple[bool | None, str, str]:
        """(does dlopen(NULL) work?, evidence, source)."""
        loading = self.live.loading or {}
        result = loading.get("dlopen_self")
        if isinstance(result, str):
            return result.startswith("ok"), result, "live"
        if self.binary.static:
            return False, "statically linked: no dynamic loader", "static"
        if self.binary.static is False:
            return True, "dynamically linked (not confirmed: the target was not run)", "static"
        return None, "unknown: the interpreter binary could not be read", "static"

    def ctypes_breaks(self) -> tuple[bool, str, str]:
        """(would an unguarded ``import ctypes; ctypes.CDLL(None)`` fail?, evidence, source)."""
        works, evidence, source = self.dlopen_self()
        imported = (self.live.loading or {}).get("import_ctypes")
        if isinstance(imported, str) and imported != "ok":
            return True, f"import ctypes: {imported}", "live"
        return works is not True, evidence, source


def host_context_values() -> tuple[Mapping[str, str], int | None]:
    euid = os.geteuid() if hasattr(os, "geteuid") else None
    return dict(os.environ), euid

"""Typed results of pipfix commands, and their stable JSON form.

JSON schema (``schema`` = 1), printed by ``--json``::

    {"schema": 1, "command": "apply", "dry_run": false, "exit_code": 0,
     "targets": ["/opt/python"],
     "wheels": [{"path": ..., "distribution": "pip", "version": "23.2.1",
                 "state": "needs patch" | "patched by pipfix" | "safe upstream" | "unpatchable",
                 "action": "patched" | "would patch" | "already patched" | "nothing to do"
                           | "not written" | "restored" | "already original" | "written",
                 "reason": str, "patches": [codemod ids], "changed_files": [paths],
                 "sha256": current or written sha256, "original_sha256": str | null,
                 "backup": path | null, "output": path | null}],
     "installs": [...]}        # added by later stages (site-packages reinstall)

Fields are only ever added; existing ones keep their meaning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class WheelReport:
    path: str
    distribution: str
    version: str
    state: str
    action: str
    reason: str
    patches: tuple[str, ...] = ()
    changed_files: tuple[str, ...] = ()
    sha256: str = ""
    original_sha256: str | None = None
    backup: str | None = None
    output: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["patches"] = list(self.patches)
        data["changed_files"] = list(self.changed_files)
        return data


@dataclass(frozen=True)
class RunReport:
    command: str
    targets: tuple[str, ...]
    wheels: tuple[WheelReport, ...]
    exit_code: int
    dry_run: bool = False
    installs: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "command": self.command,
            "dry_run": self.dry_run,
            "exit_code": self.exit_code,
            "targets": list(self.targets),
            "wheels": [w.to_json() for w in self.wheels],
            "installs": list(self.installs),
        }

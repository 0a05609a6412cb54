"""What doctor reports: facts (with where each came from) and findings (with what to do).

A fact is an observation ("ELF64 x86-64", "glibc 2.36"); a finding is a
conclusion a user may have to act on. Both carry ``source``: ``static`` (read
from the target's files), ``live`` (measured by running the target) or
``host`` (this machine: its environment, its user, its loader).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Union

from ..errors import EXIT_NEEDS_ATTENTION, EXIT_OK

SCHEMA_VERSION = 1

# Display order and titles of the groups; a finding's group is its id's first part.
GROUPS = {
    "interpreter": "Interpreter binary",
    "loading": "Loading extension modules",
    "tags": "Platform tags",
    "ensurepip": "ensurepip wheels and installed pip",
    "extensions": "Extension modules linked against libpython",
    "installs": "Where installs go",
}


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


SOURCES = ("static", "live", "host")


@dataclass(frozen=True)
class Fact:
    id: str  # "<group>.<name>"
    label: str
    value: Any  # JSON-compatible
    source: str

    @property
    def group(self) -> str:
        return self.id.split(".", 1)[0]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "value": self.value, "source": self.source}


@dataclass(frozen=True)
class Finding:
    id: str  # "<group>.<name>", stable across releases
    severity: Severity
    summary: str
    source: str
    evidence: dict[str, Any] = field(default_factory=dict)
    action: str | None = None
    explanation: str | None = None

    @property
    def group(self) -> str:
        return self.id.split(".", 1)[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "group": self.group,
            "severity": self.severity.value,
            "summary": self.summary,
            "explanation": self.explanation,
            "evidence": self.evidence,
            "action": self.action,
            "source": self.source,
        }


Item = Union[Fact, Finding]


@dataclass(frozen=True)
class DoctorReport:
    target: dict[str, Any]
    live: dict[str, Any]  # {"available": bool, "reason": str | None}
    facts: tuple[Fact, ...]
    findings: tuple[Finding, ...]

    @classmethod
    def build(
        cls, target: dict[str, Any], live: dict[str, Any], items: Iterable[Item]
    ) -> DoctorReport:
        collected = list(items)
        return cls(
            target,
            live,
            tuple(i for i in collected if isinstance(i, Fact)),
            tuple(i for i in collected if isinstance(i, Finding)),
        )

    @property
    def exit_code(self) -> int:
        serious = any(f.severity is not Severity.INFO for f in self.findings)
        return EXIT_NEEDS_ATTENTION if serious else EXIT_OK

    def ids(self) -> list[str]:
        return [f.id for f in self.findings]

    def finding(self, finding_id: str) -> Finding:
        """The finding with this id (KeyError when absent)."""
        for found in self.findings:
            if found.id == finding_id:
                return found
        raise KeyError(finding_id)

    def fact(self, fact_id: str) -> Fact:
        for found in self.facts:
            if found.id == fact_id:
                return found
        raise KeyError(fact_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "command": "doctor",
            "exit_code": self.exit_code,
            "target": self.target,
            "live": self.live,
            "facts": [f.to_json() for f in self.facts],
            "findings": [f.to_json() for f in self.findings],
        }

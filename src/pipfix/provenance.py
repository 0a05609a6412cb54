"""The provenance file pipfix adds to every wheel it patches.

It lets ``check`` recognise pipfix's own output without re-running the
codemods, and lets ``restore`` prove that a backup is the original of the file
it replaces (same sha256).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

FILENAME = "pipfix.json"
# Bumped whenever the codemods would produce different output for the same input.
PATCH_SET_VERSION = 1


@dataclass(frozen=True)
class Provenance:
    pipfix_version: str
    patch_set: int
    patches: tuple[str, ...]
    changed_files: tuple[str, ...]
    original_filename: str
    original_sha256: str

    def to_bytes(self) -> bytes:
        payload = {"tool": "pipfix", **asdict(self)}
        return (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> Provenance:
        """Parse a provenance file; ValueError when it is not pipfix's."""
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"malformed provenance file: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError("malformed provenance file: not a JSON object")
        if raw.get("tool") != "pipfix":
            raise ValueError("not written by pipfix")
        try:
            return cls(
                pipfix_version=str(raw["pipfix_version"]),
                patch_set=int(raw["patch_set"]),
                patches=tuple(str(p) for p in raw["patches"]),
                changed_files=tuple(str(p) for p in raw["changed_files"]),
                original_filename=str(raw["original_filename"]),
                original_sha256=str(raw["original_sha256"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed provenance file: {exc!r}") from None


def member_name(dist_info: str) -> str:
    return f"{dist_info}/{FILENAME}"

"""Wheel in, patch plan out: which members change, how, and the rebuilt bytes.

The plan is computed fully in memory from a verified wheel, so a command can
decide everything (and refuse bad input) before it writes a single byte.
libcst is imported only when the byte pre-filter finds a member that could
need a change.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from . import provenance, wheelfile
from ._version import __version__
from .codemods import could_need_change
from .codemods.model import SourceResult, Unpatchable
from .errors import VerificationError


class WheelState(str, Enum):
    NEEDS_PATCH = "needs patch"
    PATCHED = "patched by pipfix"
    SAFE = "safe upstream"
    UNPATCHABLE = "unpatchable"


@dataclass(frozen=True)
class FileChange:
    path: str
    codemods: tuple[str, ...]
    before: bytes
    after: bytes


@dataclass(frozen=True)
class WheelPlan:
    """What pipfix would do to one verified wheel."""

    wheel: wheelfile.VerifiedWheel
    state: WheelState
    changes: tuple[FileChange, ...] = ()
    unpatchable: tuple[Unpatchable, ...] = ()
    existing: provenance.Provenance | None = None

    @property
    def patches(self) -> tuple[str, ...]:
        ordered: dict[str, None] = {}
        for change in self.changes:
            ordered.update(dict.fromkeys(change.codemods))
        return tuple(ordered)

    @property
    def reason(self) -> str:
        if self.state is WheelState.PATCHED and self.existing is not None:
            return (
                f"patched by pipfix {self.existing.pipfix_version} "
                f"({', '.join(self.existing.patches)})"
            )
        if self.state is WheelState.UNPATCHABLE:
            return "; ".join(f"{u.path}:{u.line}: {u.reason}" for u in self.unpatchable)
        if self.state is WheelState.NEEDS_PATCH:
            return "; ".join(f"{c.path}: {', '.join(c.codemods)}" for c in self.changes)
        return "no glibc detection that needs a guard"

    def provenance(self) -> provenance.Provenance:
        return provenance.Provenance(
            pipfix_version=__version__,
            patch_set=provenance.PATCH_SET_VERSION,
            patches=self.patches,
            changed_files=tuple(c.path for c in self.changes),
            original_filename=self.wheel.path.name,
            original_sha256=self.wheel.sha256,
        )

    def build(self) -> bytes:
        """The patched wheel's bytes (deterministic: depends only on the input)."""
        if self.state is not WheelState.NEEDS_PATCH:
            raise ValueError(f"{self.wheel.path.name} is {self.state.value}, nothing to build")
        changed = {c.path: c.after for c in self.changes}
        added = {
            provenance.member_name(self.wheel.dist_info): self.provenance().to_bytes()
        }
        return wheelfile.rebuild(self.wheel, changed, added)

    def diff(self) -> str:
        """Unified diff of every changed member, as a reviewer reads it."""
        chunks: list[str] = []
        for change in self.changes:
            before = change.before.decode("utf-8", "surrogateescape").splitlines(keepends=True)
            after = change.after.decode("utf-8", "surrogateescape").splitlines(keepends=True)
            chunks.extend(
                difflib.unified_diff(
                    before, after, fromfile=f"a/{change.path}", tofile=f"b/{change.path}"
                )
            )
        return "".join(chunks)


class _TransformCache:
    """Same source bytes, same result: shared between wheels in one process."""

    def __init__(self) -> None:
        self._results: dict[bytes, SourceResult] = {}

    def transform(self, path: str, source: bytes) -> SourceResult:
        key = hashlib.sha256(source).digest()
        cached = self._results.get(key)
        if cached is None:
            from .codemods import transform_source

            cached = self._results[key] = transform_source(path, source)
        if cached.unpatchable and any(u.path != path for u in cached.unpatchable):
            cached = SourceResult(
                cached.source,
                cached.applied,
                tuple(Unpatchable(path, u.line, u.reason) for u in cached.unpatchable),
            )
        return cached


_CACHE = _TransformCache()


def _existing_provenance(wheel: wheelfile.VerifiedWheel) -> provenance.Provenance | None:
    name = provenance.member_name(wheel.dist_info)
    if name not in wheel.contents:
        return None
    try:
        return provenance.Provenance.from_bytes(wheel.contents[name])
    except ValueError as exc:
        raise VerificationError(wheel.path, str(exc)) from None


def plan_verified(wheel: wheelfile.VerifiedWheel) -> WheelPlan:
    """Classify a verified wheel and compute its changes."""
    existing = _existing_provenance(wheel)
    if existing is not None:
        return WheelPlan(wheel, WheelState.PATCHED, existing=existing)
    changes: list[FileChange] = []
    unpatchable: list[Unpatchable] = []
    for member in wheel.archive.members:
        source = wheel.contents.get(member.name)
        if source is None or not wheelfile.is_python_source(member.name):
            continue
        if not could_need_change(source):
            continue
        result = _CACHE.transform(member.name, source)
        unpatchable.extend(result.unpatchable)
        if result.changed:
            changes.append(FileChange(member.name, result.applied, source, result.source))
    if unpatchable:
        return WheelPlan(wheel, WheelState.UNPATCHABLE, tuple(changes), tuple(unpatchable))
    if changes:
        return WheelPlan(wheel, WheelState.NEEDS_PATCH, tuple(changes))
    return WheelPlan(wheel, WheelState.SAFE)


def plan(path: Path, data: bytes | None = None) -> WheelPlan:
    """Verify the wheel at ``path`` and plan its patch."""
    return plan_verified(wheelfile.verify(path, data))


def verify_output(path: Path, data: bytes, expected: WheelPlan) -> None:
    """Re-check a rebuilt wheel before it may replace anything.

    RECORD and every hash must verify (pipfix's reader and wheel's), the
    provenance must be there, and every changed module must compile.
    """
    from wheel.wheelfile import WheelError, WheelFile

    output = wheelfile.verify(path, data)
    if _existing_provenance(output) is None:
        raise VerificationError(path, "rebuilt wheel lacks its provenance file")
    try:
        with WheelFile(path) as reader:
            for info in reader.infolist():
                if not info.is_dir():
                    reader.read(info)
    except (WheelError, OSError) as exc:
        raise VerificationError(path, f"rebuilt wheel does not verify: {exc}") from None
    for change in expected.changes:
        try:
            compile(output.contents[change.path], change.path, "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as exc:
            raise VerificationError(path, f"patched {change.path} does not compile: {exc}") from None

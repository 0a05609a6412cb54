"""Wheel in, patch plan out: which members change, how, and the rebuilt bytes.

The plan is computed fully in memory from a verified wheel, so a command can
decide everything (and refuse bad input) before it writes a single byte.
libcst is imported only when the byte pre-filter and the ``ast`` screen find a
member that could need a change; in a serial run over wheels, by a forked helper
(``transform_helper``) that finds and transforms the likely modules by itself
while this process verifies and screens, then answers the modules this
process sends (``start_plan``, ``transforms_in_a_helper``).  Work is shared
within a process (a source file met in several wheels is transformed once, by
whichever worker of a parallel run needs it first) and, with ``use_cache``,
between runs (``cache``: patched outputs by input sha256).
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from . import cache, provenance, record, wheelfile, zipraw
from ._version import __version__
from .codemods import could_need_change
from .codemods.model import SourceResult, Unpatchable
from .errors import VerificationError
from .peek import is_likely
from .shared_results import SharedResults

if TYPE_CHECKING:
    from .transform_helper import TransformHelper


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


class _Built:
    """The plan's output once built, and whether pipfix's reader verified it."""

    __slots__ = ("data", "sha256", "verified")

    def __init__(self, data: bytes | None = None, verified: bool = False) -> None:
        self.data = data
        self.verified = verified
        self.sha256: str | None = None


@dataclass(frozen=True)
class WheelPlan:
    """What pipfix would do to one verified wheel."""

    wheel: wheelfile.VerifiedWheel
    state: WheelState
    changes: tuple[FileChange, ...] = ()
    unpatchable: tuple[Unpatchable, ...] = ()
    existing: provenance.Provenance | None = None
    # Keep the verified output in the user's cache when it is built.
    use_cache: bool = field(default=False, compare=False, repr=False)
    _built: _Built = field(default_factory=_Built, compare=False, repr=False)

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
        """The patched wheel's bytes (deterministic: depends only on the input).

        Built once per plan.  With ``use_cache`` the output is verified here
        (``verify_output`` then need not read it again) and kept in the cache.
        """
        if self.state is not WheelState.NEEDS_PATCH:
            raise ValueError(f"{self.wheel.path.name} is {self.state.value}, nothing to build")
        if self._built.data is not None:
            return self._built.data
        changed = {c.path: c.after for c in self.changes}
        added = {
            provenance.member_name(self.wheel.dist_info): self.provenance().to_bytes()
        }
        data = wheelfile.rebuild(self.wheel, changed, added)
        self._built.data = data
        if self.use_cache:
            try:
                verify_rebuilt(self.wheel.path, data, self)
            except VerificationError:
                return data  # verify_output will say why; nothing is cached
            self._built.verified = True
            cache.store(self.wheel, data, [(c.path, c.codemods) for c in self.changes])
        return data

    def build_verified(self) -> bytes:
        """``build()``, then pipfix's reader over the output and its digest at once
        (a worker process does this, so that its parent only writes)."""
        data = self.build()
        if not self._built.verified:
            verify_rebuilt(self.wheel.path, data, self)
            self._built.verified = True
        self.output_sha256()
        return data

    def forget_output(self) -> None:
        """Drop the built bytes once the caller has written and verified them: a run
        over many wheels then holds one output at a time (the digest stays;
        ``build()`` would make the bytes again, to be verified again)."""
        self._built.data = None
        self._built.verified = False

    def output_payloads(self) -> Mapping[str, bytes]:
        """Payloads of the output's members that this plan holds verified in memory:
        the input's unchanged files and the patched modules (not RECORD nor
        ``pipfix.json``; none of the unchanged ones after a parallel run's worker
        dropped them).  An installer can read these instead of inflating them again."""
        if self.state is WheelState.PATCHED:
            return self.wheel.contents  # the output is the input
        if self.state is not WheelState.NEEDS_PATCH:
            raise ValueError(f"{self.wheel.path.name} is {self.state.value}, nothing to build")
        record_path = self.wheel.record_path
        payloads = {n: p for n, p in self.wheel.contents.items() if n != record_path}
        payloads.update((change.path, change.after) for change in self.changes)
        return payloads

    def output_sha256(self) -> str:
        """The sha256 of ``build()``'s bytes, computed once."""
        if self._built.sha256 is None:
            self._built.sha256 = record.sha256_hex(self.build())
        return self._built.sha256

    @contextlib.contextmanager
    def digesting(self) -> Iterator[None]:
        """``output_sha256`` computed in a thread while the block runs (the output
        is written and verified there): hashlib lets go of the GIL over a wheel's
        megabytes, so the digest the report names costs the block nothing."""
        if self._built.sha256 is not None:
            yield
            return
        data = self.build()
        digests: list[str] = []
        thread = threading.Thread(
            target=lambda: digests.append(record.sha256_hex(data)), name="pipfix-digest"
        )
        thread.start()
        try:
            yield
        finally:
            thread.join()
        if digests:
            self._built.sha256 = digests[0]

    def diff(self) -> str:
        """Unified diff of every changed member, as a reviewer reads it."""
        import difflib

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


PlanInProgress = Callable[[], WheelPlan]
"""A wheel verified and screened, whose plan is finished by calling it."""


class _TransformCache:
    """Same source bytes, same result: shared between wheels in one process and,
    in a parallel run, between its workers (``share``), like the screens' verdicts.

    While ``helping`` (with a forked ``TransformHelper`` running), ``prepare``
    screens a module here (no libcst) and sends it there if the codemods apply
    to it; ``transform`` collects.  A module named like those the helper looks
    for by itself (``peek.LIKELY_FILE_NAMES``) is sent unscreened: the helper
    has most likely screened and transformed it already.
    """

    def __init__(self) -> None:
        self._results: dict[bytes, SourceResult] = {}
        self._shared: SharedResults | None = None
        self._helper: TransformHelper | None = None
        # Sent by ``prepare``, result still to come: the codemods in scope (None:
        # sent unscreened, the helper screens it).
        self._in_scope: dict[bytes, frozenset[str] | None] = {}

    def share(self, shared: SharedResults | None, helper: TransformHelper | None) -> None:
        """Take results other processes computed from ``shared``, and leave ours
        there; with ``helper`` (a client of the run's ``transform_server``), have
        it compute them instead, for this process's whole life."""
        self._shared = shared
        self._helper = helper

    @contextlib.contextmanager
    def helping(self, paths: Sequence[Path], use_cache: bool) -> Iterator[None]:
        """The helper runs for this block: the one the command line started early,
        or one forked now to look at ``paths`` first (none where it cannot run)."""
        from . import transform_helper

        early = transform_helper.take_early()
        self._helper = early or transform_helper.TransformHelper.start(paths, use_cache)
        try:
            yield
        finally:
            if self._helper is not None:
                if early is not None:
                    early.stop()  # ``started_early`` reaps it when the command is done
                else:
                    self._helper.close()
                self._helper = None

    def prepare(self, path: str, source: bytes) -> None:
        """While a helper runs: screen ``source`` and start its transform there."""
        if self._helper is None:
            return  # ``transform`` does it all
        key = hashlib.sha256(source).digest()
        if key in self._results or key in self._in_scope:
            return
        in_scope: frozenset[str] | None = None
        if not is_likely(path):
            in_scope = self._screened(key, source)
            if not in_scope:
                self._results[key] = SourceResult(source, (), ())
                return
        self._in_scope[key] = in_scope
        self._helper.submit(key, path, source, in_scope)

    def _screened(self, key: bytes, source: bytes) -> frozenset[str]:
        """``codemods_in_scope(source)``; in a parallel run, once for all workers
        (consecutive releases, which different workers take, share most modules)."""
        from .codemods.screen import codemods_in_scope

        shared = self._shared
        if shared is None:
            return codemods_in_scope(source)
        return shared.get(b"screen:" + key, lambda: codemods_in_scope(source))

    def transform(self, path: str, source: bytes) -> SourceResult:
        key = hashlib.sha256(source).digest()
        cached = self._results.get(key)
        if cached is None:
            if key in self._in_scope:
                in_scope = self._in_scope.pop(key)
                cached = self._helper.result(key) if self._helper is not None else None
                if cached is None:
                    from .codemods.engine import transform_source as transform_screened

                    cached = transform_screened(path, source, in_scope)  # None: screens it
            else:
                cached = self._computed(key, path, source)
            self._results[key] = cached
        if cached.unpatchable and any(u.path != path for u in cached.unpatchable):
            cached = SourceResult(
                cached.source,
                cached.applied,
                tuple(Unpatchable(path, u.line, u.reason) for u in cached.unpatchable),
            )
        return cached

    def _computed(self, key: bytes, path: str, source: bytes) -> SourceResult:
        from .codemods import transform_source

        def compute() -> SourceResult:
            return transform_source(path, source)

        shared = self._shared
        return compute() if shared is None else shared.get(key, compute)


_CACHE = _TransformCache()


def share_transforms(shared: SharedResults | None, helper: TransformHelper | None = None) -> None:
    """Transform results of this process go to and come from ``shared``, or are
    computed by ``helper``, the run's transform server (a worker's setup)."""
    _CACHE.share(shared, helper)


def transforms_in_a_helper(
    paths: Sequence[Path] = (), use_cache: bool = False
) -> contextlib.AbstractContextManager[None]:
    """Within this block, plans started with ``start_plan`` have their modules
    transformed by a forked helper process (``transform_helper``) while this
    process goes on; the helper first looks at ``paths``, the wheels of the run
    (``use_cache``: as given to their plans), and is stopped when the block ends."""
    return _CACHE.helping(paths, use_cache)


def _existing_provenance(wheel: wheelfile.VerifiedWheel) -> provenance.Provenance | None:
    name = provenance.member_name(wheel.dist_info)
    if name not in wheel.contents:
        return None
    try:
        return provenance.Provenance.from_bytes(wheel.contents[name])
    except ValueError as exc:
        raise VerificationError(wheel.path, str(exc)) from None


def _from_cache(wheel: wheelfile.VerifiedWheel) -> WheelPlan | None:
    hit = cache.load(wheel)
    if hit is None:
        return None
    changes = tuple(
        FileChange(path, codemods, wheel.contents[path], after)
        for path, codemods, after in hit.changes
    )
    try:
        for change in changes:
            _check_compiles(wheel.path, change)
    except VerificationError:
        return None  # a damaged entry: patch afresh (and replace it)
    return WheelPlan(
        wheel, WheelState.NEEDS_PATCH, changes, use_cache=True, _built=_Built(hit.data, True)
    )


def plan_verified(wheel: wheelfile.VerifiedWheel, *, use_cache: bool = False) -> WheelPlan:
    """Classify a verified wheel and compute its changes.

    ``use_cache``: take a needed patch from the user's cache (verified before
    use) when there is one, and keep a freshly built output there.
    """
    return _start_plan_verified(wheel, use_cache)()


def _start_plan_verified(wheel: wheelfile.VerifiedWheel, use_cache: bool) -> PlanInProgress:
    existing = _existing_provenance(wheel)
    if existing is not None:
        return _done(WheelPlan(wheel, WheelState.PATCHED, existing=existing))
    if use_cache:
        cached = _from_cache(wheel)
        if cached is not None:
            return _done(cached)
    candidates: list[tuple[str, bytes]] = []
    for member in wheel.archive.members:
        source = wheel.contents.get(member.name)
        if source is None or not wheelfile.is_python_source(member.name):
            continue
        if could_need_change(source):
            candidates.append((member.name, source))
            _CACHE.prepare(member.name, source)

    def finish() -> WheelPlan:
        changes: list[FileChange] = []
        unpatchable: list[Unpatchable] = []
        for name, source in candidates:
            result = _CACHE.transform(name, source)
            unpatchable.extend(result.unpatchable)
            if result.changed:
                changes.append(FileChange(name, result.applied, source, result.source))
        if unpatchable:
            return WheelPlan(wheel, WheelState.UNPATCHABLE, tuple(changes), tuple(unpatchable))
        if changes:
            return WheelPlan(wheel, WheelState.NEEDS_PATCH, tuple(changes), use_cache=use_cache)
        return WheelPlan(wheel, WheelState.SAFE)

    return finish


def _done(plan: WheelPlan) -> PlanInProgress:
    return lambda: plan


def start_plan(path: Path, data: bytes | None = None, *, use_cache: bool = False) -> PlanInProgress:
    """``plan``, in two steps: this verifies the wheel and screens its modules (and,
    within ``transforms_in_a_helper``, starts their transforms); calling what it
    returns finishes the plan."""
    wheel = wheelfile.verify(path, data, use_seals=use_cache)
    return _start_plan_verified(wheel, use_cache)


def plan(path: Path, data: bytes | None = None, *, use_cache: bool = False) -> WheelPlan:
    """Verify the wheel at ``path`` and plan its patch (``use_cache``: see plan_verified;
    it also lets verification trust and leave ``seals``)."""
    return start_plan(path, data, use_cache=use_cache)()


def _inflate(path: Path, member: zipraw.RawMember) -> bytes:
    """The payload of a member the rebuild wrote, checked as every member read is."""
    try:
        return zipraw.read_payload(member)
    except zipraw.RawZipError as exc:
        raise VerificationError(path, f"rebuilt member {member.name} {exc}") from None


def verify_rebuilt(path: Path, data: bytes, expected: WheelPlan) -> None:
    """pipfix's reader on ``data``, the rebuild of ``expected.wheel``.

    Every member the rebuild did not change must be stored exactly as in the
    verified input (local record, data and central entry but its offset) and
    keep its RECORD row: that is the member pipfix already verified.  Every
    member the rebuild wrote (changed modules, provenance, RECORD) is inflated
    and checked: CRC, size, content, and its hash and size in the new RECORD.
    RECORD must list every file and nothing else, and every changed module
    must compile.  So each byte of the output
    is verified, and the unchanged bulk is not inflated and hashed again.
    """
    wheel = expected.wheel
    record_path = wheel.record_path
    provenance_path = provenance.member_name(wheel.dist_info)
    signatures = {f"{wheel.dist_info}/{name}" for name in record.SIGNATURE_NAMES}
    changed = {change.path: change.after for change in expected.changes}
    try:
        archive = zipraw.read_archive(data)
    except (zipraw.RawZipError, UnicodeDecodeError, struct.error) as exc:
        raise VerificationError(path, f"rebuilt wheel is not a valid zip archive ({exc})") from None
    order: list[str] = []
    for member in wheel.archive.members:
        if member.name == record_path:
            order.append(provenance_path)
        if member.name not in signatures:
            order.append(member.name)
    if [member.name for member in archive.members] != order or archive.comment != (
        wheel.archive.comment
    ):
        raise VerificationError(path, "rebuilt wheel does not hold the input's members in order")
    originals = {member.name: member for member in wheel.archive.members}
    written: dict[str, bytes] = {}
    for member in archive.members:
        if member.name in changed or member.name in (record_path, provenance_path):
            written[member.name] = _inflate(path, member)
            continue
        original = originals[member.name]
        if (
            member.local != original.local
            or member.central[:42] != original.central[:42]
            or member.central[46:] != original.central[46:]
        ):
            raise VerificationError(path, f"rebuilt wheel changed {member.name}")
    if any(written[name] != after for name, after in changed.items()):
        raise VerificationError(path, "rebuilt wheel does not hold the patched modules")
    try:
        found = provenance.Provenance.from_bytes(written[provenance_path])
        entries = record.parse(written[record_path].decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:  # RecordError is a ValueError
        raise VerificationError(path, f"rebuilt wheel is inconsistent ({exc})") from None
    if found != expected.provenance():
        raise VerificationError(path, "rebuilt wheel's provenance does not describe its patch")
    files = [name for name in order if not name.endswith("/") and name != record_path]
    for name in files:
        entry = entries.get(name)
        if name in written:
            payload = written[name]
            if (
                entry is None
                or entry.hash_ is None
                or entry.size != len(payload)
                or not entry.hash_.validate(payload)
            ):
                raise VerificationError(path, f"{name} does not match its new RECORD row")
        elif entry != wheel.records.get(name):
            raise VerificationError(path, f"RECORD row of unchanged {name} changed")
    for extra in sorted(set(entries) - set(files) - {record_path}):
        if not extra.endswith("/"):
            raise VerificationError(path, f"RECORD lists {extra}, which is not in the wheel")
    for change in expected.changes:
        _check_compiles(path, change)


# Digests of patched modules CPython compiled: the same module patched in
# several wheels is compiled once.
_COMPILED: set[bytes] = set()


def _check_compiles(path: Path, change: FileChange) -> None:
    key = hashlib.sha256(change.after).digest()
    if key in _COMPILED:
        return
    try:
        compile(change.after, change.path, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:
        raise VerificationError(path, f"patched {change.path} does not compile: {exc}") from None
    _COMPILED.add(key)


def verify_output(path: Path, data: bytes, expected: WheelPlan) -> None:
    """Re-check a rebuilt wheel, written at ``path``, before it may replace anything.

    pipfix's reader verifies ``data`` (``verify_rebuilt``; skipped when
    ``expected.build()`` returned it already verified, cached or checked for the
    cache); the file must read back as exactly ``data``; wheel's reader checks
    every member pipfix wrote against the new RECORD.
    """
    from wheel.wheelfile import WheelError, WheelFile

    if not (expected._built.verified and expected._built.data is data):
        verify_rebuilt(path, data, expected)
    try:
        if path.read_bytes() != data:
            raise VerificationError(path, "written wheel does not read back identically")
        with WheelFile(path) as reader:
            names = set(reader.namelist())
            for name in (*(c.path for c in expected.changes), provenance.member_name(
                expected.wheel.dist_info
            )):
                if name not in names:
                    raise VerificationError(path, f"rebuilt wheel lacks {name}")
                reader.read(name)
    except (WheelError, OSError) as exc:
        raise VerificationError(path, f"rebuilt wheel does not verify: {exc}") from None

"""``pipfix fix-extensions``: drop ``DT_NEEDED libpython3.X.so*`` from extension modules.

An extension module does not need libpython as a dependency: every
``Py*`` symbol it uses is already in the process, exported by the python
executable (libpython linked in) or by the libpython that executable loaded.
Removing the entry (``elf.remove_needed``, what ``patchelf --remove-needed``
does) lets such a module import under an interpreter that has no
``libpython3.X.so`` to offer, instead of failing with "cannot open shared
object file" or loading a second Python runtime.

Which files: for a TARGET (prefix, venv or python executable), the modules in
its site-packages that ``doctor`` reports (libpython missing, or a second
copy); for explicit PATHs (files or directories), every shared object there
that names libpython. Only ELF files of the interpreter's own class and
machine are touched; for PATHs, the interpreter is that of the installation
containing them, else the running one.

Safety, per file: everything is planned and checked before the first write;
the exact original is kept (never overwritten) and listed in a manifest before
the file first changes; the new bytes are written to a temporary file, fsynced,
read back and re-parsed (the dynamic array must be the original minus the
removed entries), and only then renamed over the original. The owning
distribution's RECORD row (sha256, size) follows in the same way, with its own
backup, so pip and installer still see consistent files. A file that does not
match its RECORD, a stale or altered backup, or anything ``elf`` refuses is
reported and skipped. ``restore_extensions`` undoes all of it byte for byte.

Where the originals and temporary files go (``extension_state``): for files of
an installation (the TARGET form, and explicit paths inside a prefix or venv)
in ``<prefix>/.pipfix/extensions/``, with a manifest whose paths are relative
to the prefix (a moved prefix still restores); nothing is ever written inside
site-packages but the fixed modules and RECORD themselves, so ``pip
uninstall`` leaves nothing of pipfix's behind. For explicit paths outside any
installation, in a ``.pipfix`` directory next to the named file (inside the
named directory).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from . import elf, linkage, record, store
from .doctor.subject import Subject, find_subject
from .errors import EXIT_NEEDS_ATTENTION, EXIT_OK, NotAnInstallationError, PipfixError
from .extension_restore import restore_extensions
from .extension_state import (
    ExtensionState,
    canonical,
    differing_rows,
    is_within,
    without_libpython,
)
from .record_owner import Owner, find_owner, matches
from .target import running_interpreter_prefix

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class FileReport:
    path: str
    action: str  # fixed | would fix | already fixed | nothing to do | skipped | restored | ...
    reason: str = ""
    removed: tuple[str, ...] = ()
    rpath: tuple[str, ...] | None = None
    runpath: tuple[str, ...] | None = None
    distribution: str | None = None
    version: str | None = None
    record: str | None = None
    sha256: str | None = None
    original_sha256: str | None = None
    backup: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("removed", "rpath", "runpath"):
            data[key] = list(data[key]) if data[key] is not None else None
        return data


@dataclass(frozen=True)
class FixReport:
    """JSON (``schema`` = 1)::

    {"schema": 1, "command": "fix-extensions", "dry_run": bool, "exit_code": 0 | 1,
     "targets": [str],
     "files": [{"path", "action": "fixed" | "would fix" | "already fixed"
                          | "nothing to do" | "skipped",
                "reason", "removed": [soname], "rpath": [str] | null,
                "runpath": [str] | null, "distribution": str | null,
                "version": str | null, "record": path | null,
                "sha256": str | null, "original_sha256": str | null,
                "backup": path | null}]}

    Exit code 1 when any file was skipped.
    """

    targets: tuple[str, ...]
    files: tuple[FileReport, ...]
    dry_run: bool = False

    @property
    def exit_code(self) -> int:
        skipped = any(f.action == "skipped" for f in self.files)
        return EXIT_NEEDS_ATTENTION if skipped else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "command": "fix-extensions",
            "dry_run": self.dry_run,
            "exit_code": self.exit_code,
            "targets": list(self.targets),
            "files": [f.to_json() for f in self.files],
        }


@dataclass(frozen=True)
class _Candidate:
    path: Path
    skip: str | None = None
    explicit: bool = False  # named by the user (report "nothing to do" too)
    problem: str | None = None  # linkage problem that put it on the list


@dataclass(frozen=True)
class _Place:
    """Who loads a file, where its originals are kept, and which lock guards them."""

    interpreter: linkage.Interpreter
    state: ExtensionState
    lock: Path


@dataclass
class _Plan:
    targets: list[str] = field(default_factory=list)
    candidates: dict[Path, tuple[_Candidate, _Place]] = field(default_factory=dict)
    states: dict[Path, ExtensionState] = field(default_factory=dict)
    interpreters: dict[Path, linkage.Interpreter] = field(default_factory=dict)
    subjects: dict[Path, Subject | None] = field(default_factory=dict)

    def add(self, candidate: _Candidate, place: _Place) -> None:
        self.candidates.setdefault(canonical(candidate.path), (candidate, place))

    def state(self, state: ExtensionState) -> ExtensionState:
        return self.states.setdefault(state.root, state)

    def lock_dirs(self) -> list[Path]:
        return sorted({place.lock for _, place in self.candidates.values()})

    def interpreter(self, subject: Subject | None) -> linkage.Interpreter:
        key = subject.prefix if subject is not None else Path(sys.executable)
        if key not in self.interpreters:
            self.interpreters[key] = (_interpreter_of(subject) if subject is not None
                                      else _running_interpreter())
        return self.interpreters[key]

    def owning_subject(self, path: Path) -> Subject | None:
        """The installation or venv whose prefix contains ``path``."""
        for directory in path.parents:
            if directory not in self.subjects:
                self.subjects[directory] = _subject_at(directory)
            if self.subjects[directory] is not None:
                return self.subjects[directory]
        return None

    def installation(self, subject: Subject, prefix: Path) -> _Place:
        """Files of the installation at ``prefix``, loaded by ``subject``'s interpreter."""
        state = self.state(ExtensionState.of_prefix(prefix))
        return _Place(self.interpreter(subject), state, prefix / store.STATE_DIRNAME)

    def place_of(self, path: Path, loose_dir: Path) -> _Place:
        """An installation's state for its files; else a ``.pipfix`` in ``loose_dir``."""
        subject = self.owning_subject(path)
        if subject is not None:
            return self.installation(subject, subject.prefix)
        state = self.state(ExtensionState.beside(loose_dir))
        return _Place(self.interpreter(None), state, state.root)


def _interpreter_of(subject: Subject) -> linkage.Interpreter:
    executable = subject.executable
    if executable is None:
        raise PipfixError(subject.prefix, "no python executable in bin/: name it instead")
    try:
        return linkage.Interpreter(executable, elf.read(executable.resolve()))
    except (OSError, elf.ElfError) as exc:
        raise PipfixError(executable, f"cannot read the interpreter binary: {exc}") from None


def _running_interpreter() -> linkage.Interpreter:
    executable = Path(sys.executable)
    try:
        return linkage.Interpreter(executable, elf.read(executable.resolve()))
    except (OSError, elf.ElfError) as exc:
        raise PipfixError(executable, f"cannot read the running interpreter: {exc}") from None


def _subject_at(directory: Path) -> Subject | None:
    """The installation or venv at ``directory``. A ``lib`` that is a symbolic link does not
    count: on merged-/usr systems ``/lib -> usr/lib`` would make every path on the machine
    part of an installation at ``/``."""
    lib = directory / "lib"
    if (directory / "pyvenv.cfg").is_file() or (
        not lib.is_symlink() and any(lib.glob("python3*/os.py"))
    ):
        with contextlib.suppress(PipfixError):
            return find_subject(directory)
    return None


def _plan_target(plan: _Plan, subject: Subject) -> None:
    interpreter = plan.interpreter(subject)
    for root in dict.fromkeys(subject.site_packages):
        # a venv's own site-packages, or its base installation's (system site packages)
        owner = subject.prefix if is_within(root, subject.prefix) else subject.base.prefix
        place = plan.installation(subject, owner)
        scan = linkage.scan([root], interpreter)
        for skipped in scan.skipped:
            plan.add(_Candidate(skipped.path, skipped.reason), place)
        for link in scan.linked:
            if link.problem == "no-loader":
                reason = "the interpreter is statically linked: it cannot load extension modules"
                plan.add(_Candidate(link.path, reason), place)
            elif link.problem is not None:
                plan.add(_Candidate(link.path, problem=link.problem), place)
        for fixed in place.state.modules():
            if fixed.is_file() and is_within(fixed, root):
                plan.add(_Candidate(fixed), place)


def _plan_item(plan: _Plan, item: str | Path) -> None:
    path = Path(item).absolute()
    if not path.exists():
        raise NotAnInstallationError(path, "no such file or directory")
    plan.targets.append(str(path))
    if path.is_file() and linkage.SHARED_OBJECT.search(path.name):
        plan.add(_Candidate(path, explicit=True), plan.place_of(path, path.parent))
        return
    try:
        subject = find_subject(path)
    except PipfixError:
        if not path.is_dir():
            raise
        subject = None
    if subject is not None:
        _plan_target(plan, subject)
        return
    for module in linkage.shared_objects(path):
        plan.add(_Candidate(module), plan.place_of(module, path))


def fix_extensions(items: Sequence[str | Path] = (), dry_run: bool = False) -> FixReport:
    """Drop libpython from the DT_NEEDED of the extension modules ``items`` name."""
    if not items:
        if not dry_run:
            raise PipfixError(
                Path("."), "name a target: commands that write never default to the running Python"
            )
        items = [running_interpreter_prefix()]
    plan = _Plan()
    for item in items:
        _plan_item(plan, item)
    reports = []
    with contextlib.ExitStack() as stack:
        if not dry_run:
            for directory in plan.lock_dirs():
                stack.enter_context(store.target_lock(directory))
        for state in plan.states.values():
            state.reload()  # what the planning read may predate the lock
        if not dry_run:
            for _, place in plan.candidates.values():  # their locks are held
                store.remove_stale_staging(place.state.root)  # temporary files of a killed run
        for candidate, place in plan.candidates.values():
            report = _fix_one(candidate, place, dry_run)
            if report.action != "nothing to do" or candidate.explicit:
                reports.append(report)
    return FixReport(tuple(plan.targets), tuple(reports), dry_run)


def _verifier(expected: bytes, needed: tuple[str, ...]) -> Callable[[Path], None]:
    def verify(candidate: Path) -> None:
        written = candidate.read_bytes()
        if written != expected:
            raise PipfixError(candidate, "written bytes do not read back identically")
        try:
            reread = elf.parse(written).needed
        except elf.ElfError as exc:
            raise PipfixError(candidate, f"written file does not parse: {exc}") from None
        if reread != needed:
            raise PipfixError(candidate, f"written DT_NEEDED is {reread}, expected {needed}")

    return verify


def _fix_one(candidate: _Candidate, place: _Place, dry_run: bool) -> FileReport:
    path = candidate.path
    if candidate.skip:
        return FileReport(str(path), "skipped", candidate.skip)
    if path.is_symlink():
        return FileReport(str(path), "skipped", "a symbolic link: name the file it points to")
    try:
        if store.STATE_DIRNAME in Path(place.state.key(path)).parts:
            return FileReport(str(path), "skipped", "inside pipfix's own state directory")
    except PipfixError as exc:
        return FileReport(str(path), "skipped", exc.reason)
    binary, problem = linkage.check_file(path, place.interpreter)
    if binary is None:
        return FileReport(str(path), "skipped", problem or "unreadable")
    try:
        return _fix_checked(path, binary, place.state, dry_run)
    except (elf.ElfError, PipfixError) as exc:
        return FileReport(str(path), "skipped", str(exc),
                          rpath=binary.rpath, runpath=binary.runpath)
    except OSError as exc:
        return FileReport(str(path), "skipped", exc.strerror or str(exc))


def _fix_checked(path: Path, binary: elf.ElfFile, state: ExtensionState,
                 dry_run: bool) -> FileReport:
    data = path.read_bytes()
    key = state.key(path)
    saved = state.original(key, data)
    entry = state.entries().get(key) if saved is not None else None
    if saved is None and key in state.entries() and not dry_run:
        state.forget(key)  # its backup was deleted once the file changed: given up
    original = saved if saved is not None else data
    fixed, names = without_libpython(original)
    owner = find_owner(path)
    backup = state.backup_path(entry) if entry is not None else None
    report = FileReport(
        str(path), "", removed=names, rpath=binary.rpath, runpath=binary.runpath,
        distribution=owner.distribution[0] if owner else None,
        version=owner.distribution[1] if owner else None,
        record=str(owner.record_file) if owner else None,
        sha256=record.sha256_hex(data), original_sha256=record.sha256_hex(original),
        backup=str(backup) if backup is not None else None,
    )
    if entry is not None and original != data:
        if record.sha256_hex(data) != entry.sha256:
            raise PipfixError(path, f"changed since pipfix fixed it (reinstalled?); its "
                              f"original is kept as {backup}: delete that file to fix it again")
        note = _sync_record(owner, state, original, data, dry_run)
        return replace(report, action="already fixed", reason=note)
    if not names:
        return FileReport(str(path), "nothing to do", "needs no libpython",
                          rpath=binary.rpath, runpath=binary.runpath)
    row = owner.entries().get(owner.row_path) if owner else None
    if row is not None and not matches(row, data):
        raise PipfixError(path, "does not match its installed RECORD; refusing to change it")
    state.check_same_filesystem(path)
    if owner:
        state.check_same_filesystem(owner.record_file)
    if dry_run:
        return replace(report, action="would fix", reason=_reason(names))
    record_before = owner.record_file.read_bytes() if owner else b""
    if owner:
        _ensure_record_backup(owner, state, record_before)
    backup_path = state.keep_original(path, "extension", data, fixed)
    expected_needed = tuple(n for n in elf.parse(data).needed if n not in names)
    store.replace_atomically(path, fixed, _verifier(fixed, expected_needed),
                             staging_root=state.root)
    if owner:
        _write_record(owner, state, owner.rewritten(record_before, fixed), fixed)
    return replace(report, action="fixed", reason=_reason(names),
                   sha256=record.sha256_hex(fixed), backup=str(backup_path))


def _reason(names: tuple[str, ...]) -> str:
    return f"removed DT_NEEDED {', '.join(names)}"


def _write_record(owner: Owner, state: ExtensionState, data: bytes, payload: bytes) -> None:
    store.replace_atomically(
        owner.record_file, data, lambda candidate: owner.verify(candidate, payload),
        staging_root=state.root,
    )
    state.set_written(owner.record_file, data)


def _sync_record(owner: Owner | None, state: ExtensionState, original: bytes, fixed: bytes,
                 dry_run: bool) -> str:
    """After an interrupted run: make the RECORD row describe the fixed file."""
    if owner is None:
        return ""
    row = owner.entries().get(owner.row_path)
    if row is None or matches(row, fixed):
        return ""
    if not matches(row, original):
        raise PipfixError(owner.record_file, f"row of {owner.row_path} matches neither the "
                          "original nor the fixed file")
    if dry_run:
        return "RECORD row would be updated"
    current = owner.record_file.read_bytes()
    _ensure_record_backup(owner, state, current)
    _write_record(owner, state, owner.rewritten(current, fixed), fixed)
    return "RECORD row updated"


def _ensure_record_backup(owner: Owner, state: ExtensionState, current: bytes) -> None:
    """Back up RECORD once, before pipfix first changes it; later runs keep that original.

    A later run finds RECORD already differing from the backup; that is fine
    only when every differing row is a module pipfix fixed (the manifest has it).
    """
    key = state.key(owner.record_file)
    saved = state.original(key, current)
    if saved is None:
        state.forget(key)  # none yet, or given up (its backup was deleted)
        state.keep_original(owner.record_file, "record", current, current)
        return
    if saved == current:
        return
    backup = state.backup_path(state.entries()[key])
    for row_path in differing_rows(saved, current, backup):
        fixed = state.entries().get(state.key(owner.site_dir / row_path))
        if fixed is None or fixed.kind != "extension":
            raise PipfixError(backup, f"RECORD changed since pipfix saved it ({row_path}; "
                              "reinstalled?): delete that backup to fix again")


__all__ = ["FileReport", "FixReport", "fix_extensions", "restore_extensions"]

"""Bring the pip (and setuptools) installed in a target to the patched state.

The patched wheel is installed by **installer** into a staging tree (its
``destdir``) with a scheme computed for the target, never by running the
target's own pip. The staged tree is compared with what is installed and only
the files whose bytes differ are swapped in (``swap``): unchanged modules keep
their bytecode caches, existing launchers keep their style, and the result is
a normal installed distribution (patched files, correct RECORD, INSTALLER) that
a later ``pip install -U pip`` or ``pip uninstall pip`` handles as usual.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any, BinaryIO, NamedTuple

from installer import install as installer_install
from installer.destinations import SchemeDictionaryDestination
from installer.records import RecordEntry
from installer.sources import WheelFile
from installer.utils import Scheme, parse_entrypoints
from packaging.utils import canonicalize_name, canonicalize_version

from . import launchers, patcher, record, swap
from . import scheme as schemes
from .errors import PipfixError
from .installed import (
    InstalledDistribution,
    find_installed,
    has_unpatched,
    is_bytecode,
    patch_candidate,
    rebuild_wheel,
    verify_installed,
)
from .patcher import WheelState
from .target import Installation

WheelKey = tuple[str, str]  # (canonical name, canonical version)


class PatchedWheel(NamedTuple):
    """A wheel to install: its file name and bytes, and the payloads of its members
    already verified in memory (``WheelPlan.output_payloads``), which the install
    reads from there instead of inflating them again."""

    name: str
    data: bytes
    payloads: Mapping[str, bytes]


def wheel_key(name: str, version: str) -> WheelKey:
    return canonicalize_name(name), canonicalize_version(version)


@dataclass(frozen=True)
class InstallReport:
    distribution: str
    version: str
    site_dir: str
    action: str
    source: str = ""
    scheme: str = ""
    scripts: str = ""
    bytecode: str = ""
    changed_files: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["changed_files"] = list(self.changed_files)
        return data


@dataclass(frozen=True)
class InstallOptions:
    dry_run: bool = False
    relocatable: bool | None = None  # None: keep the target's current style
    ensurepip: bool = False
    # preflight() already checked the installed files under this run's lock
    installed_checked: bool = False


# --- launchers -----------------------------------------------------------------

_PIP_SCRIPT = re.compile(r"pip(\d+(\.\d+)?)?$")
_EASY_INSTALL_SCRIPT = re.compile(r"easy_install(-\d+\.\d+)?$")


def _entry_point_for(
    name: str, available: Mapping[str, tuple[str, str, str]]
) -> tuple[str, str, str] | None:
    """The wheel's entry point behind a script name, mapping pipX.Y like pip does."""
    if name in available:
        return available[name]
    for pattern, base in ((_PIP_SCRIPT, "pip"), (_EASY_INSTALL_SCRIPT, "easy_install")):
        if pattern.match(name) and base in available:
            return available[base]
    return None


def _ensurepip_script_names(
    available: Mapping[str, tuple[str, str, str]], version: str
) -> list[str]:
    """What ``python -m ensurepip`` would create: pip3 and pip3.X (no bare ``pip``)."""
    names = []
    if "pip" in available:
        names += ["pip3", f"pip{version}"]
    if "easy_install" in available:
        names.append(f"easy_install-{version}")
    return names


def _console_entry_points(wheel: WheelFile) -> dict[str, tuple[str, str, str]]:
    if "entry_points.txt" not in wheel.dist_info_filenames:
        return {}
    text = wheel.read_dist_info("entry_points.txt")
    return {
        name: (module, attr, section) for name, module, attr, section in parse_entrypoints(text)
    }


class _KnownPayloads(zipfile.ZipFile):
    """The wheel's archive, whose members with a payload at hand are read from memory.

    installer reads every member through ``open``; pip's 7 MB would otherwise be
    inflated a second time, after pipfix verified them (and built the wheel
    from them) in this very run.
    """

    def __init__(self, file: Path, payloads: Mapping[str, bytes]) -> None:
        super().__init__(file)
        self._payloads = payloads

    def open(
        self,
        name: str | zipfile.ZipInfo,
        mode: str = "r",
        pwd: bytes | None = None,
        *,
        force_zip64: bool = False,
    ) -> IO[bytes]:
        filename = name.filename if isinstance(name, zipfile.ZipInfo) else name
        payload = self._payloads.get(filename) if mode == "r" else None
        if payload is not None:
            return io.BytesIO(payload)
        return super().open(name, mode, pwd, force_zip64=force_zip64)  # type: ignore[arg-type]


class _ScriptedWheel(WheelFile):
    """The wheel, with its console scripts named as the target needs them."""

    def __init__(
        self, archive: zipfile.ZipFile, scripts: Mapping[str, tuple[str, str, str]]
    ) -> None:
        super().__init__(archive)
        self._scripts = scripts

    def read_dist_info(self, filename: str) -> str:
        if filename != "entry_points.txt":
            return super().read_dist_info(filename)
        sections: dict[str, list[str]] = {}
        for name, (module, attr, section) in self._scripts.items():
            sections.setdefault(f"{section}_scripts", []).append(f"{name} = {module}:{attr}")
        return "".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in sections.items())


class _StagingDestination(SchemeDictionaryDestination):
    """installer's destination, writing under a staging root, launchers by policy.

    A file whose final path already holds exactly its bytes is not staged
    (the swap would leave it alone anyway): installer still hashes it for
    RECORD, and ``unchanged`` lists it, so it counts as part of the install.
    A patch changes a handful of modules; staging the other ~750 files of pip
    and setuptools was most of the time of a reinstall.
    """

    def __init__(
        self,
        scheme_dict: dict[str, str],
        interpreter: str,
        stage_root: Path,
        script_bytes: Callable[[str, str, str, str], bytes],
    ) -> None:
        super().__init__(
            scheme_dict,
            interpreter=interpreter,
            script_kind="posix",
            hash_algorithm="sha256",
            destdir=str(stage_root),
        )
        self._script_bytes = script_bytes
        self._roots: dict[Scheme, str] = {}
        self.unchanged: set[Path] = set()

    def write_to_fs(  # type: ignore[override,unused-ignore]
        self, scheme: Scheme, path: str, stream: BinaryIO, is_executable: bool
    ) -> RecordEntry:
        data = stream.read()
        final = self._already_installed(scheme, path, data, is_executable)
        if final is None:
            return super().write_to_fs(scheme, path, io.BytesIO(data), is_executable)
        self.unchanged.add(final)
        return record.entry_for(path, data)

    def _already_installed(
        self, scheme: Scheme, path: str, data: bytes, is_executable: bool
    ) -> Path | None:
        """The final path, if it is a regular file holding ``data`` (and the mode it needs)."""
        if path.endswith(".dist-info/RECORD"):
            return None  # always rewritten: it gains the rows of the bytecode caches
        root = self._roots.get(scheme)
        if root is None:
            root = self._roots[scheme] = os.path.abspath(self.scheme_dict[scheme])
        final = os.path.abspath(os.path.join(root, path))
        if not final.startswith(os.path.join(root, "")):
            return None  # outside its scheme directory: installer refuses it
        try:
            info = os.lstat(final)
            if not stat.S_ISREG(info.st_mode) or info.st_size != len(data):
                return None
            if is_executable and not info.st_mode & 0o111:
                return None
            with open(final, "rb") as handle:
                return Path(final) if handle.read() == data else None
        except OSError:
            return None

    def write_script(self, name: str, module: str, attr: str, section: str) -> RecordEntry:  # type: ignore[override,unused-ignore]
        data = self._script_bytes(name, module, attr, section)
        with io.BytesIO(data) as stream:
            return self.write_to_fs(Scheme("scripts"), name, stream, is_executable=True)


# --- staging and comparison -----------------------------------------------------------


def _final_path(stage_root: Path, staged: Path) -> Path:
    return Path("/") / staged.relative_to(stage_root)


def _staged_files(stage_root: Path) -> list[Path]:
    return sorted(p for p in stage_root.rglob("*") if p.is_file())


def _cache_files_of(source: Path) -> list[Path]:
    cache = source.parent / "__pycache__"
    if not cache.is_dir():
        return []
    return sorted(cache.glob(f"{source.stem}.*.pyc"))


def _record_rows(site_dir: Path, caches: Mapping[Path, RecordEntry]) -> list[str]:
    """RECORD rows for bytecode caches, by final path (relative to the final
    ``site_dir`` in the row; the entries' own paths are not used)."""
    rows = []
    for final, entry in caches.items():
        relative = os.path.relpath(final, site_dir).replace(os.sep, "/")
        rows.append(",".join(RecordEntry(relative, entry.hash_, entry.size).to_row()) + "\n")
    return rows


def _rewrite_staged_record(record_file: Path, rows: list[str]) -> None:
    """Add rows for bytecode caches that stay valid or were compiled by the target."""
    text = record_file.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    record_row = [line for line in lines if line.split(",", 1)[0].endswith("/RECORD")]
    others = [line for line in lines if line not in record_row]
    record_file.write_text("".join(others + rows + record_row), encoding="utf-8")


@dataclass
class _Staged:
    operations: list[swap.Operation]
    changed: list[str]
    bytecode: str


def _stage(
    target_scheme: schemes.InstallScheme,
    stage_root: Path,
    wheel_path: Path,
    payloads: Mapping[str, bytes],
    dist: InstalledDistribution | None,
    options: InstallOptions,
    target: schemes.TargetSession | None,
) -> tuple[_Staged, str]:
    existing_scripts = {}
    if dist is not None:
        for path in dist.files():
            if path.parent == target_scheme.scripts and path.is_file():
                existing_scripts[path.name] = path.read_bytes()
    keep_style = launchers.existing_style_is_relocatable(
        [target_scheme.scripts / n for n in existing_scripts]
    )
    relocatable = options.relocatable if options.relocatable is not None else bool(keep_style)
    script_style = "relocatable /bin/sh launchers" if relocatable else "absolute shebang"
    if options.relocatable is None and existing_scripts:
        script_style = "kept as they were (" + script_style + ")"

    def script_bytes(name: str, module: str, attr: str, section: str) -> bytes:
        if name in existing_scripts:
            current = existing_scripts[name]
            if relocatable:
                return launchers.make_relocatable(current, target_scheme.interpreter)
            if options.relocatable is False and launchers.is_relocatable(current):
                return launchers.generate(
                    name, module, attr, section, target_scheme.interpreter, False
                )
            return current
        return launchers.generate(
            name, module, attr, section, target_scheme.interpreter, relocatable
        )

    with _KnownPayloads(wheel_path, payloads) as archive:
        available = _console_entry_points(WheelFile(archive))
        if dist is not None:
            names = sorted(existing_scripts)
        else:
            names = _ensurepip_script_names(available, target_scheme.version)
        scripts = {n: ep for n in names if (ep := _entry_point_for(n, available)) is not None}
        source = _ScriptedWheel(archive, scripts)
        destination = _StagingDestination(
            target_scheme.as_installer_dict(),
            str(target_scheme.interpreter),
            stage_root,
            script_bytes,
        )
        metadata = dist.install_metadata() if dist is not None else {"INSTALLER": b"pip\n"}
        installer_install(source, destination, metadata)

    staged = _staged_files(stage_root)
    changed_sources = [
        (s, _final_path(stage_root, s))
        for s in staged
        if s.suffix == ".py"
        and not (
            _final_path(stage_root, s).is_file()
            and _final_path(stage_root, s).read_bytes() == s.read_bytes()
        )
    ]
    stale_caches = [c for _, final in changed_sources for c in _cache_files_of(final)]
    changed_finals = {final for _, final in changed_sources}
    kept_caches: dict[Path, RecordEntry] = {}
    if dist is not None:
        for record_path, row in dist.records.items():
            absolute = dist.absolute(record_path)
            if is_bytecode(record_path) and absolute.is_file() and absolute not in stale_caches:
                source_py = absolute.parent.parent / (absolute.name.split(".", 1)[0] + ".py")
                if source_py not in changed_finals:
                    kept_caches[absolute] = row
    compiling = None if target is None else target.start_compiling(changed_sources)
    if compiling is not None and compiling():
        compiled = [c for s, _ in changed_sources for c in _cache_files_of(s)]
        bytecode = "changed modules compiled with the target"
    else:
        compiled = []
        bytecode = (
            "none for changed modules: the target does not run here"
            if compiling is None
            else "none for changed modules: the target failed to compile them"
        )
    # Untouched caches keep their installed rows (with or without a hash, as pip
    # wrote them); the target's fresh ones are hashed.
    caches = dict(kept_caches)
    for cache in compiled:
        caches[_final_path(stage_root, cache)] = record.entry_for("", cache.read_bytes())
    for record_file in (
        p for p in staged if p.name == "RECORD" and p.parent.suffix == ".dist-info"
    ):
        final_site = _final_path(stage_root, record_file.parent.parent)
        _rewrite_staged_record(record_file, _record_rows(final_site, caches))
    staged = _staged_files(stage_root)

    operations: list[swap.Operation] = []
    new_finals = set(kept_caches) | destination.unchanged
    recorded = {dist.absolute(p): e for p, e in dist.records.items()} if dist is not None else {}
    for staged_file in staged:
        final = _final_path(stage_root, staged_file)
        new_finals.add(final)
        if final.is_file():
            current, new = final.read_bytes(), staged_file.read_bytes()
            if current == new or _locally_modified_and_untouched(recorded.get(final), current, new):
                staged_file.unlink()
                continue
            entry = recorded.get(final)
            if entry is not None and entry.hash_ is not None and not record.matches(entry, current):
                raise PipfixError(
                    final,
                    "changed since it was installed (RECORD differs); refusing to overwrite it",
                )
        operations.append(swap.Operation("replace", final, staged_file))
    old_files = set(dist.files()) if dist is not None else set()
    for path in sorted((old_files | set(stale_caches)) - new_finals):
        if path.exists():
            operations.append(swap.Operation("remove", path))
    changed = sorted(
        os.path.relpath(o.path, target_scheme.purelib) for o in operations if o.path.suffix == ".py"
    )
    return _Staged(operations, changed, bytecode), script_style


def _locally_modified_and_untouched(entry: RecordEntry | None, current: bytes, new: bytes) -> bool:
    """A file changed after installation that the patch does not change: keep it."""
    if entry is None or entry.hash_ is None or record.matches(entry, current):
        return False
    return record.matches(entry, new)


def _swap_in(
    installation: Installation,
    target_scheme: schemes.InstallScheme,
    wheel: PatchedWheel,
    dist: InstalledDistribution | None,
    options: InstallOptions,
    target: schemes.TargetSession | None,
) -> tuple[list[str], str, str]:
    state_dir = installation.state_dir
    state_dir.mkdir(exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix="stage-", dir=state_dir))
    try:
        wheel_path = stage / wheel.name
        wheel_path.write_bytes(wheel.data)
        staged, script_style = _stage(
            target_scheme, stage / "root", wheel_path, wheel.payloads, dist, options, target
        )
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)  # nothing was swapped yet
        raise
    if not staged.operations:
        swap.complete(state_dir)
        return [], script_style, staged.bytecode
    name = dist.name if dist is not None else wheel.name.split("-")[0]
    version = dist.version if dist is not None else wheel.name.split("-")[1]
    key = f"{name}-{version}-python{target_scheme.version}"
    swap.prepare(state_dir, key, staged.operations)
    swap.run(state_dir, staged.operations, stage)
    return staged.changed, script_style, staged.bytecode


# --- the command ---------------------------------------------------------------------


def _patched_wheel_for(
    dist: InstalledDistribution, patched: Mapping[WheelKey, PatchedWheel]
) -> tuple[str, PatchedWheel | None, str]:
    """(source description, the patched wheel or None, state) for a distribution."""
    at_hand = patched.get(wheel_key(dist.name, dist.version))
    if at_hand is not None:
        return "the patched ensurepip wheel", at_hand, WheelState.NEEDS_PATCH.value
    filename, data = rebuild_wheel(dist)
    plan = patcher.plan(Path(filename), data)
    if plan.state is WheelState.NEEDS_PATCH:
        built = PatchedWheel(filename, plan.build(), plan.output_payloads())
        return "a wheel rebuilt from its installed files", built, plan.state.value
    return "its installed files", None, plan.state.value


# The pip/setuptools distributions preflight() found, by site directory.
Found = Mapping[Path, list[InstalledDistribution]]


def preflight(installation: Installation) -> Found:
    """Refuse before anything is written if an installed pip/setuptools does not verify;
    the distributions found, by site directory (for ``reinstall`` under the same lock).

    Called under the target's lock, after an interrupted swap was completed (a
    journal still present means another run is mid-swap: its files are half old,
    half new until that run finishes, so they are not judged).
    """
    found: dict[Path, list[InstalledDistribution]] = {}
    if (installation.state_dir / swap.JOURNAL).exists():
        return found
    for computed in schemes.computed_schemes(installation):
        for site in computed.site_dirs:
            found[site] = find_installed(site)
            for dist in found[site]:
                if dist.provenance is None:
                    verify_installed(dist, only=patch_candidate)
    return found


Asked = Mapping[schemes.InstallScheme, schemes.TargetSession]


def start_asking_for_schemes(installation: Installation) -> Asked:
    """Start the target's runs (``TargetSession``) for each Python version with an
    installed pip/setuptools to reinstall: they start while the wheels are planned
    and written (pass the result to ``reinstall``; ``stop_asking`` ends them)."""
    return {
        computed: schemes.TargetSession(computed)
        for computed in schemes.computed_schemes(installation)
        if any(has_unpatched(site) for site in computed.site_dirs)
    }


def stop_asking(asked: Asked) -> None:
    """End the target's runs ``start_asking_for_schemes`` started (once the run is over)."""
    for session in asked.values():
        session.close()


def reinstall(
    installation: Installation,
    patched: Mapping[WheelKey, PatchedWheel],
    bundled: Mapping[str, list[PatchedWheel]],
    options: InstallOptions,
    asked: Asked | None = None,
    found: Found | None = None,
) -> list[InstallReport]:
    """Patch every installed pip/setuptools of ``installation`` (and --ensurepip);
    ``asked``: sessions ``start_asking_for_schemes`` started (the caller ends them);
    ``found``: what ``preflight`` found under the lock this run still holds."""
    reports: list[InstallReport] = []
    if not options.dry_run and installation.state_dir.is_dir():
        swap.complete(installation.state_dir)
    for computed in schemes.computed_schemes(installation):
        confirmed = _LazyScheme(computed, (asked or {}).get(computed))
        try:
            dists = [
                d
                for site in computed.site_dirs
                for d in (found[site] if found and site in found else find_installed(site))
            ]
            for dist in dists:
                reports.append(_reinstall_one(installation, confirmed, dist, patched, options))
            if options.ensurepip and not any(canonicalize_name(d.name) == "pip" for d in dists):
                for wheel in bundled.get(computed.version, []):
                    reports.append(_install_new(installation, confirmed, wheel, options))
        finally:
            confirmed.close()
    return reports


class _LazyScheme:
    """The target is run (to confirm its scheme) only when something must be installed."""

    def __init__(
        self, computed: schemes.InstallScheme, started: schemes.TargetSession | None = None
    ) -> None:
        self.computed = computed
        self._started = started
        self._own: schemes.TargetSession | None = None

    def get(self) -> tuple[schemes.InstallScheme, schemes.TargetSession | None]:
        """The scheme to install into, and the running target (None: it does not run)."""
        session = self._started
        if session is None:
            session = self._own = self._own or schemes.TargetSession(self.computed)
        return session.scheme(), session if session.runs else None

    def close(self) -> None:
        """End the session this started itself (a started one is its caller's)."""
        if self._own is not None:
            self._own.close()


def _reinstall_one(
    installation: Installation,
    lazy_scheme: _LazyScheme,
    dist: InstalledDistribution,
    patched: Mapping[WheelKey, PatchedWheel],
    options: InstallOptions,
) -> InstallReport:
    base = InstallReport(dist.name, dist.version, str(dist.site_dir), action="")
    existing = dist.provenance
    if existing is not None and options.relocatable is None:
        return replace(base, action="already patched")
    if not (options.installed_checked and existing is None):  # else preflight() did
        verify_installed(dist, only=patch_candidate)
    source, wheel, state = _patched_wheel_for(dist, patched)
    if wheel is None:
        if existing is None:
            return replace(base, action="nothing to do", source=state)
        wheel = PatchedWheel(*rebuild_wheel(dist), payloads={})
        source = "its installed (already patched) files"
    if options.dry_run:
        return replace(base, action="would reinstall", source=source)
    target_scheme, target = lazy_scheme.get()
    changed, scripts, bytecode = _swap_in(
        installation, target_scheme, wheel, dist, options, target
    )
    return replace(
        base,
        action="reinstalled patched" if changed or existing is None else "launchers rewritten",
        source=source,
        scheme=target_scheme.source,
        scripts=scripts,
        bytecode=bytecode,
        changed_files=tuple(changed),
    )


def _install_new(
    installation: Installation,
    lazy_scheme: _LazyScheme,
    wheel: PatchedWheel,
    options: InstallOptions,
) -> InstallReport:
    name, version = wheel.name.split("-")[:2]
    base = InstallReport(
        name,
        version,
        str(lazy_scheme.computed.purelib),
        action="",
        source="the patched ensurepip wheel",
    )
    if options.dry_run:
        return replace(base, action="would install")
    target_scheme, target = lazy_scheme.get()
    _, scripts, bytecode = _swap_in(installation, target_scheme, wheel, None, options, target)
    return replace(
        base,
        action="installed (ensurepip)",
        scheme=target_scheme.source,
        scripts=scripts,
        bytecode=bytecode,
    )


def restore_installs(installation: Installation) -> list[InstallReport]:
    """Put back every installation pipfix swapped, byte for byte."""
    state_dir = installation.state_dir
    if not state_dir.is_dir():
        return []
    swap.complete(state_dir)
    reports = []
    for install_dir in sorted((state_dir / swap.INSTALLS).glob("*")):
        if not (install_dir / swap.MANIFEST).is_file():
            continue
        restored = swap.restore(state_dir, install_dir)
        name, version = install_dir.name.split("-")[:2]
        reports.append(InstallReport(name, version, "", "restored", changed_files=tuple(restored)))
    return reports

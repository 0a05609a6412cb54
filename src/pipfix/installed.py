"""Installed distributions (pip, setuptools) in a target's site-packages.

An installed distribution is trusted like a wheel: every file its RECORD
lists with a hash must still match it, or pipfix refuses to touch it. When no
wheel of the installed version is at hand, the distribution is turned back
into a wheel from exactly those verified files, so it can go through the same
patch pipeline as ensurepip's wheels.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from packaging.utils import canonicalize_name

from . import provenance, record
from .errors import PipfixError

PATCHED_DISTRIBUTIONS = ("pip", "setuptools")
# Written by the installing tool, not part of the wheel.
INSTALL_METADATA = ("INSTALLER", "REQUESTED", "direct_url.json", "RECORD")


@dataclass(frozen=True)
class InstalledDistribution:
    name: str
    version: str
    dist_info: Path
    site_dir: Path
    records: dict[str, record.RecordEntry]

    def absolute(self, record_path: str) -> Path:
        known = self._absolute_paths.get(record_path)
        return known if known is not None else self._resolve(record_path)

    @cached_property
    def _absolute_paths(self) -> dict[str, Path]:
        """Every RECORD path, resolved once: a reinstall asks for each of them ~10 times."""
        return {path: self._resolve(path) for path in self.records}

    def _resolve(self, record_path: str) -> Path:
        return Path(os.path.normpath(os.path.join(self.site_dir, record_path)))

    @property
    def provenance(self) -> provenance.Provenance | None:
        path = self.dist_info / provenance.FILENAME
        if not path.is_file():
            return None
        try:
            return provenance.Provenance.from_bytes(path.read_bytes())
        except ValueError:
            return None

    def install_metadata(self) -> dict[str, bytes]:
        """INSTALLER, REQUESTED, direct_url.json as installed (kept across reinstall)."""
        kept = {}
        for name in INSTALL_METADATA[:-1]:
            path = self.dist_info / name
            if path.is_file():
                kept[name] = path.read_bytes()
        return kept

    def files(self) -> list[Path]:
        return [self.absolute(p) for p in self.records]


def _dist_infos(site_dir: Path) -> Iterator[tuple[Path, str, str]]:
    """(dist-info directory, name, version) of pip and setuptools in ``site_dir``."""
    if not site_dir.is_dir():
        return
    for dist_info in sorted(site_dir.glob("*.dist-info")):
        stem = dist_info.name[: -len(".dist-info")]
        name, _, version = stem.rpartition("-")
        if canonicalize_name(name) in PATCHED_DISTRIBUTIONS:
            yield dist_info, name, version


def has_unpatched(site_dir: Path) -> bool:
    """Whether pip or setuptools is installed in ``site_dir`` without pipfix's patch
    (its RECORD is not read: ``find_installed`` does that, and judges it)."""
    return any(not (d / provenance.FILENAME).is_file() for d, _, _ in _dist_infos(site_dir))


def find_installed(site_dir: Path) -> list[InstalledDistribution]:
    """pip and setuptools distributions installed in ``site_dir``."""
    found: list[InstalledDistribution] = []
    for dist_info, name, version in _dist_infos(site_dir):
        record_file = dist_info / "RECORD"
        if not record_file.is_file():
            raise PipfixError(dist_info, "installed without a RECORD; cannot patch it safely")
        try:
            entries = record.parse(record_file.read_text(encoding="utf-8"))
        except (record.RecordError, UnicodeDecodeError, ValueError) as exc:
            raise PipfixError(record_file, str(exc)) from None
        found.append(InstalledDistribution(name, version, dist_info, site_dir, entries))
    return found


def is_bytecode(record_path: str) -> bool:
    return "__pycache__/" in record_path or record_path.endswith((".pyc", ".pyo"))


def verify_installed(
    dist: InstalledDistribution, only: Callable[[str, bytes], bool] | None = None
) -> None:
    """Installed files still match RECORD (bytecode caches excepted).

    With ``only``, just the files it selects are checked: the ones pipfix
    would replace. A file an administrator changed on purpose (a CA bundle,
    say) and that pipfix leaves alone is not pipfix's to judge.
    """
    for path, entry in dist.records.items():
        if entry.hash_ is None or is_bytecode(path):
            continue
        absolute = dist.absolute(path)
        if only is not None and not absolute.is_file():
            continue
        try:
            data = absolute.read_bytes()
        except OSError as exc:
            raise PipfixError(
                absolute, f"listed in RECORD but unreadable: {exc.strerror}"
            ) from None
        if only is not None and not only(path, data):
            continue
        if not record.matches(entry, data):
            raise PipfixError(
                absolute, "changed since it was installed (RECORD differs); refusing to patch it"
            )


def patch_candidate(path: str, data: bytes) -> bool:
    """A module the codemods could change (the byte pre-filter, no libcst)."""
    from .codemods import could_need_change

    return path.endswith(".py") and could_need_change(data)


def _wheel_tag(dist: InstalledDistribution) -> str:
    wheel_file = dist.dist_info / "WHEEL"
    if not wheel_file.is_file():
        raise PipfixError(wheel_file, "missing; cannot rebuild a wheel from this installation")
    for line in wheel_file.read_text(encoding="utf-8").splitlines():
        if line.startswith("Tag:"):
            return line.split(":", 1)[1].strip()
    return "py3-none-any"


def rebuild_wheel(dist: InstalledDistribution) -> tuple[str, bytes]:
    """A wheel (file name, bytes) made from the installed, verified files."""
    verify_installed(dist)
    dist_info_name = dist.dist_info.name
    members: list[tuple[str, bytes]] = []
    for path in dist.records:
        if path.startswith("../") or os.path.isabs(path) or is_bytecode(path):
            continue
        if path.startswith(dist_info_name + "/") and path.rsplit("/", 1)[1] in INSTALL_METADATA:
            continue
        members.append((path, dist.absolute(path).read_bytes()))
    record_path = f"{dist_info_name}/RECORD"
    rows = (
        "".join(",".join(record.entry_for(p, data).to_row()) + "\n" for p, data in members)
        + f"{record_path},,\n"
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in [*members, (record_path, rows.encode())]:
            info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    filename = f"{dist.name}-{dist.version}-{_wheel_tag(dist)}.whl"
    return filename, buffer.getvalue()

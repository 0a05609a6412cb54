"""Verified wheel reading and byte-preserving rebuild.

A wheel is trusted only after every check here passes: its file name, its
member names, its size limits, its layout (``zipraw``; ``zipfile`` must read
the very same records), and every member's CRC-32, sha256 and size against
RECORD. pipfix never re-signs a wheel that did not verify (the same bytes
under the same name verified by an earlier run count: ``seals``). The rebuild copies
unchanged members as their stored bytes (see ``zipraw``) and rewrites RECORD
for the members that changed, plus pipfix's provenance file.
"""

from __future__ import annotations

import contextlib
import io
import posixpath
import re
import stat
import threading
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from packaging.utils import (
    InvalidWheelFilename,
    canonicalize_name,
    canonicalize_version,
    parse_wheel_filename,
)

from . import record, seals, zipraw
from .errors import VerificationError

MAX_WHEEL_BYTES = 256 * 2**20
MAX_UNCOMPRESSED_BYTES = 512 * 2**20
MAX_MEMBERS = 65000
# Source files deflate about 3:1 to 17:1 (the most in the pinned wheels: 16.8:1).
# A member above MAX_RATIO:1 and RATIO_FLOOR bytes is a zip bomb, refused before
# anything is decompressed.
MAX_RATIO = 100
RATIO_FLOOR = 2**20


@dataclass(frozen=True)
class VerifiedWheel:
    """A wheel whose archive and RECORD were checked member by member."""

    path: Path
    data: bytes
    sha256: str
    distribution: str
    version: str
    dist_info: str
    archive: zipraw.RawArchive
    contents: Mapping[str, bytes]
    records: Mapping[str, record.RecordEntry]

    @property
    def record_path(self) -> str:
        return f"{self.dist_info}/RECORD"

    def without_members(self) -> VerifiedWheel:
        """This wheel without its inflated members, RECORD rows and member records.

        What a worker process (``parallel``) sends back with a plan it already
        built and verified: the parent only writes the output, and pickling
        ~7 MB of inflated members per wheel cost more than the work it shares.
        """
        return replace(
            self, archive=zipraw.RawArchive((), self.archive.comment), contents={}, records={}
        )


_UNDECODED = re.compile(r"[\udc80-\udcff]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_name(name: str, flags: int) -> str | None:
    """Why a member name is unsafe, or None."""
    if not flags & 0x800 and not name.isascii():
        return "is not UTF-8 encoded"
    if _UNDECODED.search(name):  # bytes zipraw could not decode
        return "is not UTF-8 encoded"
    if not name:
        return "is empty"
    if "\\" in name:
        return "contains a backslash"
    if "\x00" in name:
        return "contains a NUL byte"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    if ".." in name.split("/"):
        return "escapes the wheel with '..'"
    # "pkg/./mod.py" or "pkg//mod.py" would install over "pkg/mod.py": one file, two rows.
    if any(part in ("", ".") for part in (name[:-1] if name.endswith("/") else name).split("/")):
        return "is not a normalized path"
    if _CONTROL.search(name):
        return "contains a control character"
    return None


def _check_members(path: Path, archive: zipraw.RawArchive) -> None:
    if len(archive.members) > MAX_MEMBERS:
        raise VerificationError(path, f"too many members ({len(archive.members)})")
    seen: set[str] = set()
    total = 0
    for member in archive.members:
        problem = _check_name(member.name, member.flags)
        if problem:
            raise VerificationError(path, f"member {member.name!r} {problem}")
        if member.name in seen:
            raise VerificationError(path, f"member {member.name!r} appears twice")
        seen.add(member.name)
        if stat.S_ISLNK(member.mode):
            raise VerificationError(path, f"member {member.name!r} is a symbolic link")
        if member.flags & 0x1:
            raise VerificationError(path, f"member {member.name!r} is encrypted")
        if member.method not in (zipraw.STORED, zipraw.DEFLATED):
            raise VerificationError(
                path, f"member {member.name!r} uses unsupported compression {member.method}"
            )
        if member.name.endswith("/") and member.size:
            raise VerificationError(path, f"directory member {member.name!r} holds data")
        if member.size > RATIO_FLOOR and member.size > MAX_RATIO * member.compressed_size:
            ratio = member.size // max(member.compressed_size, 1)
            raise VerificationError(
                path, f"member {member.name!r} would expand {ratio}:1 to {member.size} bytes"
            )
        total += member.size
        if total > MAX_UNCOMPRESSED_BYTES:
            raise VerificationError(
                path, f"uncompressed size exceeds {MAX_UNCOMPRESSED_BYTES // 2**20} MiB"
            )


def _dist_info(path: Path, archive: zipraw.RawArchive, name: str, version: str) -> str:
    tops = {m.name.split("/", 1)[0] for m in archive.members if "/" in m.name}
    dist_infos = sorted(t for t in tops if t.endswith(".dist-info"))
    if len(dist_infos) != 1:
        raise VerificationError(path, f"expected one .dist-info directory, found {len(dist_infos)}")
    stem = dist_infos[0][: -len(".dist-info")]
    dist_name, _, dist_version = stem.rpartition("-")
    if canonicalize_name(dist_name) != canonicalize_name(name) or canonicalize_version(
        dist_version
    ) != canonicalize_version(version):
        raise VerificationError(path, f"{dist_infos[0]} does not match the file name")
    return dist_infos[0]


def _check_zipfile_agrees(path: Path, data: bytes, archive: zipraw.RawArchive) -> None:
    """``zipfile`` (pip's, ensurepip's and installer's reader) sees the same members at
    the same offsets with the same sizes and CRCs: what was verified is what they read."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as reader:
            seen = [
                (i.filename, i.header_offset, i.compress_size, i.file_size, i.CRC, i.compress_type)
                for i in reader.infolist()
            ]
    except (
        zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, ValueError, EOFError
    ) as exc:
        raise VerificationError(path, f"not a valid zip archive ({exc})") from None
    ours = [
        (m.name, m.offset, m.compressed_size, m.size, m.crc, m.method) for m in archive.members
    ]
    if seen != ours:
        raise VerificationError(path, "central directory is inconsistent")


# Inflating is most of the time of verifying a wheel, and zlib releases the GIL
# while it works: above this many compressed bytes a second thread inflates the
# later half of the members.
_TWO_THREADS_FROM = 256 * 1024


def _read_contents(path: Path, data: bytes, archive: zipraw.RawArchive) -> dict[str, bytes]:
    _check_zipfile_agrees(path, data, archive)
    files = [member for member in archive.members if not member.name.endswith("/")]
    total = sum(member.compressed_size for member in files)
    split = len(files)
    if total >= _TWO_THREADS_FROM:
        running = 0
        for index, member in enumerate(files):
            running += member.compressed_size
            if running >= total // 2:
                split = index + 1
                break
    later: list[_Inflated] = []
    crashed: list[BaseException] = []

    def inflate_later() -> None:
        try:
            later.append(_inflate(files[split:]))
        except BaseException as exc:  # MemoryError and the like: raised in this thread below
            crashed.append(exc)

    if split < len(files):
        helper = threading.Thread(target=inflate_later, name="pipfix-inflate")
        helper.start()
        earlier = _inflate(files[:split])
        helper.join()
        if crashed:
            raise crashed[0]
    else:
        earlier = _inflate(files)
    contents: dict[str, bytes] = {}
    for payloads, failure in (earlier, *later):  # in member order: the first failure is reported
        contents.update(payloads)
        if failure is not None:
            member, exc = failure
            raise VerificationError(path, f"member {member.name!r} {exc}")
    return contents


_Inflated = tuple[dict[str, bytes], Optional[tuple[zipraw.RawMember, zipraw.RawZipError]]]


def _inflate(members: list[zipraw.RawMember]) -> _Inflated:
    """Payloads of ``members`` in order, up to the first that fails (and its error)."""
    payloads: dict[str, bytes] = {}
    known = _last_verified.members if _last_verified is not None else {}
    for member in members:
        earlier = known.get(member.name)
        if earlier is not None and _same_stored_data(member, earlier[0]):
            payloads[member.name] = earlier[1]  # read_payload would check it alike
            continue
        try:
            payloads[member.name] = zipraw.read_payload(member)
        except zipraw.RawZipError as exc:
            return payloads, (member, exc)
    return payloads, None


def _same_stored_data(member: zipraw.RawMember, other: zipraw.RawMember) -> bool:
    """Same method, declared size and CRC, and compressed bytes: the same payload,
    which passes or fails ``read_payload``'s checks the same way."""
    if (member.method, member.crc, member.size, member.compressed_size) != (
        other.method, other.crc, other.size, other.compressed_size
    ):
        return False
    return member.stored_data == other.stored_data


class _LastVerified:
    """The members (and payloads) of the wheel this process verified last.

    Consecutive releases of pip or setuptools store most of their files with
    the same compressed bytes under the same RECORD row: a run over many wheels
    inflates and hashes those once. Kept only while ``reusing_payloads`` is on
    (one wheel's payloads at most).
    """

    def __init__(self) -> None:
        self.members: dict[str, tuple[zipraw.RawMember, bytes]] = {}
        self.records: Mapping[str, record.RecordEntry] = {}

    def remember(
        self,
        archive: zipraw.RawArchive,
        contents: Mapping[str, bytes],
        records: Mapping[str, record.RecordEntry],
    ) -> None:
        self.members = {
            m.name: (m, contents[m.name]) for m in archive.members if m.name in contents
        }
        self.records = records

    def matched(self, name: str, payload: bytes, entry: record.RecordEntry) -> bool:
        """This very payload (reused, not inflated again) matched an equal RECORD row."""
        earlier = self.members.get(name)
        return earlier is not None and earlier[1] is payload and self.records.get(name) == entry


_last_verified: _LastVerified | None = None


@contextlib.contextmanager
def reusing_payloads() -> Iterator[None]:
    """Within this block, a member stored exactly as in the wheel verified just
    before is not inflated again (a run over many wheels)."""
    global _last_verified
    outer = _last_verified
    start_reusing_payloads()
    try:
        yield
    finally:
        _last_verified = outer


def start_reusing_payloads() -> None:
    """``reusing_payloads`` for the rest of this process (a worker's whole life)."""
    global _last_verified
    if _last_verified is None:
        _last_verified = _LastVerified()


def _check_record(
    path: Path, dist_info: str, contents: Mapping[str, bytes]
) -> dict[str, record.RecordEntry]:
    record_path = f"{dist_info}/RECORD"
    if record_path not in contents:
        raise VerificationError(path, f"{record_path} is missing")
    try:
        entries = record.parse(contents[record_path].decode("utf-8"))
    except UnicodeDecodeError:
        raise VerificationError(path, "RECORD is not UTF-8") from None
    except record.RecordError as exc:
        raise VerificationError(path, str(exc)) from None
    signatures = {f"{dist_info}/{n}" for n in record.SIGNATURE_NAMES}
    for name, payload in contents.items():
        if name == record_path or name in signatures:
            continue
        entry = entries.get(name)
        if entry is None:
            raise VerificationError(path, f"{name} is not listed in RECORD")
        if entry.hash_ is None or entry.size is None:
            raise VerificationError(path, f"RECORD has no hash or size for {name}")
        if _last_verified is not None and _last_verified.matched(name, payload, entry):
            continue
        if not record.matches(entry, payload):
            raise VerificationError(path, f"{name} does not match its RECORD hash or size")
    for name in entries:
        if name not in contents and not name.endswith("/"):
            raise VerificationError(path, f"RECORD lists {name}, which is not in the wheel")
    return entries


def verify(path: Path, data: bytes | None = None, *, use_seals: bool = False) -> VerifiedWheel:
    """Read and verify the wheel at ``path`` (or ``data``, named by ``path``).

    ``use_seals``: bytes that verified in full under this name before
    (``seals``) are taken as verified, their members inflated when used; bytes
    that verify in full now are sealed.
    """
    try:
        name, version, _build, _tags = parse_wheel_filename(path.name)
    except InvalidWheelFilename as exc:
        raise VerificationError(path, f"not a wheel file name ({exc})") from None
    too_large = f"larger than {MAX_WHEEL_BYTES // 2**20} MiB"
    if data is None:
        try:
            if path.stat().st_size > MAX_WHEEL_BYTES:
                raise VerificationError(path, too_large)
            with path.open("rb") as handle:
                data = handle.read(MAX_WHEEL_BYTES + 1)
        except OSError as exc:
            raise VerificationError(path, f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_WHEEL_BYTES:
        raise VerificationError(path, too_large)
    sha256 = record.sha256_hex(data)
    sealed = use_seals and seals.is_sealed(sha256, path.name)
    try:
        archive = zipraw.read_archive(data)
    except zipraw.RawZipError as exc:
        raise VerificationError(path, f"not a valid zip archive ({exc})") from None
    if not sealed:
        _check_members(path, archive)
    dist_info = _dist_info(path, archive, str(name), str(version))
    contents: Mapping[str, bytes]
    entries: Mapping[str, record.RecordEntry]
    if sealed:
        contents = _Inflating(path, archive)
        entries = _RecordRows(path, f"{dist_info}/RECORD", contents)
    else:
        contents = _read_contents(path, data, archive)
        entries = _check_record(path, dist_info, contents)
        if _last_verified is not None:
            _last_verified.remember(archive, contents, entries)
        if use_seals:
            seals.seal(sha256, path.name)
    return VerifiedWheel(
        path=path,
        data=data,
        sha256=sha256,
        distribution=str(name),
        version=str(version),
        dist_info=dist_info,
        archive=archive,
        contents=contents,
        records=entries,
    )


class _Inflating(Mapping[str, bytes]):
    """The files of a sealed wheel, each inflated (CRC and size checked) when first read."""

    def __init__(self, path: Path, archive: zipraw.RawArchive) -> None:
        self._path = path
        self._members = {m.name: m for m in archive.members if not m.name.endswith("/")}
        self._payloads: dict[str, bytes] = {}

    def __getitem__(self, name: str) -> bytes:
        payload = self._payloads.get(name)
        if payload is None:
            member = self._members[name]
            try:
                payload = self._payloads[name] = zipraw.read_payload(member)
            except zipraw.RawZipError as exc:
                raise VerificationError(self._path, f"member {name!r} {exc}") from None
        return payload

    def __iter__(self) -> Iterator[str]:
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)


class _RecordRows(Mapping[str, record.RecordEntry]):
    """The RECORD rows of a sealed wheel, parsed when first asked for."""

    def __init__(self, path: Path, record_path: str, contents: Mapping[str, bytes]) -> None:
        self._path = path
        self._record_path = record_path
        self._contents = contents
        self._rows: dict[str, record.RecordEntry] | None = None

    def _parsed(self) -> dict[str, record.RecordEntry]:
        if self._rows is None:
            try:
                self._rows = record.parse(self._contents[self._record_path].decode("utf-8"))
            except (KeyError, UnicodeDecodeError, record.RecordError) as exc:
                raise VerificationError(self._path, f"RECORD is unreadable ({exc})") from None
        return self._rows

    def __getitem__(self, name: str) -> record.RecordEntry:
        return self._parsed()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._parsed())

    def __len__(self) -> int:
        return len(self._parsed())


def rebuild(
    wheel: VerifiedWheel, changed: Mapping[str, bytes], added: Mapping[str, bytes]
) -> bytes:
    """The wheel with ``changed`` members replaced and ``added`` dist-info files.

    Unchanged members keep their stored bytes and order; changed ones keep
    their metadata. RECORD gets new rows for changed and added files, and
    signature files are dropped because the signature no longer holds.
    """
    record_path = wheel.record_path
    signatures = {f"{wheel.dist_info}/{n}" for n in record.SIGNATURE_NAMES}
    updated = {name: record.entry_for(name, payload) for name, payload in changed.items()}
    added_entries = [record.entry_for(name, payload) for name, payload in added.items()]
    new_record = record.rewrite(
        wheel.contents[record_path], record_path, updated, added_entries, signatures
    )
    members: list[zipraw.RawMember] = []
    for member in wheel.archive.members:
        if member.name in signatures:
            continue
        if member.name == record_path:
            members.extend(zipraw.new_member(member, n, p) for n, p in added.items())
            members.append(zipraw.new_member(member, record_path, new_record))
        elif member.name in changed:
            members.append(zipraw.new_member(member, member.name, changed[member.name]))
        else:
            members.append(member)
    return zipraw.write_archive(members, wheel.archive.comment)


def is_python_source(name: str) -> bool:
    return posixpath.splitext(name)[1] == ".py"

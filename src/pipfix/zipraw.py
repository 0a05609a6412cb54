"""Raw zip records: copy members as their stored bytes, write new ones deterministically.

``zipfile`` can only write a member by compressing it again, which changes its
bytes and costs time. A wheel rebuilt by pipfix keeps every member it does not
change byte for byte (local header, compressed data, data descriptor and
central directory entry), so this module reads and writes the records
themselves. Only what wheels need is supported: no ZIP64, no encryption,
no multi-disk archives; anything else is refused by the reader upstream.

The reader is strict about layout, so that the bytes it verifies are the
bytes every other zip reader sees and the bytes a rebuild copies: the central
directory ends where the end record starts, nothing follows the end record,
member records neither overlap each other nor the central directory, and a
local header names the same member as its central entry. ``read_payload``
decompresses with the declared size as a hard limit (a zip bomb costs at
most what it declares) and checks that the data ends exactly there.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple, Union

# What the reader reads: a file's bytes, or a map of the file (slices are bytes).
Buffer = Union[bytes, mmap.mmap]

_EOCD = struct.Struct("<4s4H2LH")
_EOCD_SIG = b"PK\x05\x06"
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_CENTRAL_SIG = b"PK\x01\x02"
_LOCAL = struct.Struct("<4s5H3L2H")
_LOCAL_SIG = b"PK\x03\x04"
_DESCRIPTOR_SIG = b"PK\x07\x08"
_FLAG_DATA_DESCRIPTOR = 0x08
_FLAG_UTF8 = 0x800
_ZIP64_EXTRA_ID = 0x0001
STORED = 0
DEFLATED = 8


class RawZipError(ValueError):
    """The archive's records are not laid out as a plain zip file."""


class RawMember(NamedTuple):
    """One member as it stands in the archive, with its raw record spans.

    A named tuple: a wheel has hundreds of members, read twice per run (input
    and output), and a tuple is made three times faster than a frozen dataclass.
    """

    name: str
    flags: int
    method: int
    dos_time: int
    dos_date: int
    crc: int
    compressed_size: int
    size: int
    create_version: int
    extract_version: int
    internal_attr: int
    external_attr: int
    extra: bytes
    comment: bytes
    central: bytes  # the central directory entry, as stored
    local: bytes  # local header + data (+ data descriptor), as stored

    @property
    def mode(self) -> int:
        return (self.external_attr >> 16) & 0xFFFF

    @property
    def offset(self) -> int:
        """Where the local header starts in the archive read (stored entries only)."""
        return int(struct.unpack_from("<L", self.central, 42)[0]) if self.central else 0

    @property
    def data_start(self) -> int:
        """Where the compressed data starts within ``local``."""
        name_len, extra_len = struct.unpack_from("<2H", self.local, 26)
        return int(_LOCAL.size + name_len + extra_len)

    @property
    def stored_data(self) -> bytes:
        """The member's data as stored (compressed or not), without headers."""
        start = self.data_start
        return self.local[start : start + self.compressed_size]


@dataclass(frozen=True)
class RawArchive:
    members: tuple[RawMember, ...]
    comment: bytes


def _find_eocd(data: Buffer) -> int:
    start = data.rfind(_EOCD_SIG, max(0, len(data) - 65557))
    if start < 0 or start + _EOCD.size > len(data):
        raise RawZipError("no end of central directory record")
    return start


def _local_span(data: Buffer, offset: int, central: tuple[int, ...], name: bytes) -> bytes:
    header = data[offset : offset + _LOCAL.size]
    if len(header) < _LOCAL.size:
        raise RawZipError("local header past end of file")
    sig, _ver, flags, _m, _t, _d, _crc, _cs, _us, name_len, extra_len = _LOCAL.unpack(header)
    if sig != _LOCAL_SIG:
        raise RawZipError("bad local header signature")
    if data[offset + _LOCAL.size : offset + _LOCAL.size + name_len] != name:
        raise RawZipError(f"local header of {name!r} names another member")
    compressed_size = central[8]
    end = offset + _LOCAL.size + name_len + extra_len + compressed_size
    if flags & _FLAG_DATA_DESCRIPTOR:
        end += 16 if data[end : end + 4] == _DESCRIPTOR_SIG else 12
    if end > len(data):
        raise RawZipError("member data past end of file")
    return data[offset:end]


def _decode_name(raw: bytes, flags: int) -> str:
    """The member name; bytes that are not UTF-8 stay as surrogate escapes, for the
    caller to refuse by name (``wheelfile`` does)."""
    if flags & _FLAG_UTF8:
        return raw.decode("utf-8", "surrogateescape")
    return raw.decode("cp437")


def read_archive(data: bytes) -> RawArchive:
    """Split ``data`` into raw member records, in central directory order."""
    directory = _Directory.read(data)
    members = []
    spans = []
    for entry in directory.entries(data):
        member = _member(data, *entry)
        offset = entry[1][16]
        spans.append((offset, offset + len(member.local), member.name))
        members.append(member)
    _check_layout(spans, directory.offset)
    return RawArchive(tuple(members), directory.comment)


def find_members(data: Buffer, endings: tuple[str, ...]) -> list[RawMember]:
    """The members whose names end with one of ``endings`` (ASCII), read as
    ``read_archive`` reads them, but neither the other members' records nor the
    layout are checked: a quick look at a few members of an archive nothing else
    is taken from yet."""
    raw_endings = tuple(ending.encode("ascii") for ending in endings)
    directory = _Directory.read(data)
    return [
        _member(data, *entry)
        for entry in directory.entries(data)
        if entry[2].endswith(raw_endings)  # ASCII: the same in UTF-8 and cp437 names
    ]


class _Directory(NamedTuple):
    """The central directory, as the end record places it."""

    offset: int
    size: int
    entry_count: int
    comment: bytes

    @classmethod
    def read(cls, data: Buffer) -> _Directory:
        eocd_at = _find_eocd(data)
        _sig, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, comment_len = _EOCD.unpack(
            data[eocd_at : eocd_at + _EOCD.size]
        )
        if disk or cd_disk or n_disk != n_total or n_total == 0xFFFF or cd_offset == 0xFFFFFFFF:
            raise RawZipError("multi-disk or ZIP64 archives are not supported")
        if eocd_at + _EOCD.size + comment_len != len(data):
            raise RawZipError("data after the end of central directory record")
        if cd_offset + cd_size != eocd_at:
            raise RawZipError("central directory does not end where its end record starts")
        comment = data[eocd_at + _EOCD.size : eocd_at + _EOCD.size + comment_len]
        return cls(cd_offset, cd_size, n_total, comment)

    def entries(self, data: Buffer) -> Iterator[tuple[int, tuple[int, ...], bytes, int]]:
        """(start, fixed fields, raw name, end) of each entry, checked to lie within."""
        pos = self.offset
        limit = self.offset + self.size
        for _ in range(self.entry_count):
            fixed = data[pos : pos + _CENTRAL.size]
            if len(fixed) < _CENTRAL.size or fixed[:4] != _CENTRAL_SIG:
                raise RawZipError("bad central directory entry")
            fields = _CENTRAL.unpack(fixed)
            name_end = pos + _CENTRAL.size + fields[10]
            end = name_end + fields[11] + fields[12]
            if end > limit:
                raise RawZipError("central directory entry past its end")
            yield pos, fields, data[pos + _CENTRAL.size : name_end], end
            pos = end
        if pos != limit:
            raise RawZipError("central directory holds more than its entries")


def _member(
    data: Buffer, pos: int, fields: tuple[int, ...], name_bytes: bytes, end: int
) -> RawMember:
    name_len, extra_len, comment_len = fields[10], fields[11], fields[12]
    flags = fields[3]
    return RawMember(
        name=_decode_name(name_bytes, flags),
        flags=flags,
        method=fields[4],
        dos_time=fields[5],
        dos_date=fields[6],
        crc=fields[7],
        compressed_size=fields[8],
        size=fields[9],
        create_version=fields[1],
        extract_version=fields[2],
        internal_attr=fields[14],
        external_attr=fields[15],
        extra=data[pos + _CENTRAL.size + name_len : pos + _CENTRAL.size + name_len + extra_len],
        comment=data[end - comment_len : end],
        central=data[pos:end],
        local=_local_span(data, fields[16], fields, name_bytes),
    )


def _check_layout(spans: list[tuple[int, int, str]], cd_offset: int) -> None:
    """Member records (start, end, name) must not overlap (one record read as several
    members is the trick of overlapping zip bombs) nor run into the central directory."""
    spans = sorted(spans)
    for (_start, end, name), (next_start, _end, next_name) in zip(spans, spans[1:]):
        if end > next_start:
            raise RawZipError(f"members {name!r} and {next_name!r} overlap")
    if spans and spans[-1][1] > cd_offset:
        raise RawZipError(f"member {spans[-1][2]!r} runs into the central directory")


def read_payload(member: RawMember) -> bytes:
    """The member's uncompressed bytes, checked against its declared size and CRC-32.

    Decompression stops one byte past the declared size, so memory and time are
    bounded by what the central directory declares, whatever the data says.
    """
    raw = member.stored_data
    if len(raw) != member.compressed_size:
        raise RawZipError("has less data than its compressed size")
    if member.method == STORED:
        payload = raw
    elif member.method == DEFLATED:
        decompressor = zlib.decompressobj(-15)
        try:
            payload = decompressor.decompress(raw, member.size + 1)
        except zlib.error as exc:
            raise RawZipError(f"has corrupt compressed data ({exc})") from None
        if len(payload) > member.size:
            raise RawZipError(f"expands beyond its declared size of {member.size} bytes")
        if not decompressor.eof:
            raise RawZipError("has truncated compressed data")
        if decompressor.unused_data:
            raise RawZipError("has data after its compressed stream")
    else:
        raise RawZipError(f"uses unsupported compression {member.method}")
    if len(payload) != member.size:
        raise RawZipError(f"is {len(payload)} bytes, not its declared {member.size}")
    if zlib.crc32(payload) != member.crc:
        raise RawZipError("fails its CRC-32 check")
    return payload


def _without_zip64(extra: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while pos + 4 <= len(extra):
        header_id, size = struct.unpack_from("<2H", extra, pos)
        if header_id != _ZIP64_EXTRA_ID:
            out += extra[pos : pos + 4 + size]
        pos += 4 + size
    return bytes(out)


def compress(payload: bytes, method: int) -> bytes:
    """Compress deterministically: same bytes in, same bytes out."""
    if method == STORED:
        return payload
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    return compressor.compress(payload) + compressor.flush()


def new_member(template: RawMember, name: str, payload: bytes) -> RawMember:
    """A member with ``payload``, keeping the template's metadata (time, mode, method)."""
    method = template.method if template.method in (STORED, DEFLATED) else DEFLATED
    data = compress(payload, method)
    flags = (template.flags & ~_FLAG_DATA_DESCRIPTOR & 0x806) | (
        _FLAG_UTF8 if not name.isascii() else 0
    )
    extra = _without_zip64(template.extra)
    encoded = name.encode("utf-8")
    crc = zlib.crc32(payload)
    local = (
        _LOCAL.pack(
            _LOCAL_SIG, 20, flags, method, template.dos_time, template.dos_date,
            crc, len(data), len(payload), len(encoded), 0,
        )
        + encoded
        + data
    )
    return RawMember(
        name=name, flags=flags, method=method, dos_time=template.dos_time,
        dos_date=template.dos_date, crc=crc, compressed_size=len(data), size=len(payload),
        create_version=template.create_version, extract_version=20,
        internal_attr=template.internal_attr, external_attr=template.external_attr,
        extra=extra, comment=b"", central=b"", local=local,
    )


def _central_entry(member: RawMember, offset: int) -> bytes:
    if member.central:
        # Unchanged member: its stored entry, with only the offset moved.
        return member.central[:42] + struct.pack("<L", offset) + member.central[46:]
    encoded = member.name.encode("utf-8")
    return (
        _CENTRAL.pack(
            _CENTRAL_SIG, member.create_version, member.extract_version, member.flags,
            member.method, member.dos_time, member.dos_date, member.crc,
            member.compressed_size, member.size, len(encoded), len(member.extra), 0,
            0, member.internal_attr, member.external_attr, offset,
        )
        + encoded
        + member.extra
    )


def write_archive(members: list[RawMember], comment: bytes = b"") -> bytes:
    """Lay out ``members`` in order, then the central directory."""
    if len(members) >= 0xFFFF:
        raise RawZipError("too many members for a plain zip file")
    parts: list[bytes] = []
    offsets = []
    size = 0
    for member in members:
        offsets.append(size)
        parts.append(member.local)
        size += len(member.local)
    cd_offset = size
    for member, offset in zip(members, offsets):
        parts.append(_central_entry(member, offset))
        size += len(parts[-1])
    cd_size = size - cd_offset
    if size >= 0xFFFFFFFF:
        raise RawZipError("archive too large for a plain zip file")
    parts.append(
        _EOCD.pack(_EOCD_SIG, 0, 0, len(members), len(members), cd_size, cd_offset, len(comment))
    )
    parts.append(comment)
    return b"".join(parts)

"""A corpus of hostile and malformed wheels, built by code from a real pinned wheel.

Every case is the pinned ``pip-23.2.1-py3-none-any.whl`` with one thing wrong
(or a wheelmaker wheel, or raw bytes), the file name it is placed under, the
exact reason pipfix must give and the exit code it must end with:

* exit 2 (``EXIT_ERROR``): the wheel is bad input -- it does not verify. The
  one-line error is ``pipfix: error: <wheel path>: <reason>`` on stderr.
* exit 3 (``EXIT_UNPATCHABLE``): the wheel verifies, but a module pipfix would
  have to patch cannot be parsed (a ``.py`` file that is not valid Python in a
  glibc-detection module) or holds a shape the codemods cannot guard. The
  wheel is reported on stdout as ``not written [<member>:<line>: <reason>]``;
  its bytes are what upstream shipped, so it is not "bad input", but pipfix
  cannot vouch for a patch it could not make.

Members are edited at the level of raw zip records (``pipfix.zipraw``): the
untouched members keep their exact bytes, so each case has exactly one defect.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from pipfix import zipraw

from conftest import pinned_wheel_paths

BASE = "pip-23.2.1-py3-none-any.whl"
DIST_INFO = "pip-23.2.1.dist-info"
RECORD = f"{DIST_INFO}/RECORD"
INIT = "pip/__init__.py"
GLIBC = "pip/_internal/utils/glibc.py"

_LOCAL = struct.Struct("<4s5H3L2H")
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_EOCD = struct.Struct("<4s4H2LH")
_UNIX = 3 << 8  # "made by" a Unix host: the mode bits are in external_attr's high word
FILE_MODE = (stat.S_IFREG | 0o644) << 16


@dataclass(frozen=True)
class Case:
    kind: str
    filename: str
    data: bytes
    reason: str  # exact text after "<wheel path>: " (exit 2) or inside "[...]" (exit 3)
    exit_code: int = 2


@functools.cache
def base_bytes() -> bytes:
    return pinned_wheel_paths()[BASE].read_bytes()


def _members() -> list[zipraw.RawMember]:
    return list(zipraw.read_archive(base_bytes()).members)


def _member(name: str) -> zipraw.RawMember:
    return next(m for m in _members() if m.name == name)


def _payload(name: str) -> bytes:
    return zipraw.read_payload(_member(name))


def _record_lines() -> list[str]:
    return _payload(RECORD).decode("utf-8").splitlines(keepends=True)


def _record_row_number(path: str) -> int:
    return next(n for n, line in enumerate(_record_lines(), 1) if line.startswith(path + ","))


def record_row(name: str, payload: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(payload).digest()).rstrip(b"=")
    return f"{name},sha256={digest.decode()},{len(payload)}\n"


def _edit_record(edit: Callable[[list[str]], list[str]]) -> zipraw.RawMember:
    record_member = _member(RECORD)
    text = "".join(edit(_record_lines()))
    return zipraw.new_member(record_member, RECORD, text.encode("utf-8", "surrogateescape"))


def _with_rows(*rows: str) -> Callable[[list[str]], list[str]]:
    """RECORD with ``rows`` added before its own row."""
    return lambda lines: lines[:-1] + list(rows) + lines[-1:]


def _replace_row(path: str, row: str) -> Callable[[list[str]], list[str]]:
    return lambda lines: [row if line.startswith(path + ",") else line for line in lines]


def _rebuilt(
    *,
    replace: dict[str, zipraw.RawMember] | None = None,
    drop: tuple[str, ...] = (),
    add: tuple[zipraw.RawMember, ...] = (),
    record: Callable[[list[str]], list[str]] | None = None,
) -> bytes:
    """The base wheel with members replaced, dropped or added (before RECORD)."""
    replace = dict(replace or {})
    if record is not None:
        replace[RECORD] = _edit_record(record)
    members: list[zipraw.RawMember] = []
    for member in _members():
        if member.name in drop:
            continue
        if member.name == RECORD:
            members.extend(add)
        members.append(replace.get(member.name, member))
    return zipraw.write_archive(members)


def _new(name: str, payload: bytes, template: str = INIT) -> zipraw.RawMember:
    return zipraw.new_member(_member(template), name, payload)


def raw_member(
    name: bytes,
    data: bytes,
    *,
    size: int,
    crc: int,
    method: int = zipraw.DEFLATED,
    flags: int = 0,
    external_attr: int = FILE_MODE,
) -> zipraw.RawMember:
    """A member record written field by field, whatever the fields say."""
    local = (
        _LOCAL.pack(b"PK\x03\x04", 20, flags, method, 0, 0x21, crc, len(data), size, len(name), 0)
        + name
        + data
    )
    central = (
        _CENTRAL.pack(
            b"PK\x01\x02",
            _UNIX | 20,
            20,
            flags,
            method,
            0,
            0x21,
            crc,
            len(data),
            size,
            len(name),
            0,
            0,
            0,
            0,
            external_attr,
            0,
        )
        + name
    )
    decoded = name.decode("utf-8", "surrogateescape") if flags & 0x800 else name.decode("cp437")
    return zipraw.RawMember(
        name=decoded,
        flags=flags,
        method=method,
        dos_time=0,
        dos_date=0x21,
        crc=crc,
        compressed_size=len(data),
        size=size,
        create_version=_UNIX | 20,
        extract_version=20,
        internal_attr=0,
        external_attr=external_attr,
        extra=b"",
        comment=b"",
        central=central,
        local=local,
    )


def deflate(payload: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(payload) + compressor.flush()


@functools.cache
def zeros_deflated(size: int) -> tuple[bytes, int]:
    """``size`` zero bytes, raw-deflated in chunks (never all in memory), and their CRC."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(2**20)
    out, crc, left = [], 0, size
    while left:
        piece = chunk[: min(left, len(chunk))]
        out.append(compressor.compress(piece))
        crc = zlib.crc32(piece, crc)
        left -= len(piece)
    out.append(compressor.flush())
    return b"".join(out), crc


def _with_fields(name: str, **fields: int) -> zipraw.RawMember:
    """A member with header fields (flags, method, crc) changed in both its records."""
    member = _member(name)
    local, central = bytearray(member.local), bytearray(member.central)
    offsets = {"flags": (6, 8), "method": (8, 10), "crc": (14, 16)}  # local, central
    formats = {"flags": "<H", "method": "<H", "crc": "<L"}
    for field, value in fields.items():
        local_at, central_at = offsets[field]
        struct.pack_into(formats[field], local, local_at, value)
        struct.pack_into(formats[field], central, central_at, value)
    return member._replace(local=bytes(local), central=bytes(central), **fields)


def bomb_wheel(size: int) -> tuple[bytes, str]:
    """The base wheel plus ``size`` zero bytes, honestly declared and listed in RECORD."""
    data, crc = zeros_deflated(size)
    bomb = raw_member(b"pip/bomb.bin", data, size=size, crc=crc)
    digest = hashlib.sha256()
    chunk = bytes(2**20)
    for start in range(0, size, len(chunk)):
        digest.update(chunk[: min(len(chunk), size - start)])
    encoded = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    wheel = _rebuilt(add=(bomb,), record=_with_rows(f"pip/bomb.bin,sha256={encoded},{size}\n"))
    return wheel, f"member 'pip/bomb.bin' would expand {size // len(data)}:1 to {size} bytes"


def _overlapping() -> bytes:
    """Member A's stored data holds a whole local record of member B; B's central entry
    points into it. Both records are well formed: only their spans overlap."""
    payload_b = b"print('b')\n"
    record_b = (
        _LOCAL.pack(
            b"PK\x03\x04",
            20,
            0,
            0,
            0,
            0x21,
            zlib.crc32(payload_b),
            len(payload_b),
            len(payload_b),
            len(b"pip/b.py"),
            0,
        )
        + b"pip/b.py"
        + payload_b
    )
    payload_a = b"#" + record_b
    a = raw_member(b"pip/a.py", payload_a, size=len(payload_a), crc=zlib.crc32(payload_a), method=0)
    body = bytearray()
    offsets = {}
    members = _members()
    record_index = next(i for i, m in enumerate(members) if m.name == RECORD)
    laid_out = [*members[:record_index], a, *members[record_index:]]
    for member in laid_out:
        offsets[member.name] = len(body)
        body += member.local
    b_offset = offsets["pip/a.py"] + _LOCAL.size + len(b"pip/a.py") + 1
    central_b = (
        _CENTRAL.pack(
            b"PK\x01\x02",
            _UNIX | 20,
            20,
            0,
            0,
            0,
            0x21,
            zlib.crc32(payload_b),
            len(payload_b),
            len(payload_b),
            len(b"pip/b.py"),
            0,
            0,
            0,
            0,
            FILE_MODE,
            b_offset,
        )
        + b"pip/b.py"
    )
    cd_offset = len(body)
    count = 0
    for member in laid_out:
        body += member.central[:42] + struct.pack("<L", offsets[member.name]) + member.central[46:]
        count += 1
        if member.name == "pip/a.py":
            body += central_b
            count += 1
    body += _EOCD.pack(b"PK\x05\x06", 0, 0, count, count, len(body) - cd_offset, cd_offset, 0)
    return bytes(body)


def _filename_reason(name: str) -> str:
    try:
        parse_wheel_filename(name)
    except InvalidWheelFilename as exc:
        return f"not a wheel file name ({exc})"
    raise AssertionError(f"{name} is a valid wheel file name")


def cases() -> Iterator[Case]:
    """Every case, built afresh (a few MB each; the caller keeps what it needs)."""
    base = base_bytes()
    init_row = _record_row_number(INIT)
    init = _payload(INIT)
    yield Case(
        "truncated",
        BASE,
        base[: len(base) // 2],
        "not a valid zip archive (no end of central directory record)",
    )
    yield Case(
        "truncated-end-record",
        BASE,
        base[:-10],
        "not a valid zip archive (no end of central directory record)",
    )
    yield Case(
        "empty-file", BASE, b"", "not a valid zip archive (no end of central directory record)"
    )
    yield Case(
        "trailing-data",
        BASE,
        base + b"\0junk",
        "not a valid zip archive (data after the end of central directory record)",
    )
    yield Case(
        "prepended-data",
        BASE,
        b"#!/bin/sh\n" + base,
        "not a valid zip archive (central directory does not end where its end record starts)",
    )
    yield Case(
        "bad-crc",
        BASE,
        _rebuilt(replace={INIT: _with_fields(INIT, crc=0x12345678)}),
        f"member {INIT!r} fails its CRC-32 check",
    )
    corrupt = raw_member(INIT.encode(), b"\xff" * 64, size=len(init), crc=zlib.crc32(init))
    yield Case(
        "corrupt-deflate-stream",
        BASE,
        _rebuilt(replace={INIT: corrupt}),
        f"member {INIT!r} has corrupt compressed data "
        "(Error -3 while decompressing data: invalid block type)",
    )
    yield Case(
        "member-does-not-match-record",
        BASE,
        _rebuilt(replace={INIT: _new(INIT, b"__version__ = 'evil'\n")}),
        f"{INIT} does not match its RECORD hash or size",
    )
    yield Case(
        "record-row-does-not-match-member",  # the member as shipped, its row edited
        BASE,
        _rebuilt(record=_replace_row(INIT, record_row(INIT, b"__version__ = 'evil'\n"))),
        f"{INIT} does not match its RECORD hash or size",
    )
    yield Case(
        "member-missing-from-record",
        BASE,
        _rebuilt(add=(_new("pip/extra.py", b"x = 1\n"),)),
        "pip/extra.py is not listed in RECORD",
    )
    yield Case(
        "record-lists-missing-file",
        BASE,
        _rebuilt(record=_with_rows(record_row("pip/ghost.py", b"boo\n"))),
        "RECORD lists pip/ghost.py, which is not in the wheel",
    )
    yield Case("no-record", BASE, _rebuilt(drop=(RECORD,)), f"{RECORD} is missing")
    for algorithm in ("md5", "sha1"):
        digest = base64.urlsafe_b64encode(hashlib.new(algorithm, init).digest()).rstrip(b"=")
        row = f"{INIT},{algorithm}={digest.decode()},{len(init)}\n"
        yield Case(
            f"record-{algorithm}",
            BASE,
            _rebuilt(record=_replace_row(INIT, row)),
            f"RECORD row {init_row} uses {algorithm} for {INIT}; "
            "only sha256 or stronger is accepted",
        )
    yield Case(
        "record-row-two-fields",
        BASE,
        _rebuilt(record=_replace_row(INIT, f"{INIT},{len(init)}\n")),
        f"RECORD row {init_row} has 2 fields, expected 3",
    )
    yield Case(
        "record-row-without-hash",
        BASE,
        _rebuilt(record=_replace_row(INIT, f"{INIT},,\n")),
        f"RECORD has no hash or size for {INIT}",
    )
    yield Case(
        "record-empty-row",
        BASE,
        _rebuilt(record=_with_rows("\n")),
        f"RECORD row {len(_record_lines())} is empty",
    )
    yield Case(
        "record-digest-with-padding",
        BASE,
        _rebuilt(
            record=_replace_row(
                INIT, record_row(INIT, init).replace(",", "=,", 2).replace("=,", ",", 1)
            )
        ),
        f"RECORD row {init_row} has a malformed digest for {INIT}",
    )
    yield Case(
        "record-size-not-a-number",
        BASE,
        _rebuilt(
            record=_replace_row(
                INIT, record_row(INIT, init).replace(f",{len(init)}\n", f",+{len(init)}\n")
            )
        ),
        f"RECORD row {init_row} has a malformed size for {INIT}",
    )
    yield Case(
        "record-field-over-csv-limit",
        BASE,
        _rebuilt(record=_with_rows("pip/" + "x" * 200_000 + "/,,\n")),
        "RECORD is not valid CSV (field larger than field limit (131072))",
    )
    yield Case(
        "record-row-twice",
        BASE,
        _rebuilt(record=_with_rows(record_row(INIT, init))),
        f"RECORD lists {INIT} twice",
    )
    yield Case(
        "record-not-utf8",
        BASE,
        _rebuilt(record=lambda lines: [*lines[:-1], "# caf\udce9\n", lines[-1]]),
        "RECORD is not UTF-8",
    )
    yield Case(
        "record-path-with-line-break",
        BASE,
        _rebuilt(record=_with_rows('"pip/a\nb/",,\n')),
        f"RECORD row {len(_record_lines())} has a control character in its path",
    )
    for kind, name, why in (
        ("absolute-path", "/etc/evil.py", "is an absolute path"),
        ("drive-letter-path", "C:/evil.py", "is an absolute path"),
        ("dotdot-traversal", "../../evil.py", "escapes the wheel with '..'"),
        ("backslash-path", "pip\\..\\..\\evil.py", "contains a backslash"),
        ("dot-segment", "pip/./__init__.py", "is not a normalized path"),
        ("empty-segment", "pip//__init__.py", "is not a normalized path"),
        ("control-character", "pip/evil\r.py", "contains a control character"),
        ("nul-byte", "pip/evil.py\0.txt", "contains a NUL byte"),
    ):
        payload = b"print('owned')\n"
        yield Case(
            kind,
            BASE,
            _rebuilt(add=(_new(name, payload),), record=_with_rows(record_row(name, payload))),
            f"member {name!r} {why}",
        )
    yield Case(
        "duplicate-member", BASE, _rebuilt(add=(_member(INIT),)), f"member {INIT!r} appears twice"
    )
    link = raw_member(
        b"pip/evil.py",
        b"/etc/passwd",
        size=11,
        crc=zlib.crc32(b"/etc/passwd"),
        method=zipraw.STORED,
        external_attr=(stat.S_IFLNK | 0o777) << 16,
    )
    yield Case(
        "symlink-member",
        BASE,
        _rebuilt(add=(link,), record=_with_rows(record_row("pip/evil.py", b"/etc/passwd"))),
        "member 'pip/evil.py' is a symbolic link",
    )
    yield Case(
        "encrypted-member",
        BASE,
        _rebuilt(replace={INIT: _with_fields(INIT, flags=0x1)}),
        f"member {INIT!r} is encrypted",
    )
    yield Case(
        "bzip2-member",
        BASE,
        _rebuilt(replace={INIT: _with_fields(INIT, method=12)}),
        f"member {INIT!r} uses unsupported compression 12",
    )
    legacy = raw_member(b"pip/caf\x82.py", deflate(b"x = 1\n"), size=6, crc=zlib.crc32(b"x = 1\n"))
    yield Case(
        "name-not-utf8-legacy",
        BASE,
        _rebuilt(add=(legacy,)),
        "member 'pip/caf\u00e9.py' is not UTF-8 encoded",
    )
    flagged = raw_member(
        b"pip/\xff.py", deflate(b"x = 1\n"), size=6, crc=zlib.crc32(b"x = 1\n"), flags=0x800
    )
    yield Case(
        "name-not-utf8-flagged",
        BASE,
        _rebuilt(add=(flagged,)),
        "member 'pip/\\udcff.py' is not UTF-8 encoded",
    )
    wheel, why = bomb_wheel(64 * 2**20)
    yield Case("zip-bomb-honest", BASE, wheel, why)
    tiny = deflate(b"\0" * 1024)
    declared = raw_member(b"pip/bomb.bin", tiny, size=3 * 2**30, crc=0)
    yield Case(
        "zip-bomb-declared",
        BASE,
        _rebuilt(add=(declared,)),
        f"member 'pip/bomb.bin' would expand {3 * 2**30 // len(tiny)}:1 to {3 * 2**30} bytes",
    )
    stream, _ = zeros_deflated(256 * 2**20)
    lying = raw_member(b"pip/bomb.bin", stream, size=1000, crc=zlib.crc32(bytes(1000)))
    yield Case(
        "zip-bomb-lying-size",
        BASE,
        _rebuilt(add=(lying,), record=_with_rows(record_row("pip/bomb.bin", bytes(1000)))),
        "member 'pip/bomb.bin' expands beyond its declared size of 1000 bytes",
    )
    yield Case(
        "overlapping-members",
        BASE,
        _overlapping(),
        "not a valid zip archive (members 'pip/a.py' and 'pip/b.py' overlap)",
    )
    members = zipraw.read_archive(base).members
    zip64 = bytearray(base)
    struct.pack_into("<2H", zip64, len(base) - 22 + 8, 0xFFFF, 0xFFFF)
    yield Case(
        "zip64-end-record",
        BASE,
        bytes(zip64),
        "not a valid zip archive (multi-disk or ZIP64 archives are not supported)",
    )
    assert len(members) > 100
    for name in ("pip-23.2.1.whl", "pip-23.2.1x!-py3-none-any.whl", "pip$-23.2.1-py3-none-any.whl"):
        yield Case(f"bad-file-name:{name}", name, base, _filename_reason(name))
    yield Case(
        "dist-info-does-not-match-file-name",
        "pip-23.2.2-py3-none-any.whl",
        base,
        f"{DIST_INFO} does not match the file name",
    )
    other = _new("other-1.0.dist-info/METADATA", b"Name: other\n")
    yield Case(
        "two-dist-info-directories",
        BASE,
        _rebuilt(add=(other,), record=_with_rows(record_row(other.name, b"Name: other\n"))),
        "expected one .dist-info directory, found 2",
    )
    provenance = f"{DIST_INFO}/pipfix.json"
    try:
        json.loads("{not json")
    except json.JSONDecodeError as exc:
        not_json = f"malformed provenance file: {exc}"
    for kind, text, why in (
        ("provenance-not-json", b"{not json", not_json),
        ("provenance-not-pipfix", b'{"tool": "other"}\n', "not written by pipfix"),
        (
            "provenance-not-an-object",
            b'["tool", "pipfix"]\n',
            "malformed provenance file: not a JSON object",
        ),
    ):
        yield Case(
            kind,
            BASE,
            _rebuilt(
                add=(_new(provenance, text),), record=_with_rows(record_row(provenance, text))
            ),
            why,
        )
    # Exit 3: the wheel verifies, but its glibc-detection module is not valid Python, so
    # it cannot be patched. The reason is CPython's own (compile()), at the line it names.
    glibc = _payload(GLIBC)
    for kind, source in (
        ("glibc-module-not-python", glibc.replace(b"import os\n", b"import os\n  oops = (\n", 1)),
        ("glibc-module-not-utf8", glibc.replace(b"import os\n", b'import os\nx = "\xb3"\n', 1)),
        ("glibc-module-not-utf8-first-line", b'x = "\xb3"\n' + glibc),
        (
            "glibc-module-misplaced-future-import",
            b"import ctypes\nfrom __future__ import annotations\n" + glibc,
        ),
    ):
        line, message = compile_error(source)
        yield Case(
            kind,
            BASE,
            _rebuilt(
                replace={GLIBC: _new(GLIBC, source, GLIBC)},
                record=_replace_row(GLIBC, record_row(GLIBC, source)),
            ),
            f"{GLIBC}:{line}: cannot parse: {message}",
            exit_code=3,
        )


def compile_error(source: bytes) -> tuple[int, str]:
    """Where and why CPython refuses ``source``."""
    try:
        compile(source, "module.py", "exec", dont_inherit=True)
    except SyntaxError as exc:
        return exc.lineno or 0, exc.msg
    raise AssertionError("compiles")


def with_member_flipped(path: Path, member: str) -> None:
    """Flip one byte of ``member``'s stored data in the wheel at ``path``: its
    headers stay as they were, its CRC no longer matches."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    header = info.header_offset
    lengths = int.from_bytes(data[header + 26 : header + 30], "little")  # name, extra field
    start = header + 30 + (lengths & 0xFFFF) + (lengths >> 16)
    data[start + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def all_cases() -> list[Case]:
    return list(cases())

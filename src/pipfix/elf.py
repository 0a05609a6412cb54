"""Read the parts of ELF files that decide dynamic loading, and drop one DT_NEEDED entry.

Reading covers what the loader and pip look at: the header (class, byte order,
machine), program headers (``PT_INTERP``: which loader, if any;
``PT_DYNAMIC``), the dynamic array (``DT_NEEDED``, ``DT_SONAME``, ``DT_RPATH``,
``DT_RUNPATH``) and the version needs in ``.gnu.version_r`` (``GLIBC_2.x``).
Everything is located through program headers and the addresses in the
dynamic array, as the loader does, so files whose section headers were
stripped can still be read. Every offset is bounds-checked: malformed input
raises :class:`ElfError`, never ``struct.error`` or ``IndexError``.

The rewrite, :func:`remove_needed`, does what ``patchelf --remove-needed``
does: the matching ``DT_NEEDED`` entries are dropped from the dynamic array,
the entries after them shift down, and the freed slots at the end of the used
part are filled with ``DT_NULL``. This is safe because:

* the loader reads the dynamic array only up to its first ``DT_NULL``, so
  trailing ``DT_NULL`` slots are invisible; the array keeps its size and
  address, so no segment, section, or offset in the file moves;
* the dynamic array holds tags and values (addresses, sizes, string offsets)
  that do not depend on where in the array they sit, so shifting the
  surviving entries keeps every one of them valid; the one exception,
  MIPS's ``DT_MIPS_RLD_MAP_REL`` (relative to its own slot), makes the
  rewrite refuse when that entry would move;
* the string table is left untouched: the library name stays in ``.dynstr``
  unreferenced, exactly as patchelf leaves it, so every other string offset
  (symbol names, version names, RPATH) stays valid;
* symbol lookup does not depend on the dropped entry: an extension module's
  ``Py*`` references bind to whatever object in the global scope defines
  them, and the python executable exports those symbols itself when libpython
  is linked into it (CPython links it with ``-Xlinker -export-dynamic``), or
  through the already loaded ``libpython3.X.so`` when it is not. This is how
  every manylinux/musllinux wheel works: their policy forbids linking
  extension modules against libpython at all.

The rewrite refuses (``ElfError``) when the library is also named in the
version needs (removing it would leave a dangling ``.gnu.version_r`` entry the
loader checks), and when the section headers are missing or disagree with
``PT_DYNAMIC``: a file pipfix does not fully understand is never written.
"""

from __future__ import annotations

import mmap
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

Buffer = Union[bytes, bytearray, mmap.mmap]

ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
ET_EXEC, ET_DYN = 2, 3
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
SHT_DYNAMIC = 6
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ = 0, 1, 5, 10
DT_SONAME, DT_RPATH, DT_RUNPATH = 14, 15, 29
DT_VERNEED, DT_VERNEEDNUM = 0x6FFFFFFE, 0x6FFFFFFF
DT_MIPS_RLD_MAP_REL = 0x70000035  # relative to the address of its own entry
PN_XNUM = 0xFFFF

# e_machine -> name; "arch" below maps to the names pip's tags use.
MACHINES = {
    3: "i386", 8: "mips", 20: "ppc", 21: "ppc64", 22: "s390", 40: "arm",
    62: "x86-64", 183: "aarch64", 243: "riscv", 258: "loongarch",
}
_GLIBC_VERSION = re.compile(r"^GLIBC_(\d+)\.(\d+)(?:\.\d+)?$")


class ElfError(ValueError):
    """The file is not an ELF file pipfix can read, or cannot be rewritten safely."""


@dataclass(frozen=True)
class Segment:
    type: int
    offset: int
    vaddr: int
    filesz: int
    memsz: int


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    offset: int
    size: int
    entsize: int


@dataclass(frozen=True)
class Dynamic:
    """The dynamic array: its place in the file and what it says."""

    offset: int
    slots: int  # capacity of the array, in entries
    entries: tuple[tuple[int, int], ...]  # (tag, value) up to, not including, the first DT_NULL
    needed: tuple[str, ...]
    soname: str | None
    rpath: tuple[str, ...] | None  # None: no DT_RPATH entry at all
    runpath: tuple[str, ...] | None
    version_needs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class ElfFile:
    bits: int  # 32 or 64
    little_endian: bool
    type: int
    machine: int
    segments: tuple[Segment, ...]
    sections: tuple[Section, ...]
    section_problem: str | None  # why ``sections`` is empty or unusable, if it is
    interpreter: str | None
    dynamic: Dynamic | None

    @property
    def elf_class(self) -> str:
        return f"ELF{self.bits}"

    @property
    def machine_name(self) -> str:
        return MACHINES.get(self.machine, f"machine {self.machine}")

    @property
    def arch(self) -> str:
        """The architecture as pip's platform tags spell it (``x86_64``, ``aarch64``)."""
        name = MACHINES.get(self.machine)
        if name == "x86-64":
            return "x86_64" if self.bits == 64 else "x32"
        if name == "i386":
            return "i686"
        if name == "arm":
            return "armv7l"
        if name == "ppc64":
            return "ppc64le" if self.little_endian else "ppc64"
        if name == "mips":
            return "mips64" if self.bits == 64 else "mips"
        if name == "s390":
            return "s390x" if self.bits == 64 else "s390"
        if name in ("riscv", "loongarch"):
            return f"{name}{self.bits}"
        return name or f"machine{self.machine}"

    @property
    def needed(self) -> tuple[str, ...]:
        return self.dynamic.needed if self.dynamic else ()

    @property
    def rpath(self) -> tuple[str, ...] | None:
        return self.dynamic.rpath if self.dynamic else None

    @property
    def runpath(self) -> tuple[str, ...] | None:
        return self.dynamic.runpath if self.dynamic else None

    def same_abi(self, other: ElfFile) -> bool:
        """Could a loader put both files into one process?"""
        return (self.bits, self.little_endian, self.machine) == (
            other.bits, other.little_endian, other.machine
        )

    def glibc_version_needed(self) -> tuple[int, int] | None:
        """The highest ``GLIBC_2.x`` symbol version this file requires, if any."""
        best: tuple[int, int] | None = None
        versions = self.dynamic.version_needs if self.dynamic else {}
        for names in versions.values():
            for name in names:
                match = _GLIBC_VERSION.match(name)
                if match:
                    found = (int(match[1]), int(match[2]))
                    best = found if best is None or found > best else best
        return best


class _Reader:
    """Bounds-checked, endian- and class-aware unpacking over a buffer."""

    def __init__(self, data: Buffer, bits: int, little_endian: bool) -> None:
        self.data = data
        self.bits = bits
        self.prefix = "<" if little_endian else ">"

    def unpack(self, fmt: str, offset: int, what: str) -> tuple[int, ...]:
        full = self.prefix + fmt
        size = struct.calcsize(full)
        if offset < 0 or offset + size > len(self.data):
            raise ElfError(f"truncated: {what} at offset {offset} lies past the end of the file")
        return struct.unpack_from(full, self.data, offset)

    def cstring(self, start: int, limit: int, what: str) -> str:
        if start < 0 or start >= limit or limit > len(self.data):
            raise ElfError(f"{what}: string offset {start} outside its table")
        end = self.data.find(b"\0", start, limit)
        if end < 0:
            raise ElfError(f"{what}: unterminated string")
        return bytes(self.data[start:end]).decode("utf-8", "surrogateescape")


def _formats(bits: int) -> tuple[str, str, str, str]:
    """(header after e_ident, program header, section header, dynamic entry)."""
    if bits == 64:
        return "HHIQQQIHHHHHH", "IIQQQQQQ", "IIQQQQIIQQ", "qQ"
    return "HHIIIIIHHHHHH", "IIIIIIII", "IIIIIIIIII", "iI"


def parse(data: Buffer) -> ElfFile:
    """Parse an ELF file held in memory (or mmapped)."""
    if len(data) < 16 or bytes(data[:4]) != ELF_MAGIC:
        raise ElfError("not an ELF file")
    elf_class, encoding = data[4], data[5]
    if elf_class not in (ELFCLASS32, ELFCLASS64):
        raise ElfError(f"unknown ELF class {elf_class}")
    if encoding not in (ELFDATA2LSB, ELFDATA2MSB):
        raise ElfError(f"unknown ELF data encoding {encoding}")
    bits = 64 if elf_class == ELFCLASS64 else 32
    reader = _Reader(data, bits, encoding == ELFDATA2LSB)
    header_fmt, ph_fmt, sh_fmt, _ = _formats(bits)
    (e_type, e_machine, _version, _entry, phoff, shoff, _flags, ehsize,
     phentsize, phnum, shentsize, shnum, shstrndx) = reader.unpack(header_fmt, 16, "ELF header")
    if ehsize != 16 + struct.calcsize("<" + header_fmt):
        raise ElfError(f"ELF header size {ehsize} does not match ELF{bits} (wrong class?)")
    segments = _segments(reader, ph_fmt, phoff, phentsize, phnum)
    sections, section_problem = _sections(reader, sh_fmt, shoff, shentsize, shnum, shstrndx)
    interpreter = None
    for segment in segments:
        if segment.type == PT_INTERP:
            interpreter = reader.cstring(
                segment.offset, segment.offset + segment.filesz, "PT_INTERP"
            )
    return ElfFile(
        bits=bits,
        little_endian=encoding == ELFDATA2LSB,
        type=e_type,
        machine=e_machine,
        segments=segments,
        sections=sections,
        section_problem=section_problem,
        interpreter=interpreter,
        dynamic=_dynamic(reader, segments),
    )


def read(path: Path) -> ElfFile:
    """Parse the ELF file at ``path`` without reading all of it into memory."""
    with path.open("rb") as handle:
        try:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise ElfError("not an ELF file (empty)") from None
        with mapped:
            return parse(mapped)


def _segments(
    reader: _Reader, fmt: str, phoff: int, phentsize: int, phnum: int
) -> tuple[Segment, ...]:
    if phnum == PN_XNUM:
        raise ElfError("extended program header numbering (PN_XNUM) is not supported")
    if phnum and phentsize != struct.calcsize("<" + fmt):
        raise ElfError(f"program header size {phentsize} does not match ELF{reader.bits}")
    segments = []
    for index in range(phnum):
        fields = reader.unpack(fmt, phoff + index * phentsize, f"program header {index}")
        if reader.bits == 64:
            p_type, _flags, offset, vaddr, _paddr, filesz, memsz, _align = fields
        else:
            p_type, offset, vaddr, _paddr, filesz, memsz, _flags, _align = fields
        if p_type in (PT_LOAD, PT_DYNAMIC, PT_INTERP) and offset + filesz > len(reader.data):
            raise ElfError(f"truncated: segment {index} extends past the end of the file")
        segments.append(Segment(p_type, offset, vaddr, filesz, memsz))
    return tuple(segments)


def _sections(
    reader: _Reader, fmt: str, shoff: int, shentsize: int, shnum: int, shstrndx: int
) -> tuple[tuple[Section, ...], str | None]:
    """Section headers, or () and the reason they cannot be used (never fatal)."""
    if shoff == 0 or shnum == 0:
        return (), "no section headers"
    if shentsize != struct.calcsize("<" + fmt):
        return (), f"section header size {shentsize} does not match ELF{reader.bits}"
    try:
        raw = [
            reader.unpack(fmt, shoff + i * shentsize, f"section header {i}") for i in range(shnum)
        ]
        names_offset = names_end = 0
        if shstrndx < shnum:
            names = raw[shstrndx]
            names_offset, names_end = names[4], names[4] + names[5]
        sections = []
        for sh_name, sh_type, _flags, _addr, offset, size, _link, _info, _align, entsize in raw:
            name = ""
            if names_end:
                name = reader.cstring(names_offset + sh_name, names_end, "section name")
            sections.append(Section(name, sh_type, offset, size, entsize))
    except ElfError as exc:
        return (), str(exc)
    return tuple(sections), None


def _file_offset(segments: tuple[Segment, ...], address: int, what: str) -> tuple[int, int]:
    """The file offset of a virtual address, and the end of its PT_LOAD segment's file data."""
    for segment in segments:
        if segment.type == PT_LOAD and segment.vaddr <= address < segment.vaddr + segment.filesz:
            start = segment.offset + (address - segment.vaddr)
            return start, segment.offset + segment.filesz
    raise ElfError(f"{what} address {address:#x} is not in any loaded segment")


def _dynamic(reader: _Reader, segments: tuple[Segment, ...]) -> Dynamic | None:
    found = [s for s in segments if s.type == PT_DYNAMIC]
    if not found:
        return None
    if len(found) > 1:
        raise ElfError("more than one PT_DYNAMIC segment")
    segment = found[0]
    dyn_fmt = _formats(reader.bits)[3]
    entry_size = struct.calcsize("<" + dyn_fmt)
    slots = segment.filesz // entry_size
    entries: list[tuple[int, int]] = []
    terminated = False
    for index in range(slots):
        tag, value = reader.unpack(dyn_fmt, segment.offset + index * entry_size, "dynamic entry")
        if tag == DT_NULL:
            terminated = True
            break
        entries.append((tag, value))
    if not terminated:
        raise ElfError("dynamic array has no DT_NULL terminator")
    values: dict[int, int] = {}
    for tag, value in entries:
        values.setdefault(tag, value)
    if DT_STRTAB not in values:
        raise ElfError("dynamic array has no string table (DT_STRTAB)")
    strtab, segment_end = _file_offset(segments, values[DT_STRTAB], "DT_STRTAB")
    limit = min(strtab + values.get(DT_STRSZ, segment_end - strtab), segment_end)

    def string(offset: int, what: str) -> str:
        return reader.cstring(strtab + offset, limit, what)

    def paths(tag: int, what: str) -> tuple[str, ...] | None:
        if tag not in values:
            return None
        return tuple(p for p in string(values[tag], what).split(":") if p)

    return Dynamic(
        offset=segment.offset,
        slots=slots,
        entries=tuple(entries),
        needed=tuple(string(v, "DT_NEEDED") for t, v in entries if t == DT_NEEDED),
        soname=string(values[DT_SONAME], "DT_SONAME") if DT_SONAME in values else None,
        rpath=paths(DT_RPATH, "DT_RPATH"),
        runpath=paths(DT_RUNPATH, "DT_RUNPATH"),
        version_needs=_version_needs(reader, segments, values, string),
    )


def _version_needs(
    reader: _Reader,
    segments: tuple[Segment, ...],
    values: Mapping[int, int],
    string: Callable[[int, str], str],
) -> dict[str, tuple[str, ...]]:
    """``.gnu.version_r``: {library file name: (version names it must provide)}."""
    if DT_VERNEED not in values:
        return {}
    offset, _ = _file_offset(segments, values[DT_VERNEED], "DT_VERNEED")
    count = values.get(DT_VERNEEDNUM, 0)
    needs: dict[str, tuple[str, ...]] = {}
    for _ in range(count):
        _version, aux_count, file_name, aux, next_offset = reader.unpack(
            "HHIII", offset, "version need"
        )
        names = []
        aux_offset = offset + aux
        for _ in range(aux_count):
            _hash, _flags, _other, name, aux_next = reader.unpack(
                "IHHII", aux_offset, "version aux"
            )
            names.append(string(name, "version name"))
            if aux_next == 0:
                break
            aux_offset += aux_next
        needs[string(file_name, "version file")] = tuple(names)
        if next_offset == 0:
            break
        offset += next_offset
    return needs


def _dynamic_section(elf: ElfFile) -> Section:
    """The SHT_DYNAMIC section, which must describe exactly the PT_DYNAMIC array."""
    if not elf.sections:
        raise ElfError(f"refusing to rewrite: {elf.section_problem or 'no section headers'}")
    dynamic_sections = [s for s in elf.sections if s.type == SHT_DYNAMIC]
    if len(dynamic_sections) != 1:
        raise ElfError(f"refusing to rewrite: {len(dynamic_sections)} SHT_DYNAMIC sections")
    section = dynamic_sections[0]
    entry_size = 16 if elf.bits == 64 else 8
    assert elf.dynamic is not None
    if section.offset != elf.dynamic.offset or section.entsize != entry_size or (
        section.size // entry_size != elf.dynamic.slots
    ):
        raise ElfError("refusing to rewrite: .dynamic section and PT_DYNAMIC disagree")
    return section


def remove_needed(data: bytes, soname: str) -> bytes:
    """``data`` with every ``DT_NEEDED`` entry naming ``soname`` removed (see module docstring)."""
    elf = parse(data)
    if elf.type not in (ET_EXEC, ET_DYN):
        raise ElfError(f"refusing to rewrite: ELF type {elf.type} is not an executable or library")
    if elf.dynamic is None:
        raise ElfError("refusing to rewrite: no dynamic section")
    _dynamic_section(elf)
    dynamic = elf.dynamic
    if soname not in dynamic.needed:
        raise ElfError(f"no DT_NEEDED entry for {soname}")
    if soname in dynamic.version_needs:
        raise ElfError(
            f"refusing to rewrite: symbol versions are required from {soname} (.gnu.version_r)"
        )
    names = iter(dynamic.needed)  # one name per DT_NEEDED entry, in order
    kept = []
    removed = 0
    for tag, value in dynamic.entries:
        if tag == DT_NEEDED and next(names) == soname:
            removed += 1
            continue
        if tag == DT_MIPS_RLD_MAP_REL and removed and elf.machine == 8:
            raise ElfError("refusing to rewrite: DT_MIPS_RLD_MAP_REL would move")
        kept.append((tag, value))
    used = len(dynamic.entries)
    fmt = ("<" if elf.little_endian else ">") + _formats(elf.bits)[3]
    entry_size = struct.calcsize(fmt)
    out = bytearray(data)
    for index in range(used):
        tag, value = kept[index] if index < len(kept) else (DT_NULL, 0)
        struct.pack_into(fmt, out, dynamic.offset + index * entry_size, tag, value)
    result = bytes(out)
    verify_removed(data, result, soname)
    return result


def verify_removed(original: bytes, rewritten: bytes, soname: str) -> None:
    """Prove ``rewritten`` is ``original`` minus the ``soname`` entries, and nothing else.

    Same length; only bytes of the used part of the dynamic array differ; the
    re-parsed array holds the same entries in the same order, less the
    removed ones; every other fact the loader reads is unchanged.
    """
    before, after = parse(original), parse(rewritten)
    if len(original) != len(rewritten):
        raise ElfError("rewrite changed the file size")
    if before.dynamic is None or after.dynamic is None:
        raise ElfError("rewrite lost the dynamic array")
    entry_size = 16 if before.bits == 64 else 8
    start = before.dynamic.offset
    end = start + len(before.dynamic.entries) * entry_size
    if original[:start] != rewritten[:start] or original[end:] != rewritten[end:]:
        raise ElfError("rewrite changed bytes outside the dynamic array")
    expected_needed = tuple(n for n in before.dynamic.needed if n != soname)
    others_before = [e for e in before.dynamic.entries if e[0] != DT_NEEDED]
    others_after = [e for e in after.dynamic.entries if e[0] != DT_NEEDED]
    if after.dynamic.needed != expected_needed or others_before != others_after:
        raise ElfError("rewritten dynamic array is not the original minus the removed entry")
    unchanged = (
        (before.interpreter, before.dynamic.soname, before.dynamic.rpath, before.dynamic.runpath),
        dict(before.dynamic.version_needs),
    )
    if unchanged != (
        (after.interpreter, after.dynamic.soname, after.dynamic.rpath, after.dynamic.runpath),
        dict(after.dynamic.version_needs),
    ):
        raise ElfError("rewrite changed what the loader reads besides DT_NEEDED")

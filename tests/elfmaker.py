"""Synthetic ELF files by code: both classes, both byte orders, every optional part.

Real binaries from gcc cover the common case; these cover what this machine's
compiler cannot produce (32-bit, big-endian, odd layouts) and give exact
control for the malformed-input tests.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

BASE = 0x10000
EM_X86_64, EM_AARCH64, EM_PPC64, EM_386 = 62, 183, 21, 3


def make_elf(
    *,
    bits: int = 64,
    little: bool = True,
    machine: int = EM_X86_64,
    elf_type: int = 3,
    needed: Sequence[str] = ("libc.so.6",),
    soname: str | None = None,
    rpath: str | None = None,
    runpath: str | None = None,
    interpreter: str | None = None,
    verneed: dict[str, Sequence[str]] | None = None,
    spare_slots: int = 2,
    sections: bool = True,
    extra: Sequence[tuple[int, int]] = (),
) -> bytes:
    e = "<" if little else ">"
    ehsize, phentsize, shentsize = (64, 56, 64) if bits == 64 else (52, 32, 40)
    dyn_fmt = e + ("qQ" if bits == 64 else "iI")
    dyn_size = struct.calcsize(dyn_fmt)

    strings = bytearray(b"\0")

    def string(text: str) -> int:
        offset = len(strings)
        strings.extend(text.encode() + b"\0")
        return offset

    entries: list[tuple[int, int]] = [(1, string(n)) for n in needed]
    if soname is not None:
        entries.append((14, string(soname)))
    if rpath is not None:
        entries.append((15, string(rpath)))
    if runpath is not None:
        entries.append((29, string(runpath)))
    entries += extra
    version_blob = bytearray()
    if verneed:
        files = list(verneed.items())
        for index, (file_name, names) in enumerate(files):
            file_offset = string(file_name)
            aux_count = len(names)
            next_need = 16 + 16 * aux_count if index < len(files) - 1 else 0
            version_blob += struct.pack(e + "HHIII", 1, aux_count, file_offset, 16, next_need)
            for aux_index, name in enumerate(names):
                aux_next = 16 if aux_index < aux_count - 1 else 0
                version_blob += struct.pack(e + "IHHII", 0, 0, 2 + aux_index, string(name),
                                            aux_next)
    interp_bytes = (interpreter.encode() + b"\0") if interpreter else b""

    phnum = 2 + (1 if interpreter else 0)
    layout = ehsize + phnum * phentsize
    interp_off = layout
    layout += len(interp_bytes)
    dynstr_off = layout
    layout += len(strings)
    layout = (layout + 7) & ~7
    verneed_off = layout
    layout += len(version_blob)
    layout = (layout + 7) & ~7
    dynamic_off = layout
    entries.append((5, BASE + dynstr_off))
    entries.append((10, len(strings)))
    if verneed:
        entries += [(0x6FFFFFFE, BASE + verneed_off), (0x6FFFFFFF, len(verneed))]
    slots = len(entries) + 1 + spare_slots
    dynamic = b"".join(struct.pack(dyn_fmt, t, v) for t, v in entries)
    dynamic += struct.pack(dyn_fmt, 0, 0) * (1 + spare_slots)
    layout += slots * dyn_size
    shstr = b"\0.dynstr\0.dynamic\0.shstrtab\0"
    shstr_off = layout
    layout += len(shstr)
    layout = (layout + 7) & ~7
    shoff = layout if sections else 0
    shnum = 4 if sections else 0
    total = layout + (shnum * shentsize)

    out = bytearray(total)
    ident = b"\x7fELF" + bytes([2 if bits == 64 else 1, 1 if little else 2, 1]) + bytes(9)
    out[0:16] = ident
    header_fmt = e + ("HHIQQQIHHHHHH" if bits == 64 else "HHIIIIIHHHHHH")
    struct.pack_into(header_fmt, out, 16, elf_type, machine, 1, 0, ehsize, shoff, 0, ehsize,
                     phentsize, phnum, shentsize, shnum, 3 if sections else 0)

    def program_header(index: int, p_type: int, offset: int, size: int) -> None:
        at = ehsize + index * phentsize
        if bits == 64:
            struct.pack_into(e + "IIQQQQQQ", out, at, p_type, 4, offset, BASE + offset,
                             BASE + offset, size, size, 8)
        else:
            struct.pack_into(e + "IIIIIIII", out, at, p_type, offset, BASE + offset,
                             BASE + offset, size, size, 4, 4)

    program_header(0, 1, 0, total)
    program_header(1, 2, dynamic_off, slots * dyn_size)
    if interpreter:
        program_header(2, 3, interp_off, len(interp_bytes))
    out[interp_off:interp_off + len(interp_bytes)] = interp_bytes
    out[dynstr_off:dynstr_off + len(strings)] = strings
    out[verneed_off:verneed_off + len(version_blob)] = version_blob
    out[dynamic_off:dynamic_off + len(dynamic)] = dynamic
    out[shstr_off:shstr_off + len(shstr)] = shstr
    if sections:
        section_fmt = e + ("IIQQQQIIQQ" if bits == 64 else "IIIIIIIIII")
        rows = [
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
            (1, 3, 2, BASE + dynstr_off, dynstr_off, len(strings), 0, 0, 1, 0),
            (9, 6, 3, BASE + dynamic_off, dynamic_off, slots * dyn_size, 1, 0, 8, dyn_size),
            (18, 3, 0, 0, shstr_off, len(shstr), 0, 0, 1, 0),
        ]
        for index, row in enumerate(rows):
            struct.pack_into(section_fmt, out, shoff + index * shentsize, *row)
    return bytes(out)

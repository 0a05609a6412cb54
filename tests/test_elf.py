"""pipfix.elf: reading real and synthetic ELF files, and the DT_NEEDED removal.

Real files come from gcc on this machine (readelf, when installed, is the
reference); synthetic ones (elfmaker) cover 32-bit and big-endian files.
Malformed input of any shape must raise ElfError and nothing else.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elfmaker import EM_386, EM_AARCH64, EM_PPC64, EM_X86_64, make_elf
from native import MAIN_SOURCE, STUB_SOURCE, compile_c, require_tool
from pipfix import elf


@pytest.fixture(scope="module")
def gcc_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real shared library needing libm and libz (uses neither), with RPATH and a soname."""
    gcc = require_tool("gcc", "gcc")
    out = tmp_path_factory.mktemp("gcc") / "libpipfixreal.so.1"
    return compile_c(gcc, STUB_SOURCE, out, "-shared", "-fPIC", "-Wl,-soname,libpipfixreal.so.1",
                     "-Wl,--no-as-needed", "-lm", "-lz", "-Wl,--disable-new-dtags",
                     "-Wl,-rpath,$ORIGIN/../lib:/opt/x")


def readelf_needed(path: Path) -> list[str]:
    output = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True,
                            check=True).stdout
    return [line.split("[", 1)[1].rstrip("]") for line in output.splitlines() if "(NEEDED)" in line]


def test_reads_a_real_shared_library(gcc_lib: Path) -> None:
    binary = elf.read(gcc_lib)
    assert (binary.bits, binary.type, binary.interpreter) == (64 if sys.maxsize > 2**32 else 32,
                                                              elf.ET_DYN, None)
    assert binary.needed[:2] == ("libm.so.6", "libz.so.1")
    assert binary.dynamic is not None and binary.dynamic.soname == "libpipfixreal.so.1"
    assert binary.rpath == ("$ORIGIN/../lib", "/opt/x") and binary.runpath is None
    assert binary.sections and binary.section_problem is None
    if shutil.which("readelf"):
        assert list(binary.needed) == readelf_needed(gcc_lib)


def test_reads_runpath_interp_and_glibc_version_of_an_executable(tmp_path: Path) -> None:
    gcc = require_tool("gcc", "gcc")
    exe = compile_c(gcc, MAIN_SOURCE, tmp_path / "main", "-Wl,--enable-new-dtags",
                    "-Wl,-rpath,/opt/runpath")
    binary = elf.read(exe)
    assert binary.runpath == ("/opt/runpath",) and binary.rpath is None
    assert binary.interpreter is not None and "ld-" in binary.interpreter
    assert binary.glibc_version_needed() is not None
    assert "libc.so.6" in binary.dynamic.version_needs  # type: ignore[union-attr]


def test_running_interpreter_agrees_with_the_host() -> None:
    binary = elf.read(Path(sys.executable).resolve())
    assert binary.arch in ("x86_64", "aarch64", "i686", "ppc64le", "s390x", "armv7l", "riscv64")
    assert binary.interpreter is not None


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("little", [True, False])
def test_synthetic_files_of_every_class_and_byte_order(bits: int, little: bool) -> None:
    data = make_elf(bits=bits, little=little, machine=EM_PPC64,
                    needed=("libpython3.12.so.1.0", "libc.so.6", "libm.so.6"),
                    soname="mod.so", runpath="$ORIGIN", interpreter="/lib/ld-musl-ppc64.so.1",
                    verneed={"libc.so.6": ("GLIBC_2.17", "GLIBC_2.28"),
                             "libm.so.6": ("GLIBC_2.29",)})
    binary = elf.parse(data)
    assert (binary.bits, binary.little_endian) == (bits, little)
    assert binary.needed == ("libpython3.12.so.1.0", "libc.so.6", "libm.so.6")
    assert binary.runpath == ("$ORIGIN",) and binary.interpreter == "/lib/ld-musl-ppc64.so.1"
    assert binary.glibc_version_needed() == (2, 29)
    fixed = elf.remove_needed(data, "libpython3.12.so.1.0")
    assert len(fixed) == len(data)
    after = elf.parse(fixed)
    assert after.needed == ("libc.so.6", "libm.so.6")
    assert after.dynamic is not None and binary.dynamic is not None
    assert [e for e in after.dynamic.entries if e[0] != elf.DT_NEEDED] == [
        e for e in binary.dynamic.entries if e[0] != elf.DT_NEEDED
    ]
    assert after.dynamic.version_needs == binary.dynamic.version_needs


@pytest.mark.parametrize(("machine", "bits", "little", "arch"), [
    (EM_X86_64, 64, True, "x86_64"), (EM_386, 32, True, "i686"),
    (EM_AARCH64, 64, True, "aarch64"), (EM_PPC64, 64, True, "ppc64le"),
    (EM_PPC64, 64, False, "ppc64"),
])
def test_arch_names_follow_pip(machine: int, bits: int, little: bool, arch: str) -> None:
    assert elf.parse(make_elf(machine=machine, bits=bits, little=little)).arch == arch


def test_remove_needed_shifts_entries_and_pads_with_null() -> None:
    data = make_elf(needed=("liba.so", "libpython3.11.so.1.0", "libb.so"), soname="x.so",
                    spare_slots=0)
    before = elf.parse(data)
    fixed = elf.remove_needed(data, "libpython3.11.so.1.0")
    after = elf.parse(fixed)
    assert after.needed == ("liba.so", "libb.so")
    assert after.dynamic is not None and before.dynamic is not None
    assert after.dynamic.slots == before.dynamic.slots
    assert len(after.dynamic.entries) == len(before.dynamic.entries) - 1
    # only the used part of the array changed; the string table still holds the name
    start = before.dynamic.offset
    end = start + len(before.dynamic.entries) * 16
    assert data[:start] == fixed[:start] and data[end:] == fixed[end:]
    assert b"libpython3.11.so.1.0\0" in fixed


def test_remove_needed_keeps_a_loadable_real_library(gcc_lib: Path, tmp_path: Path) -> None:
    fixed = tmp_path / gcc_lib.name
    fixed.write_bytes(elf.remove_needed(gcc_lib.read_bytes(), "libz.so.1"))
    assert elf.read(fixed).needed == ("libm.so.6", "libc.so.6")
    if shutil.which("readelf"):
        assert readelf_needed(fixed) == ["libm.so.6", "libc.so.6"]
    library = ctypes.CDLL(str(fixed))
    assert library.pipfix_stub() == 42


@pytest.mark.parametrize(("data", "soname", "message"), [
    (make_elf(sections=False), "libc.so.6", "no section headers"),
    (make_elf(needed=("libpython3.11.so.1.0",), verneed={"libpython3.11.so.1.0": ("PY_3",)}),
     "libpython3.11.so.1.0", "symbol versions"),
    (make_elf(needed=("libc.so.6",)), "libx.so", "no DT_NEEDED entry"),
    (make_elf(elf_type=1), "libc.so.6", "not an executable or library"),
    (make_elf(machine=8, needed=("libpython3.11.so.1.0",), extra=[(elf.DT_MIPS_RLD_MAP_REL, 8)]),
     "libpython3.11.so.1.0", "DT_MIPS_RLD_MAP_REL"),
])
def test_remove_needed_refuses(data: bytes, soname: str, message: str) -> None:
    with pytest.raises(elf.ElfError, match=message):
        elf.remove_needed(data, soname)


def test_remove_needed_refuses_when_sections_disagree_with_the_segment() -> None:
    data = bytearray(make_elf(needed=("libpython3.11.so.1.0", "libc.so.6")))
    binary = elf.parse(bytes(data))
    dynamic = next(s for s in binary.sections if s.type == elf.SHT_DYNAMIC)
    # .dynamic's sh_offset field: section header 2 starts at e_shoff + 2 * 64; offset is at +24
    shoff = int.from_bytes(data[40:48], "little")
    data[shoff + 2 * 64 + 24: shoff + 2 * 64 + 32] = (dynamic.offset + 16).to_bytes(8, "little")
    with pytest.raises(elf.ElfError, match="disagree"):
        elf.remove_needed(bytes(data), "libpython3.11.so.1.0")


def test_verify_removed_catches_other_changes() -> None:
    data = make_elf(needed=("libpython3.11.so.1.0", "libc.so.6"))
    fixed = bytearray(elf.remove_needed(data, "libpython3.11.so.1.0"))
    fixed[-1] ^= 1  # a byte outside the dynamic array
    with pytest.raises(elf.ElfError, match="outside the dynamic array"):
        elf.verify_removed(data, bytes(fixed), "libpython3.11.so.1.0")


@pytest.mark.parametrize(("data", "message"), [
    (b"", "not an ELF"), (b"MZ\x90\x00" * 8, "not an ELF"),
    (b"\x7fELF\x03\x01\x01" + bytes(60), "unknown ELF class"),
    (b"\x7fELF\x02\x03\x01" + bytes(60), "unknown ELF data encoding"),
    (b"\x7fELF\x02\x01\x01" + bytes(9), "truncated"),
])
def test_malformed_headers(data: bytes, message: str) -> None:
    with pytest.raises(elf.ElfError, match=message):
        elf.parse(data)


def test_wrong_class_byte_is_an_error_not_a_misread() -> None:
    data = bytearray(make_elf(bits=64))
    data[4] = 1  # claims ELF32 while the headers are 64-bit
    with pytest.raises(elf.ElfError):
        elf.parse(bytes(data))


def test_every_truncation_raises_elf_error_or_reads() -> None:
    data = make_elf(needed=("libpython3.11.so.1.0", "libc.so.6"), runpath="/x",
                    verneed={"libc.so.6": ("GLIBC_2.17",)})
    for length in range(len(data)):
        try:
            elf.parse(data[:length])
        except elf.ElfError:
            continue


def test_empty_file_is_an_elf_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.so"
    empty.touch()
    with pytest.raises(elf.ElfError, match="empty"):
        elf.read(empty)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from([
        make_elf(), make_elf(bits=32, little=False, verneed={"libc.so.6": ("GLIBC_2.3",)}),
        make_elf(needed=("libpython3.11.so.1.0",), interpreter="/lib/ld.so"),
    ]),
    edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=8),
    cut=st.integers(0, 600),
)
def test_corrupted_files_never_raise_anything_but_elf_error(
    base: bytes, edits: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(base[:cut] if cut < len(base) else base)
    for position, value in edits:
        if position < len(data):
            data[position] = value
    try:
        binary = elf.parse(bytes(data))
    except elf.ElfError:
        return
    for name in binary.needed:
        try:
            fixed = elf.remove_needed(bytes(data), name)
        except elf.ElfError:
            continue
        assert name not in elf.parse(fixed).needed or binary.needed.count(name) > 1

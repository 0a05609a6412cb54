"""Which extension modules name libpython, and whether the loader would find it.

An extension module built against a shared libpython records
``DT_NEEDED libpython3.X.so.1.0``. Under a python that loaded that very
library the entry is harmless: the loader matches it to the loaded copy by
name (or by file identity). Under a python that has libpython linked into the
executable it is not: either the library is nowhere on the module's search
path ("ImportError: libpython3.X.so.1.0: cannot open shared object file"), or
a second copy of the runtime gets loaded next to the one in the executable.

The search is modelled on the loaders, without running anything:

glibc (``ld.so(8)``): the module's ``DT_RPATH`` (only when it has no
``DT_RUNPATH``), then the executable's ``DT_RPATH`` (only when neither has a
``DT_RUNPATH``: RPATH is inherited, RUNPATH is not), ``LD_LIBRARY_PATH``, the
module's ``DT_RUNPATH``, then the directories of ``/etc/ld.so.conf`` and the
default ones (what ``ld.so.cache`` is built from).

musl (``ldso/dynlink.c``): ``LD_LIBRARY_PATH``, the module's RPATH or
RUNPATH (musl treats them alike), the executable's, then
``/etc/ld-musl-ARCH.path`` or ``/lib:/usr/local/lib:/usr/lib``.

Paths are resolved on this host, so for a cross-compiled target only the
entries relative to ``$ORIGIN`` are meaningful; the evidence says where it looked.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from . import elf
from .store import STATE_DIRNAME

LIBPYTHON = re.compile(r"^libpython3(?:\.\d+)?[a-z]*\.so(?:\.\d+)*$")
SHARED_OBJECT = re.compile(r"\.so(?:\.\d+)*$")
_MULTIARCH = {
    "x86_64": "x86_64-linux-gnu", "i686": "i386-linux-gnu", "aarch64": "aarch64-linux-gnu",
    "armv7l": "arm-linux-gnueabihf", "ppc64le": "powerpc64le-linux-gnu",
    "s390x": "s390x-linux-gnu", "riscv64": "riscv64-linux-gnu",
}


def libpython_names(needed: Iterable[str]) -> tuple[str, ...]:
    return tuple(n for n in needed if LIBPYTHON.match(n))


def libc_family(binary: elf.ElfFile) -> str:
    """"glibc", "musl", "none" (no loader: static) or "unknown", from the loader's name."""
    loader = binary.interpreter
    if loader is None:
        return "none"
    name = os.path.basename(loader)
    if "musl" in name:
        return "musl"
    if name.startswith("ld-linux") or name.startswith("ld64.so") or name == "ld.so.1":
        return "glibc"
    return "glibc" if binary.glibc_version_needed() else "unknown"


@dataclass(frozen=True)
class Interpreter:
    """The python executable, as far as loading extension modules is concerned."""

    path: Path
    binary: elf.ElfFile

    @property
    def can_load(self) -> bool:
        """False for a fully static executable: there is no loader to dlopen with."""
        return self.binary.interpreter is not None

    @property
    def libc(self) -> str:
        return libc_family(self.binary)

    @property
    def libpython_needed(self) -> tuple[str, ...]:
        return libpython_names(self.binary.needed)

    @property
    def libpython_static(self) -> bool:
        return not self.libpython_needed


def _expand(entry: str, origin: Path, bits: int) -> str:
    for token, value in (("$ORIGIN", str(origin)), ("${ORIGIN}", str(origin)),
                         ("$LIB", "lib64" if bits == 64 else "lib"),
                         ("${LIB}", "lib64" if bits == 64 else "lib")):
        entry = entry.replace(token, value)
    return entry


def _ld_so_conf(path: Path, seen: set[Path]) -> Iterator[str]:
    if path in seen or not path.is_file():
        return
    seen.add(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if line.startswith("include"):
            pattern = line.split(None, 1)[1] if " " in line else ""
            pattern = pattern if os.path.isabs(pattern) else str(path.parent / pattern)
            for included in sorted(glob.glob(pattern)):
                yield from _ld_so_conf(Path(included), seen)
        elif line:
            yield line


def default_dirs(libc: str, arch: str) -> tuple[str, ...]:
    """The loader's last-resort directories on this host."""
    if libc == "musl":
        path_file = Path(f"/etc/ld-musl-{arch}.path")
        try:
            text = path_file.read_text(encoding="utf-8")
            return tuple(d for d in re.split(r"[:\n]", text) if d.strip())
        except OSError:
            return ("/lib", "/usr/local/lib", "/usr/lib")
    dirs = list(_ld_so_conf(Path("/etc/ld.so.conf"), set()))
    triplet = _MULTIARCH.get(arch)
    if triplet:
        dirs += [f"/lib/{triplet}", f"/usr/lib/{triplet}"]
    dirs += ["/lib64", "/usr/lib64", "/lib", "/usr/lib"]
    return tuple(dict.fromkeys(dirs))


@dataclass(frozen=True)
class Resolution:
    name: str
    found: Path | None
    how: str  # where it came from, or "not found"
    searched: tuple[str, ...]


def _search_order(
    module: Path, binary: elf.ElfFile, interpreter: Interpreter, env_path: Iterable[str]
) -> list[tuple[str, str]]:
    """[(directory, which list it came from)] in the loader's order."""
    exe = interpreter.binary
    exe_origin = interpreter.path.resolve().parent
    own = [(_expand(d, module.parent, binary.bits), "module RPATH") for d in binary.rpath or ()]
    own_run = [(_expand(d, module.parent, binary.bits), "module RUNPATH")
               for d in binary.runpath or ()]
    env = [(d, "LD_LIBRARY_PATH") for d in env_path if d]
    if interpreter.libc == "musl":
        exe_paths = exe.runpath if exe.runpath is not None else exe.rpath
        inherited = [(_expand(d, exe_origin, exe.bits), "executable RPATH/RUNPATH")
                     for d in exe_paths or ()]
        order = env + (own_run or own) + inherited
    else:
        inherited = []
        if binary.runpath is None and exe.runpath is None:
            inherited = [(_expand(d, exe_origin, exe.bits), "executable RPATH")
                         for d in exe.rpath or ()]
        rpath_first = own if binary.runpath is None else []
        order = rpath_first + inherited + env + own_run
    order += [(d, "default") for d in default_dirs(interpreter.libc, exe.arch)]
    return order


def resolve(
    name: str,
    module: Path,
    binary: elf.ElfFile,
    interpreter: Interpreter,
    env_path: Iterable[str] = (),
) -> Resolution:
    """Where the loader would find ``name`` for ``module`` loaded into ``interpreter``."""
    if name in interpreter.binary.needed:
        return Resolution(name, None, "already loaded by the interpreter", ())
    searched: list[str] = []
    for directory, how in _search_order(module, binary, interpreter, env_path):
        searched.append(directory)
        candidate = Path(directory) / name
        if candidate.is_file():
            return Resolution(name, candidate, f"found via {how}", tuple(searched))
    return Resolution(name, None, "not found", tuple(dict.fromkeys(searched)))


def interpreter_libpython(interpreter: Interpreter, env_path: Iterable[str] = ()) -> Path | None:
    """The shared libpython the executable itself loads, if it needs one."""
    for name in interpreter.libpython_needed:
        probe = Interpreter(interpreter.path, _without_needed(interpreter.binary))
        found = resolve(name, interpreter.path.resolve(), interpreter.binary, probe, env_path)
        if found.found is not None:
            return found.found
    return None


def _without_needed(binary: elf.ElfFile) -> elf.ElfFile:
    """The executable as seen before its own DT_NEEDED entries are loaded."""
    if binary.dynamic is None:
        return binary
    return replace(binary, dynamic=replace(binary.dynamic, needed=()))


@dataclass(frozen=True)
class ModuleLink:
    """One shared object that needs libpython, and what that means under this interpreter."""

    path: Path
    binary: elf.ElfFile
    resolutions: tuple[Resolution, ...]
    problem: str | None  # "missing" | "second-copy" | "no-loader" | None

    @property
    def libpython(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.resolutions)

    def to_json(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "needed": list(self.libpython),
            "rpath": list(self.binary.rpath) if self.binary.rpath is not None else None,
            "runpath": list(self.binary.runpath) if self.binary.runpath is not None else None,
            "problem": self.problem,
            "resolution": [
                {"name": r.name, "found": str(r.found) if r.found else None, "how": r.how}
                for r in self.resolutions
            ],
        }


def classify(
    path: Path,
    binary: elf.ElfFile,
    interpreter: Interpreter,
    env: Mapping[str, str] | None = None,
) -> ModuleLink | None:
    """None when ``binary`` needs no libpython; otherwise its link and problem."""
    names = libpython_names(binary.needed)
    if not names:
        return None
    environ = os.environ if env is None else env
    env_path = [d for d in environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    resolutions = tuple(resolve(n, path, binary, interpreter, env_path) for n in names)
    if not interpreter.can_load:
        return ModuleLink(path, binary, resolutions, "no-loader")
    own = interpreter_libpython(interpreter, env_path)
    problem = None
    for found in resolutions:
        if found.how == "already loaded by the interpreter":
            continue
        if found.found is None:
            problem = "missing"
            break
        if own is None or found.found.resolve() != own.resolve():
            problem = "second-copy"
    return ModuleLink(path, binary, resolutions, problem)


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


@dataclass(frozen=True)
class Scan:
    """Every shared object under some directories, sorted into what matters."""

    count: int
    linked: tuple[ModuleLink, ...]
    skipped: tuple[Skipped, ...]  # unreadable, or built for another architecture


def shared_objects(root: Path) -> Iterator[Path]:
    """``*.so`` and ``*.so.N`` files under ``root``, skipping pipfix's own state and symlinks."""
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in (STATE_DIRNAME, "__pycache__"))
        for name in sorted(files):
            path = Path(directory) / name
            if SHARED_OBJECT.search(name) and not path.is_symlink() and path.is_file():
                yield path


def check_file(path: Path, interpreter: Interpreter) -> tuple[elf.ElfFile | None, str | None]:
    """The parsed file, or None and why it cannot be used with this interpreter."""
    try:
        binary = elf.read(path)
    except (OSError, elf.ElfError) as exc:
        return None, str(exc) if isinstance(exc, elf.ElfError) else (exc.strerror or str(exc))
    if not binary.same_abi(interpreter.binary):
        return None, (
            f"{binary.elf_class} {binary.machine_name}, but the interpreter is "
            f"{interpreter.binary.elf_class} {interpreter.binary.machine_name}"
        )
    if binary.type not in (elf.ET_DYN, elf.ET_EXEC):
        return None, f"ELF type {binary.type} is not a shared object"
    return binary, None


def scan(roots: Iterable[Path], interpreter: Interpreter) -> Scan:
    count = 0
    linked: list[ModuleLink] = []
    skipped: list[Skipped] = []
    for root in dict.fromkeys(roots):
        if not root.is_dir():
            continue
        for path in shared_objects(root):
            count += 1
            binary, reason = check_file(path, interpreter)
            if binary is None:
                skipped.append(Skipped(path, reason or "unreadable"))
                continue
            link = classify(path, binary, interpreter)
            if link is not None:
                linked.append(link)
    return Scan(count, tuple(linked), tuple(skipped))

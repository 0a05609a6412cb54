"""Static facts about the interpreter binary, read from its ELF headers.

Nothing of the target runs here. The only program that may run is the musl
loader named in ``PT_INTERP`` (``ld-musl-ARCH.so.1``, which prints its version
when started without arguments), the same way pip's vendored
``packaging._musllinux`` asks it, and only when running is allowed.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .. import elf, linkage
from .subject import Subject

_MUSL_VERSION = re.compile(r"Version (\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class BinaryFacts:
    path: Path | None
    interpreter: linkage.Interpreter | None  # None when the binary could not be read
    problem: str | None
    musl_version: str | None
    libpython_shared_path: Path | None  # the libpython the executable loads, if shared
    libpython_files: tuple[Path, ...]  # libpython3.X*.so* files found in the installation

    @property
    def binary(self) -> elf.ElfFile | None:
        return self.interpreter.binary if self.interpreter else None

    @property
    def static(self) -> bool | None:
        return None if self.interpreter is None else not self.interpreter.can_load


def musl_version(loader: str, timeout: float = 10.0) -> str | None:
    """The version the musl loader prints on stderr ("Version 1.2.3"), or None."""
    if not os.path.isfile(loader) or not os.access(loader, os.X_OK):
        return None
    try:
        completed = subprocess.run(
            [loader], capture_output=True, text=True, timeout=timeout, env={}, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in completed.stderr.splitlines() if line.strip()]
    if len(lines) < 2 or not lines[0].startswith("musl"):
        return None
    match = _MUSL_VERSION.match(lines[1])
    return ".".join(g for g in match.groups() if g is not None) if match else None


def _libpython_files(subject: Subject) -> tuple[Path, ...]:
    dirs = [subject.base.prefix / "lib", subject.base.prefix / "lib64"]
    libdir = subject.lib.build_vars.get("LIBDIR")
    if isinstance(libdir, str) and libdir:
        dirs.append(Path(libdir))
    found: dict[Path, None] = {}
    for directory in dirs:
        if directory.is_dir():
            found.update(dict.fromkeys(sorted(directory.glob(f"libpython{subject.version}*.so*"))))
    return tuple(found)


def read_binary(subject: Subject, *, may_run: bool) -> BinaryFacts:
    files = _libpython_files(subject)
    path = subject.executable
    if path is None:
        return BinaryFacts(None, None, "no python executable found in bin/", None, None, files)
    try:
        binary = elf.read(path.resolve())
    except elf.ElfError as exc:
        return BinaryFacts(path, None, str(exc), None, None, files)
    except OSError as exc:
        return BinaryFacts(path, None, exc.strerror or str(exc), None, None, files)
    interpreter = linkage.Interpreter(path, binary)
    musl = None
    if may_run and binary.interpreter and interpreter.libc == "musl":
        musl = musl_version(binary.interpreter)
    shared = linkage.interpreter_libpython(
        interpreter, [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    )
    return BinaryFacts(path, interpreter, None, musl, shared, files)

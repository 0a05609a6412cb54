"""What doctor examines: one Python version of an installation (or a venv of one).

Found from the file layout alone, like ``pipfix.target``: the executable,
the stdlib directory, the site-packages directories and, for a venv, the base
installation whose ensurepip wheels and binary it uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import NotAnInstallationError, PipfixError
from ..target import Installation, PythonLib, find_installation, running_interpreter_prefix

_EXE_VERSION = re.compile(r"^python(3\.\d+t?)$")


@dataclass(frozen=True)
class Subject:
    named: Path  # what the user named, absolute
    prefix: Path  # the installation or venv
    base: Installation  # the installation that holds the stdlib and ensurepip
    lib: PythonLib
    venv: bool
    executable: Path | None
    site_packages: tuple[Path, ...]

    @property
    def version(self) -> str:
        return self.lib.version

    def to_json(self) -> dict[str, object]:
        return {
            "path": str(self.named),
            "prefix": str(self.prefix),
            "base_prefix": str(self.base.prefix),
            "venv": self.venv,
            "version": self.version,
            "stdlib": str(self.lib.stdlib),
            "executable": str(self.executable) if self.executable else None,
            "site_packages": [str(p) for p in self.site_packages],
        }


def _pyvenv_cfg(prefix: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    try:
        text = (prefix / "pyvenv.cfg").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return values
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip().lower()] = value.strip()
    return values


def _pick_lib(base: Installation, wanted: str | None) -> PythonLib:
    libs = [lib for lib in base.libs if lib.version != "windows"]
    if not libs:
        raise NotAnInstallationError(base.prefix, "no POSIX lib/python3.X stdlib")
    for lib in libs:
        if lib.version == wanted:
            return lib

    def key(lib: PythonLib) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", lib.version))

    return max(libs, key=key)


def _find_executable(prefix: Path, version: str) -> Path | None:
    for name in (f"python{version}", "python3", "python"):
        candidate = prefix / "bin" / name
        if candidate.is_file():
            return candidate
    return None


def _prefix_of(path: Path) -> Path:
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "bin" else path.parent


def find_subject(target: str | Path | None) -> Subject:
    """Resolve a prefix, a venv, or a python executable (default: the running Python)."""
    named = Path(target if target is not None else running_interpreter_prefix()).absolute()
    if not named.exists():
        raise NotAnInstallationError(named, "no such file or directory")
    prefix = _prefix_of(named)
    match = _EXE_VERSION.match(named.name) if named.is_file() else None
    wanted = match[1] if match else None
    if (prefix / "pyvenv.cfg").is_file():
        home = _pyvenv_cfg(prefix).get("home")
        if not home:
            raise PipfixError(prefix / "pyvenv.cfg", "venv without a 'home' entry")
        home_dir = Path(home)  # the base interpreter's bin directory
        base = find_installation(home_dir.parent if home_dir.name == "bin" else home_dir)
        venv_libs = sorted(prefix.glob("lib/python3*/site-packages"))
        if wanted is None and venv_libs:
            wanted = venv_libs[0].parent.name[len("python"):]
        lib = _pick_lib(base, wanted)
        site = [prefix / "lib" / f"python{lib.version}" / "site-packages"]
        if _pyvenv_cfg(prefix).get("include-system-site-packages", "").lower() == "true":
            site.append(lib.stdlib / "site-packages")
        executable = named if named.is_file() else _find_executable(prefix, lib.version)
        return Subject(named, prefix, base, lib, True, executable, tuple(site))
    base = find_installation(prefix)
    lib = _pick_lib(base, wanted)
    site = [lib.stdlib / "site-packages"]
    lib64 = prefix / "lib64" / f"python{lib.version}" / "site-packages"
    if lib64.is_dir() and lib64.resolve() != site[0].resolve():
        site.append(lib64)
    executable = named if named.is_file() else _find_executable(prefix, lib.version)
    return Subject(named, prefix, base, lib, False, executable, tuple(site))

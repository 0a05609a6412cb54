"""Find Python installations and the wheels their ensurepip would use.

The target is never executed: it may be a cross-compiled interpreter that
cannot run on this host. Everything is read from its file layout and from its
``_sysconfigdata_*.py``, which is parsed as data, not imported.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import NotAnInstallationError, PipfixError

_STDLIB_NAME = re.compile(r"^python(?P<version>3\.\d+)(?P<abiflags>t?)$")
# ensurepip only picks these up from WHEEL_PKG_DIR (CPython 3.10+ _find_packages).
_WHEEL_PKG_DIR_PREFIXES = ("pip-", "setuptools-")


@dataclass(frozen=True)
class PythonLib:
    """One CPython version's standard library inside an installation."""

    version: str  # "3.11", or "3.13t" for a free-threaded build
    stdlib: Path
    sysconfigdata: Path | None
    build_vars: Mapping[str, object] = field(default_factory=dict, compare=False)

    @property
    def bundled_dir(self) -> Path:
        return self.stdlib / "ensurepip" / "_bundled"

    @property
    def wheel_pkg_dir(self) -> Path | None:
        """WHEEL_PKG_DIR, relocated when the installation was moved."""
        raw = self.build_vars.get("WHEEL_PKG_DIR")
        if not isinstance(raw, str) or not raw:
            return None
        configured = Path(raw)
        recorded_prefix = self.build_vars.get("prefix")
        if isinstance(recorded_prefix, str) and recorded_prefix:
            actual_prefix = _prefix_of_stdlib(self.stdlib)
            try:
                return actual_prefix / configured.relative_to(recorded_prefix)
            except ValueError:
                pass
        return configured


@dataclass(frozen=True)
class Installation:
    """A Python installation prefix (``/opt/python``) or a venv, and its Python versions.

    A venv has no stdlib of its own (``libs`` is empty): its ensurepip wheels
    belong to the base installation, which is only touched when named.
    """

    prefix: Path
    libs: tuple[PythonLib, ...]
    venv_versions: tuple[str, ...] = ()

    @property
    def is_venv(self) -> bool:
        return (self.prefix / "pyvenv.cfg").is_file()

    @property
    def state_dir(self) -> Path:
        """Where pipfix keeps its lock and journal for this installation."""
        return self.prefix / ".pipfix"

    def ensurepip_wheels(self) -> list[Path]:
        """Every wheel file the installation's ensurepip would use, sorted."""
        found: set[Path] = set()
        for lib in self.libs:
            if lib.bundled_dir.is_dir():
                found.update(p for p in lib.bundled_dir.glob("*.whl") if p.is_file())
            pkg_dir = lib.wheel_pkg_dir
            if pkg_dir is not None and pkg_dir.is_dir():
                found.update(
                    p
                    for p in pkg_dir.glob("*.whl")
                    if p.is_file() and p.name.startswith(_WHEEL_PKG_DIR_PREFIXES)
                )
        return sorted(found)


def _prefix_of_stdlib(stdlib: Path) -> Path:
    # POSIX: PREFIX/lib/python3.X ; Windows: PREFIX/Lib
    return stdlib.parent if stdlib.name == "Lib" else stdlib.parent.parent


def read_build_vars(path: Path) -> dict[str, object]:
    """Parse ``build_time_vars`` from a ``_sysconfigdata_*.py`` without running it."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError) as exc:
        raise PipfixError(path, f"cannot read sysconfig data: {exc}") from None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "build_time_vars" for t in node.targets
        ):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                break
            if isinstance(value, dict):
                return {str(k): v for k, v in value.items()}
    raise PipfixError(path, "sysconfig data has no literal build_time_vars")


def _find_sysconfigdata(stdlib: Path) -> Path | None:
    candidates = sorted(stdlib.glob("_sysconfigdata_*.py"))
    return candidates[0] if candidates else None


def _stdlib_dirs(prefix: Path) -> Iterable[tuple[str, Path]]:
    for libdir in ("lib", "lib64"):
        base = prefix / libdir
        if not base.is_dir():
            continue
        for child in sorted(base.iterdir()):
            match = _STDLIB_NAME.match(child.name)
            if match and (child / "os.py").is_file():
                yield match["version"] + match["abiflags"], child
    windows = prefix / "Lib"
    if (windows / "os.py").is_file():
        yield "windows", windows


def _read_lib(version: str, stdlib: Path) -> PythonLib:
    sysconfigdata = _find_sysconfigdata(stdlib)
    build_vars = read_build_vars(sysconfigdata) if sysconfigdata else {}
    return PythonLib(version, stdlib, sysconfigdata, build_vars)


def _prefix_from_path(path: Path) -> Path:
    """A prefix for a directory, or for a python executable inside one."""
    if path.is_dir():
        return path
    # PREFIX/bin/python3 (POSIX) or PREFIX/python.exe (Windows)
    parent = path.parent
    return parent.parent if parent.name in ("bin", "Scripts") else parent


def _venv_versions(venv: Path) -> tuple[str, ...]:
    versions = []
    for libdir in ("lib", "lib64"):
        for child in sorted((venv / libdir).glob("python3*/site-packages")):
            match = _STDLIB_NAME.match(child.parent.name)
            if match and not child.parent.is_symlink():
                versions.append(match["version"] + match["abiflags"])
    if (venv / "Lib" / "site-packages").is_dir():
        versions.append("windows")
    return tuple(dict.fromkeys(versions))


def find_installation(target: str | Path) -> Installation:
    """Resolve ``target`` (a prefix, a venv, or a python executable in one)."""
    path = Path(target).absolute()
    if not path.exists():
        raise NotAnInstallationError(path, "no such file or directory")
    prefix = _prefix_from_path(path)
    if (prefix / "pyvenv.cfg").is_file():
        versions = _venv_versions(prefix)
        if not versions:
            raise NotAnInstallationError(prefix, "venv without lib/python3.X/site-packages")
        return Installation(prefix, (), versions)
    seen: dict[Path, PythonLib] = {}
    for version, stdlib in _stdlib_dirs(prefix):
        resolved = stdlib.resolve()
        if resolved not in seen:  # lib64 -> lib symlinks name one stdlib twice
            seen[resolved] = _read_lib(version, stdlib)
    if not seen:
        raise NotAnInstallationError(
            prefix,
            "not a Python installation (looked for pyvenv.cfg, "
            "lib/python3.X/os.py, lib64/python3.X/os.py and Lib/os.py)",
        )
    return Installation(prefix, tuple(seen.values()))


def find_installations_under(root: Path, max_depth: int = 3) -> list[Installation]:
    """Every installation or venv below ``root`` (``--all``), outermost first."""
    found: list[Installation] = []

    def walk(directory: Path, depth: int) -> None:
        try:
            found.append(find_installation(directory))
            return
        except PipfixError:
            pass
        if depth >= max_depth:
            return
        try:
            children = sorted(p for p in directory.iterdir() if p.is_dir() and not p.is_symlink())
        except OSError:
            return
        for child in children:
            if not child.name.startswith("."):
                walk(child, depth + 1)

    if not root.is_dir():
        raise NotAnInstallationError(root, "not a directory")
    walk(root.absolute(), 0)
    if not found:
        raise NotAnInstallationError(root, "no Python installation or venv found below it")
    return found


def running_interpreter_prefix() -> Path:
    """The default target of read-only commands: the running base installation."""
    return Path(sys.base_prefix)

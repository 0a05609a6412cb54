"""Install schemes of a target, computed from its layout, confirmed by running it if possible.

installer needs purelib/platlib/scripts/data/headers. We compute them the way
sysconfig's ``posix_prefix`` / ``nt`` / ``venv`` schemes would inside the
target, from the target's directory layout and ``_sysconfigdata`` -- without
running it, since it may be a cross-compiled binary. When the target does run
here, it is asked for ``sysconfig.get_paths()`` and its answer is used; the
report says which way was taken.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .target import Installation

COMPUTED = "computed from the layout (target not run)"
CONFIRMED = "computed, confirmed by running the target"
FROM_TARGET = "taken from the running target (differs from the layout)"


@dataclass(frozen=True)
class InstallScheme:
    """Where one Python version of a target installs distributions."""

    version: str
    purelib: Path
    platlib: Path
    scripts: Path
    data: Path
    headers: Path
    interpreter: Path
    source: str = COMPUTED

    def as_installer_dict(self) -> dict[str, str]:
        return {
            "purelib": str(self.purelib),
            "platlib": str(self.platlib),
            "scripts": str(self.scripts),
            "data": str(self.data),
            "headers": str(self.headers),
        }

    @property
    def site_dirs(self) -> tuple[Path, ...]:
        return tuple(dict.fromkeys((self.purelib, self.platlib)))


def _interpreter(bindir: Path, version: str) -> Path:
    for name in (f"python{version}", "python3", "python", "python.exe"):
        candidate = bindir / name
        if candidate.exists():
            return candidate
    return bindir / f"python{version}"


def computed_schemes(installation: Installation) -> list[InstallScheme]:
    """Schemes for every Python version in the installation, from its layout only."""
    prefix = installation.prefix
    schemes = []
    if installation.libs == () and installation.venv_versions:
        for version in installation.venv_versions:
            if version == "windows":
                site = prefix / "Lib" / "site-packages"
                bindir = prefix / "Scripts"
            else:
                site = prefix / "lib" / f"python{version}" / "site-packages"
                bindir = prefix / "bin"
            schemes.append(
                InstallScheme(
                    version,
                    site,
                    site,
                    bindir,
                    prefix,
                    prefix / "include" / "site" / f"python{version}",
                    _interpreter(bindir, version),
                )
            )
        return schemes
    for lib in installation.libs:
        if lib.version == "windows":
            site = prefix / "Lib" / "site-packages"
            schemes.append(
                InstallScheme(
                    lib.version,
                    site,
                    site,
                    prefix / "Scripts",
                    prefix,
                    prefix / "Include",
                    _interpreter(prefix, ""),
                ),
            )
            continue
        platlibdir = str(lib.build_vars.get("PLATLIBDIR") or "lib")
        purelib = lib.stdlib / "site-packages"
        platlib = prefix / platlibdir / lib.stdlib.name / "site-packages"
        if not platlib.parent.is_dir():
            platlib = purelib
        bindir = prefix / "bin"
        schemes.append(
            InstallScheme(
                lib.version,
                purelib,
                platlib,
                bindir,
                prefix,
                prefix / "include" / lib.stdlib.name,
                _interpreter(bindir, lib.version),
            )
        )
    return schemes


_ASK = "import json, sysconfig; print(json.dumps(sysconfig.get_paths()))"


def ask_target(
    interpreter: Path, args: list[str], timeout: float = 60, *, site: bool = True
) -> str | None:
    """Run the target isolated, writing no bytecode; None when it cannot run here.

    ``site=False``: nor import ``site`` (its ``.pth`` files cost a short run
    half its time), for questions that do not depend on it.
    """
    return _Question(interpreter, args, timeout, site).answer()


class _Question:
    """A run of the target, started at once and waited for when its answer is needed."""

    def __init__(self, interpreter: Path, args: list[str], timeout: float, site: bool) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
        flags = ["-I", "-B"] if site else ["-I", "-S", "-B"]
        self._timeout = timeout
        self._process: subprocess.Popen[str] | None
        try:
            self._process = subprocess.Popen(
                [str(interpreter), *flags, *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        except (OSError, subprocess.SubprocessError):
            self._process = None

    def answer(self) -> str | None:
        process = self._process
        if process is None:
            return None
        try:
            out, _ = process.communicate(timeout=self._timeout)
        except subprocess.SubprocessError:  # timed out
            process.kill()
            process.communicate()
            return None
        return out if process.returncode == 0 else None


class Confirmation:
    """Ask the target for its paths when it runs (keep the computed ones otherwise):
    the target starts now, ``result()`` reads its answer later, so that the run
    overlaps other work."""

    def __init__(self, scheme: InstallScheme) -> None:
        self._scheme = scheme
        self._question = (
            _Question(scheme.interpreter, ["-c", _ASK], 60, True)
            if scheme.interpreter.exists()
            else None
        )

    def result(self) -> InstallScheme:
        scheme = self._scheme
        answer = None if self._question is None else self._question.answer()
        if answer is None:
            return scheme
        try:
            live = {k: Path(v) for k, v in json.loads(answer).items()}
        except (ValueError, TypeError, AttributeError):
            return scheme
        keys = ("purelib", "platlib", "scripts")
        computed = {k: Path(os.path.realpath(getattr(scheme, k))) for k in keys}
        if all(Path(os.path.realpath(live[k])) == computed[k] for k in keys if k in live):
            return _replace_source(scheme, CONFIRMED)
        return InstallScheme(
            scheme.version,
            live.get("purelib", scheme.purelib),
            live.get("platlib", scheme.platlib),
            live.get("scripts", scheme.scripts),
            live.get("data", scheme.data),
            live.get("include", scheme.headers),
            scheme.interpreter,
            FROM_TARGET,
        )


def _replace_source(scheme: InstallScheme, source: str) -> InstallScheme:
    return InstallScheme(
        scheme.version,
        scheme.purelib,
        scheme.platlib,
        scheme.scripts,
        scheme.data,
        scheme.headers,
        scheme.interpreter,
        source,
    )

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
import select
import subprocess
import time
from collections.abc import Callable
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


# The target's side of a ``TargetSession``: its install paths at once, then a
# line per compile job read from stdin (what compileall.compile_file(source,
# ddir=final_dir, force=True) does, without importing compileall).
_SESSION = (
    "import json, os, sys, sysconfig\n"
    "print(json.dumps(sysconfig.get_paths()), flush=True)\n"
    "import py_compile\n"
    "for line in sys.stdin:\n"
    "    try:\n"
    "        for source, final_dir in json.loads(line):\n"
    "            final = os.path.join(final_dir, os.path.basename(source))\n"
    "            py_compile.compile(source, dfile=final, doraise=True)\n"
    "    except Exception:\n"
    "        print('failed', flush=True)\n"
    "    else:\n"
    "        print('compiled', flush=True)\n"
)


class TargetSession:
    """One run of the target for a whole reinstall, started as early as possible.

    It reports the target's install paths (``scheme``), then compiles what it
    is sent (``start_compiling``): the interpreter starts once, while the
    wheels are still planned, instead of once per question. Isolated (``-I``),
    writing no bytecode of its own (``-B``). Each answer is waited for at most
    ``timeout`` seconds (on POSIX hosts); then the target counts as not running.
    """

    def __init__(self, scheme: InstallScheme, timeout: float = 60) -> None:
        self._computed = scheme
        self._timeout = timeout
        self._pending = b""
        self._unread: Callable[[], bool] | None = None  # the job whose answer is not read
        self._scheme: InstallScheme | None = None
        self._process: subprocess.Popen[bytes] | None = None
        if not scheme.interpreter.exists():
            return
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
        try:
            self._process = subprocess.Popen(
                [str(scheme.interpreter), "-I", "-B", "-c", _SESSION],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,  # warnings of compile() would fill a pipe
                env=env,
            )
        except (OSError, subprocess.SubprocessError):
            self._process = None

    def scheme(self) -> InstallScheme:
        """The install paths: the target's own answer when it runs, else the computed ones."""
        if self._scheme is None:
            self._scheme = _confirmed(self._computed, self._read_line())
        return self._scheme

    @property
    def runs(self) -> bool:
        """The target answered (so it can compile for itself)."""
        return self.scheme().source != COMPUTED and self._process is not None

    def start_compiling(self, sources: list[tuple[Path, Path]]) -> Callable[[], bool]:
        """Send (source, final path) pairs to compile; the result says whether all compiled."""
        if not sources:
            return lambda: True
        if not self.runs:
            return lambda: False
        if self._unread is not None:
            self._unread()  # an earlier job's answer comes first on the pipe
        job = [[str(source), str(final.parent)] for source, final in sources]
        process = self._process
        try:
            assert process is not None and process.stdin is not None
            process.stdin.write(json.dumps(job).encode("ascii") + b"\n")
            process.stdin.flush()
        except OSError:  # it died
            self.close()
            return lambda: False
        answer: list[bool] = []

        def compiled() -> bool:
            if not answer:
                answer.append(self._read_line() == "compiled")
                self._unread = None
            return answer[0]

        self._unread = compiled
        return compiled

    def close(self) -> None:
        """End the run (it only waits for input between questions)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()

    def _read_line(self) -> str | None:
        """The next line the target prints, or None (it failed, exited or timed out)."""
        process = self._process
        if process is None or process.stdout is None:
            return None
        deadline = time.monotonic() + self._timeout
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not _readable(process.stdout.fileno(), remaining):
                self.close()
                return None
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                self.close()
                return None
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode("utf-8", "replace").strip()


def _readable(fd: int, timeout: float) -> bool:
    if os.name != "posix":
        return True  # select() takes only sockets there: a blocking read
    return bool(select.select([fd], [], [], timeout)[0])


def _confirmed(scheme: InstallScheme, answer: str | None) -> InstallScheme:
    """``scheme`` as the target's ``sysconfig.get_paths()`` answer confirms or corrects it."""
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

"""Locate (building on first use) the static musl CPython used by the e2e tests.

pipfix exists because on statically linked CPython builds ``dlopen(NULL)`` fails
with "Dynamic loading not supported": upstream ctypes then cannot even be
imported, python-build-standalone-style ctypes raises from ``ctypes.CDLL(None)``,
and either way the pip wheel bundled with ensurepip crashes, so
``python -m venv`` fails.  Simulations only go so far; the end-to-end tests run
against a real interpreter with that bug.  ``build-static-musl-python.sh``
builds one (upstream CPython 3.11 + musl, fully static) and caches it outside the
checkout; this module runs the script and returns the cache directory, which
holds two relocatable installs of the same build:

* ``upstream-ctypes/``: ctypes as upstream ships it (``import ctypes`` raises
  OSError);
* ``pbs-ctypes/``: ctypes patched like python-build-standalone
  (``import ctypes`` works, ``ctypes.CDLL(None)`` raises OSError).

The first call takes a few minutes and needs root (apt-get); later calls reuse
the cache in about a second.  Set ``PIPFIX_E2E_CACHE`` to move the cache.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections import deque
from pathlib import Path

BUILD_SCRIPT = Path(__file__).resolve().with_name("build-static-musl-python.sh")
PREFIXES = ("upstream-ctypes", "pbs-ctypes")
_LOG_TAIL_LINES = 60


def _log_tail(log_path: Path) -> str:
    with log_path.open(encoding="utf-8", errors="replace") as log:
        return "".join(deque(log, maxlen=_LOG_TAIL_LINES))


def build_static_musl_python() -> Path:
    """Build the static musl CPython if it is not cached yet; return its cache dir.

    The script's stderr goes to a temporary log file, which is deleted on success
    and kept (its path is in the error message) on failure.

    Raises:
        RuntimeError: the script failed or did not report a usable directory;
            the message includes the last lines of its log.
    """
    with tempfile.NamedTemporaryFile(
        prefix="pipfix-static-musl-", suffix=".log", delete=False
    ) as log:
        log_path = Path(log.name)
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            check=False,
        )

    lines = proc.stdout.splitlines()
    cache_dir = Path(lines[-1]) if lines else Path()
    problem = None
    if proc.returncode != 0:
        problem = f"exited with status {proc.returncode}"
    elif not cache_dir.is_absolute():
        problem = f"did not print an absolute path (stdout: {proc.stdout!r})"
    elif not all((cache_dir / prefix / "bin" / "python3").is_file() for prefix in PREFIXES):
        problem = f"printed {cache_dir}, which lacks {' or '.join(PREFIXES)}"
    if problem is not None:
        raise RuntimeError(
            f"{BUILD_SCRIPT.name} {problem}; last {_LOG_TAIL_LINES} lines of {log_path}:\n"
            + _log_tail(log_path)
        )
    log_path.unlink()
    return cache_dir

"""User-facing failures and the exit codes the command line maps them to."""

from __future__ import annotations

import os
from pathlib import Path

EXIT_OK = 0
EXIT_NEEDS_ATTENTION = 1  # check/doctor: something needs patching or fixing
EXIT_ERROR = 2  # bad input, not a Python installation, I/O failure, lock busy
EXIT_UNPATCHABLE = 3  # a shape the codemods cannot guard safely; that wheel was not written


class PipfixError(Exception):
    """An error a user can act on: one line naming the file and the reason.

    The command line prints ``str(error)`` and exits with ``exit_code``; it
    never shows a traceback for these.
    """

    exit_code = EXIT_ERROR

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type[PipfixError], tuple[Path, str]]:
        # Rebuilt from (path, reason), not from the message: a worker process
        # (``parallel``) sends its errors to the parent pickled.
        return (type(self), (self.path, self.reason))


class VerificationError(PipfixError):
    """A wheel whose archive, names or RECORD cannot be trusted."""


class NotAnInstallationError(PipfixError):
    """A target path that is not a Python installation."""


class LockBusyError(PipfixError):
    """Another pipfix run holds the target's lock for longer than we wait."""


def describe_os_error(exc: OSError) -> str:
    """The short reason of an OSError, without Python's ``[Errno N]`` noise."""
    return exc.strerror or str(exc)

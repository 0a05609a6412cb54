"""Results that one worker process computes and the others read instead.

The workers of a parallel run (``parallel``) meet the same source file in
several wheels: pip's vendored modules change little from release to release.
Each result is computed by the first worker that needs it, under an exclusive
lock on a file named by the key; a worker that needs the same result meanwhile
waits for that lock and then reads the result.  If the computing worker dies,
its lock goes with it and the next one computes.  The directory is private to
the run (created 0700 by ``parallel``), so unpickling its files is safe.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, cast

T = TypeVar("T")


class SharedResults:
    """Results by key (bytes, e.g. a content digest), shared through ``directory``.

    Sharing only saves work: when the directory fails (full, removed), each
    process computes what it needs itself.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def get(self, key: bytes, compute: Callable[[], T]) -> T:
        """The result stored under ``key``, computed by this process if no other has."""
        name = key.hex()
        try:
            lock = os.open(self.directory / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return compute()
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # while another process computes it
            found = self._load(name)
            if found is not _MISSING:
                return cast(T, found)
            result = compute()
            self._store(name, result)
            return result
        finally:
            os.close(lock)  # releases the lock

    def _load(self, name: str) -> object:
        import pickle  # here: a serial run, which shares nothing, never imports it

        try:
            with (self.directory / f"{name}.result").open("rb") as stored:
                return pickle.load(stored)
        except (OSError, EOFError, pickle.UnpicklingError):
            return _MISSING

    def _store(self, name: str, result: object) -> None:
        import pickle

        partial = self.directory / f"{name}.partial"
        try:
            with partial.open("wb") as out:
                pickle.dump(result, out, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(partial, self.directory / f"{name}.result")  # never half a result
        except OSError:
            pass  # the others compute it themselves


_MISSING = object()

"""Safe writes: exact backups, atomic replacement, and a lock per target.

Every file pipfix changes goes through ``replace_atomically``: the new bytes go
to a temporary file in the same directory, are verified and fsynced (at the
same time), and only then renamed over the old file, so a crash leaves either
the old or the new file, never a torn one. Backups sit in a ``.pipfix``
directory next to the file, where ensurepip never looks (it only picks
``pip-*.whl`` / ``setuptools-*.whl`` from the wheel directory itself).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from . import faults
from .errors import LockBusyError, PipfixError, describe_os_error

STATE_DIRNAME = ".pipfix"
BACKUP_SUFFIX = ".orig"


def state_dir_for(path: Path) -> Path:
    """The ``.pipfix`` directory that serves ``path`` (itself, for files inside one)."""
    return path.parent if path.parent.name == STATE_DIRNAME else path.parent / STATE_DIRNAME


def backup_path_for(path: Path) -> Path:
    """Where the exact original of ``path`` is kept."""
    return state_dir_for(path) / (path.name + BACKUP_SUFFIX)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    if sys.platform == "win32":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_renames(directory: Path) -> None:
    """``fsync_directory`` after ``PreparedReplace.commit(sync_directory=False)``:
    one fsync makes every rename made in ``directory`` so far durable."""
    try:
        fsync_directory(directory)
    except OSError as exc:
        raise PipfixError(directory, f"cannot write: {describe_os_error(exc)}") from None


def _ensure_dir(directory: Path) -> bool:
    """Create ``directory`` if needed; True when this call created it."""
    if directory.is_dir():
        return False
    try:
        directory.mkdir()
    except FileExistsError:
        return False
    except OSError as exc:
        raise PipfixError(directory, f"cannot create: {describe_os_error(exc)}") from None
    return True


def replace_atomically(
    path: Path,
    data: bytes,
    verify: Callable[[Path], None] | None = None,
    staging_root: Path | None = None,
) -> None:
    """Write ``data`` to ``path`` via a verified, fsynced temporary file.

    The temporary file has the final file name inside a private directory next
    to ``path`` (same filesystem), so readers that insist on a wheel file name
    can verify it before the rename. ``staging_root`` must be on the same
    filesystem; it defaults to the ``.pipfix`` directory next to ``path``.
    """
    PreparedReplace(path, data, verify, staging_root).commit()


class PreparedReplace:
    """``replace_atomically`` in two halves: the verified, fsynced temporary file is
    written now; ``commit`` renames it over the path, ``discard`` drops it.

    A run over many wheels prepares each output while it still plans the others,
    and commits them all only when every plan succeeded.
    """

    def __init__(
        self,
        path: Path,
        data: bytes,
        verify: Callable[[Path], None] | None = None,
        staging_root: Path | None = None,
    ) -> None:
        self.path = path
        self._state = staging_root if staging_root is not None else state_dir_for(path)
        self._created = _ensure_dir(self._state)
        try:
            self._staging = Path(tempfile.mkdtemp(prefix="tmp-", dir=self._state))
        except OSError as exc:
            if self._created:
                clean_state_dir(self._state)
            raise PipfixError(self._state, f"cannot write: {describe_os_error(exc)}") from None
        self._temporary = self._staging / path.name
        try:
            faults.step(f"write {self._temporary}")
            with self._temporary.open("xb") as handle:
                handle.write(data)
                handle.flush()
                with _fsynced_meanwhile(handle.fileno()):
                    if path.exists():
                        shutil.copymode(path, self._temporary)
                    if verify is not None:
                        verify(self._temporary)
        except BaseException as exc:
            self.discard()
            if isinstance(exc, OSError):
                raise PipfixError(path, f"cannot write: {describe_os_error(exc)}") from None
            raise

    def commit(self, sync_directory: bool = True) -> None:
        """Rename the verified temporary file over the path, and fsync its directory
        (unless ``sync_directory`` is False: the caller does it once for several)."""
        replaced = False
        try:
            faults.step(f"rename over {self.path}")
            os.replace(self._temporary, self.path)
            replaced = True
            if sync_directory:
                fsync_directory(self.path.parent)
        except OSError as exc:
            raise PipfixError(self.path, f"cannot write: {describe_os_error(exc)}") from None
        finally:
            self._clean(replaced)

    def discard(self) -> None:
        """Drop the temporary file: the path stays as it was."""
        self._clean(replaced=False)

    def _clean(self, replaced: bool) -> None:
        shutil.rmtree(self._staging, ignore_errors=True)
        if self._created and (not replaced or self.path.parent != self._state):
            # Nothing of this write stays in a state directory it created (an
            # output directory of patch-wheel keeps only the wheels).
            clean_state_dir(self._state)


@contextlib.contextmanager
def _fsynced_meanwhile(fd: int) -> Iterator[None]:
    """``fsync(fd)`` in a thread while the block runs (verification reads the page
    cache, not the disk); the block's end waits for it and raises its error."""
    failed: list[OSError] = []

    def sync() -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            failed.append(exc)

    thread = threading.Thread(target=sync, name="pipfix-fsync")
    thread.start()
    try:
        yield
    finally:
        thread.join()
    if failed:
        raise failed[0]


def ensure_backup(path: Path, original: bytes) -> Path:
    """Keep an exact copy of ``original`` (the verified bytes of ``path``).

    An existing backup is never overwritten: it must already hold the same
    bytes, or we refuse rather than lose the only original.
    """
    backup = backup_path_for(path)
    expected = hashlib.sha256(original).hexdigest()
    if backup.exists():
        if sha256_file(backup) != expected:
            raise PipfixError(backup, "existing backup differs from the file it would back up")
        return backup
    replace_atomically(backup, original, expect_sha256(expected))
    return backup


def expect_sha256(expected: str) -> Callable[[Path], None]:
    """A verifier for ``replace_atomically``: the written file has this sha256."""

    def check(candidate: Path) -> None:
        if sha256_file(candidate) != expected:
            raise PipfixError(candidate, "written bytes do not read back identically")

    return check


def remove_stale_staging(directory: Path) -> None:
    """Drop the temporary files of a run that was killed, and its lock file if no run
    holds it (call under the target's lock)."""
    if directory.is_dir():
        for leftover in directory.glob("tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        _remove_stale_lock(directory / "lock")


def clean_state_dir(directory: Path) -> None:
    """Remove a ``.pipfix`` directory that holds nothing (but a stale lock) any more."""
    _remove_stale_lock(directory / "lock")
    with contextlib.suppress(OSError):
        directory.rmdir()


def _remove_stale_lock(lock_file: Path) -> None:
    """Remove a lock file nobody holds (a killed run's). Safe at any time: we hold it
    while we remove it, and whoever locks a removed file starts over (``_acquire``)."""
    if sys.platform == "win32" or not lock_file.is_file():
        return
    import fcntl

    try:
        fd = os.open(lock_file, os.O_RDWR)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _is_current(fd, lock_file):
            os.unlink(lock_file)
    except OSError:
        pass  # held by a live run (or gone already): not ours to remove
    finally:
        os.close(fd)


@contextlib.contextmanager
def target_lock(lock_dir: Path, timeout: float = 60.0) -> Iterator[None]:
    """Serialize pipfix runs that write to the same target.

    A second run waits up to ``timeout`` seconds, saying so on stderr, then
    fails with a clear error; it never writes concurrently.

    The lock file is removed when the run ends (and its ``.pipfix`` directory,
    if that leaves it empty), so that a run leaves nothing behind it did not
    mean to keep -- ``restore`` gives back the exact original tree. That is safe
    because a run that got the lock checks that the file it locked is still the
    one at ``lock_file``; a waiter that locked a removed file starts over.
    """
    lock_file = lock_dir / "lock"
    fd = _acquire(lock_dir, lock_file, timeout)
    try:
        remove_stale_staging(lock_dir)
        yield
    finally:
        if sys.platform != "win32":  # still ours until the close below
            with contextlib.suppress(OSError):
                os.unlink(lock_file)
        os.close(fd)
        clean_state_dir(lock_dir)


def _open_lock(lock_dir: Path, lock_file: Path) -> int | None:
    """The lock file's descriptor, or None if its directory vanished meanwhile."""
    _ensure_dir(lock_dir)
    try:
        return os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
        return None  # a run that just ended removed the empty directory: again
    except OSError as exc:
        raise PipfixError(lock_file, f"cannot create lock: {describe_os_error(exc)}") from None


def _is_current(fd: int, lock_file: Path) -> bool:
    try:
        on_disk = os.stat(lock_file)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _acquire(lock_dir: Path, lock_file: Path, timeout: float) -> int:
    if sys.platform == "win32":  # pragma: no cover - Windows hosts lock by msvcrt
        import msvcrt

        fd = _open_lock(lock_dir, lock_file)
        assert fd is not None
        msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
        return fd
    import fcntl

    deadline = time.monotonic() + timeout
    announced = False
    while True:
        fd = _open_lock(lock_dir, lock_file)
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise PipfixError(
                        lock_file, f"cannot lock: {describe_os_error(exc)}"
                    ) from None
            else:
                if _is_current(fd, lock_file):
                    return fd
                os.close(fd)  # the run before us removed it as it ended: take the new one
                continue
        if time.monotonic() >= deadline:
            raise LockBusyError(
                lock_file, f"another pipfix run holds the lock (waited {timeout:g} s)"
            )
        if not announced:
            print(f"pipfix: waiting for another run to release {lock_file}", file=sys.stderr)
            announced = True
        time.sleep(0.1)

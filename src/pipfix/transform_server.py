"""One transform helper for every worker of a parallel run.

Without it, each worker of a parallel run (``parallel``) imports libcst itself
(0.1-0.2 s of CPU each, on CPUs the run keeps busy verifying) and runs the
codemods on its own wheels.  Instead the run forks one helper as it starts (the
command line: before importing the rest of pipfix), which imports libcst while
the workers are being set up, transforms the likely modules of the run's wheels
(``peek``) whenever no worker waits, and answers the workers, who connect to it
over a Unix socket in a private directory.  Each distinct source is transformed
once, whichever worker asks.

The rules of ``transform_helper`` hold here too: the helper only computes,
keeps no inherited descriptor but its socket, its lifeline and standard error,
and leaves with ``os._exit``; every failure of it leaves the module to the
worker that asked, which then does what it does without a helper.  It ends
with the run's parent: it serves until its lifeline, a pipe whose other end
only the parent holds, reads end of file, and then removes its socket and
directory, so that a parent killed mid-run leaves neither behind.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from .transform_helper import (
    CHUNK,
    TransformHelper,
    computed,
    frame,
    keep_only,
    may_fork,
    take_messages,
    transform_ahead,
)

if TYPE_CHECKING:
    from .transform_helper import Wire

    # A job's source and the codemods in scope it was sent with (None: unscreened).
    _Job = tuple[bytes, frozenset[str] | None]

_SOCKET_NAME = "transforms.sock"


class TransformServer:
    """The parent's end: workers ``join`` the helper; ``close`` ends it."""

    def __init__(self, pid: int, directory: Path, lifeline: int) -> None:
        self._pid = pid
        self._parent = os.getpid()
        self.directory = directory
        self.address = str(directory / _SOCKET_NAME)
        self.lifeline = lifeline  # the parent's end: the helper serves while it is open

    @classmethod
    def start(
        cls, looking_at: Sequence[Path] = (), use_cache: bool = False
    ) -> TransformServer | None:
        """Fork the helper, which transforms the likely modules of ``looking_at``
        whenever no worker waits (``use_cache``: whether their plans may take
        cached outputs); None where it cannot (or should not) run."""
        if not may_fork():
            return None
        import shutil

        directory = _socket_directory()
        if directory is None:
            return None
        try:
            pid, lifeline = _fork_serving(directory, looking_at, use_cache)
        except OSError:
            shutil.rmtree(directory, ignore_errors=True)
            return None
        return cls(pid, directory, lifeline)

    @property
    def pid(self) -> int:
        return self._pid

    def join(self) -> TransformHelper | None:
        """A client of the helper (None where it cannot be reached: the caller
        computes); in a worker forked after ``start``, which lets go of its copy of
        the lifeline first (the helper is to end with the parent, not the workers)."""
        if os.getpid() != self._parent:
            with contextlib.suppress(OSError):
                os.close(self.lifeline)
        return TransformHelper.connected(self.address)

    def stop(self) -> None:
        """End the helper (it has nothing to save) without waiting for it to go."""
        if self.lifeline >= 0:
            with contextlib.suppress(OSError):
                os.close(self.lifeline)
            self.lifeline = -1
        if self._pid != 0:
            with contextlib.suppress(OSError):
                os.kill(self._pid, signal.SIGKILL)

    def close(self) -> None:
        """End the helper, reap it and remove its directory."""
        import shutil

        self.stop()
        if self._pid != 0:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._pid, 0)
            self._pid = 0
        shutil.rmtree(self.directory, ignore_errors=True)


# A Unix socket's path is at most 107 bytes on Linux (108 with its terminating NUL).
_SOCKET_PATH_MAX = 107
_SHORT_TEMPORARY = "/tmp"


def _socket_directory() -> Path | None:
    """A new private directory (0700) for the socket: in the temporary directory,
    or in /tmp where a deep one (a CI workspace's, a sandbox's) would make the
    socket's path too long; None where neither can be had."""
    import tempfile

    for parent in (None, _SHORT_TEMPORARY):
        try:
            directory = Path(tempfile.mkdtemp(prefix="pipfix-transforms-", dir=parent))
        except OSError:
            continue
        if len(os.fsencode(directory / _SOCKET_NAME)) <= _SOCKET_PATH_MAX:
            return directory
        with contextlib.suppress(OSError):
            directory.rmdir()
    return None


def _fork_serving(
    directory: Path, looking_at: Sequence[Path], use_cache: bool
) -> tuple[int, int]:
    """Listen at ``directory``'s socket and fork the helper serving it: its pid and
    this process's end of its lifeline (whatever fails raises, and is closed)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(directory / _SOCKET_NAME))
        listener.listen(64)
        lifeline_read, lifeline_write = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(lifeline_read)
            os.close(lifeline_write)
            raise
        if pid == 0:
            os.close(lifeline_write)
            _serve(listener, lifeline_read, directory, looking_at, use_cache)
    os.close(lifeline_read)
    return pid, lifeline_write


class _Answers:
    """Results by job, each computed once: first those asked for, then, while
    nobody waits, those of the likely modules of the run's wheels, one by one."""

    def __init__(self, looking_at: Sequence[Path], use_cache: bool) -> None:
        from .peek import likely_transforms_each

        self._known: dict[_Job, Wire | None] = {}
        self._wheels = likely_transforms_each(looking_at, use_cache)
        self._modules: Iterator[tuple[str, bytes]] = iter(())
        self.ahead_pending = True

    def answer(self, path: str, source: bytes, in_scope: Collection[str] | None) -> Wire | None:
        """The result of a job (None if the transform raises: the worker computes
        it, and meets the error itself)."""
        job = (source, None if in_scope is None else frozenset(in_scope))
        if job not in self._known:
            self._known[job] = computed(path, source, in_scope)
        return self._known[job]

    def compute_ahead(self) -> None:
        """Transform the next likely module not known yet, if any is left."""
        for path, source in self._likely_modules():
            if (source, None) in self._known:
                continue
            known = transform_ahead(path, source)
            if known is not None:
                in_scope, wire = known
                self._known[(source, None)] = self._known[(source, in_scope)] = wire
            return
        self.ahead_pending = False

    def _likely_modules(self) -> Iterator[tuple[str, bytes]]:
        while True:
            yield from self._modules
            found = next(self._wheels, None)
            if found is None:
                return
            self._modules = iter(found)


def _serve(
    listener: socket.socket,
    lifeline: int,
    directory: Path,
    looking_at: Sequence[Path],
    use_cache: bool,
) -> NoReturn:
    """In the helper: ``_answer_until_the_lifeline_ends``, then remove the socket and
    its directory (the parent, if it was killed, cannot); never returns."""
    code = 1
    try:
        gc.freeze()  # this process's objects are the parent's: never finalize them here
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends the helper with its parent
        keep_only(listener.fileno(), lifeline)
        _answer_until_the_lifeline_ends(listener, lifeline, _Answers(looking_at, use_cache))
        with contextlib.suppress(OSError):  # a parent that stops it removes them too
            os.unlink(directory / _SOCKET_NAME)
            os.rmdir(directory)
        code = 0
    finally:
        os._exit(code)


def _answer_until_the_lifeline_ends(
    listener: socket.socket, lifeline: int, answers: _Answers
) -> None:
    """Accept clients and answer their jobs, computing ahead while none waits,
    until the parent closes the lifeline (or is gone)."""
    clients: dict[int, tuple[socket.socket, bytearray]] = {}
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    poller.register(lifeline, select.POLLIN)
    while True:
        events = poller.poll(0 if answers.ahead_pending else None)
        if not events:
            answers.compute_ahead()
            continue
        for fd, _event in events:
            if fd == lifeline:
                return
            if fd == listener.fileno():
                with contextlib.suppress(OSError):
                    client, _ = listener.accept()
                    clients[client.fileno()] = (client, bytearray())
                    poller.register(client, select.POLLIN)
            elif fd in clients and not _serve_client(*clients[fd], answers):
                poller.unregister(fd)
                clients.pop(fd)[0].close()


def _serve_client(client: socket.socket, pending: bytearray, answers: _Answers) -> bool:
    """Answer the jobs ``client`` has sent in full; False once it is gone."""
    try:
        chunk = client.recv(CHUNK)
    except OSError:
        return False
    if not chunk:
        return False
    pending += chunk
    for key, path, source, in_scope in take_messages(pending):
        try:
            client.sendall(frame((key, answers.answer(path, source, in_scope))))
        except OSError:
            return False
    return True

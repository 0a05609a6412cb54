"""A forked helper process that runs the codemods while this process goes on.

Importing libcst takes longer (0.1-0.2 s) than verifying and screening a whole
wheel.  A serial run (``parallel.plan_all`` below its worker threshold) forks
this helper as it starts, given the paths of its wheels; the command line
forks it even earlier, before importing the rest of pipfix (``started_early``).
The helper first looks at the wheels itself (``peek``): when one has a module
the codemods may change, it imports libcst at once and transforms the likely
ones ahead.  Then it answers the modules this process sends (those ahead at
once), while this process verifies and screens the wheels, and the next one.
A helper that found nothing imports libcst only when it is sent a module.

The helper only computes.  It keeps no inherited descriptor but its two pipes
and standard error (an inherited ``flock`` descriptor would hold this
process's locks), writes nothing but its answers, never collects this
process's objects, and leaves with ``os._exit`` (no exit handlers, no flushing
of inherited buffers).  Jobs and answers cross the pipes as ``marshal`` data
(bytes, strings and tuples; ``marshal`` is built in, where ``pickle`` and
``hashlib`` would be imports on the way to the helper's first answer): they come
from this process's own child, over a pipe no other process holds.  Every failure of the
helper (it cannot start, it dies, a transform raises there) leaves the module
to this process, which then does exactly what it does without a helper: a
helper can make a run faster, never different.

The parent's end, ``TransformHelper``, is also how each worker of a parallel
run talks to that run's helper (``transform_server``): one socket instead of
two pipes, the same frames.
"""

from __future__ import annotations

import contextlib
import gc
import marshal
import os
import select
import signal
import struct
import sys
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from .forking import fork_is_safe, usable_cpus

if TYPE_CHECKING:
    from .codemods.model import SourceResult
    from .transform_server import TransformServer

    # A result as it crosses a pipe: (source, applied, ((path, line, reason), ...)).
    Wire = tuple[bytes, tuple[str, ...], tuple[tuple[str, int, str], ...]]
    # Results computed ahead, by the source they were computed from.
    _Ahead = dict[bytes, tuple[frozenset[str], "Wire"]]

_FRAME_HEADER = struct.Struct("!Q")
CHUNK = 1 << 16  # bytes read or written at once


def frame(message: Any) -> bytes:
    """``message`` (a job or an answer) as it crosses a pipe or socket: its length, then
    its ``marshal`` data."""
    data = marshal.dumps(message)
    return _FRAME_HEADER.pack(len(data)) + data


def take_messages(pending: bytearray) -> list[Any]:
    """The messages framed whole at the start of ``pending``, which keeps the rest."""
    messages: list[Any] = []
    while len(pending) >= _FRAME_HEADER.size:
        (length,) = _FRAME_HEADER.unpack_from(pending)
        end = _FRAME_HEADER.size + length
        if len(pending) < end:
            break
        messages.append(marshal.loads(pending[_FRAME_HEADER.size : end]))
        del pending[:end]
    return messages


def may_fork() -> bool:
    """Whether forking is safe here (``forking``) and there is a second CPU for
    the helper to work on."""
    return fork_is_safe() and usable_cpus() >= 2


class TransformHelper:
    """The parent's end: send modules with ``submit``, collect with ``result``."""

    def __init__(
        self, pid: int, to_helper: int, from_helper: int, ends: tuple[int, ...] = ()
    ) -> None:
        self._pid = pid  # 0: not this process's child (a client of ``transform_server``)
        self.pipe_ends = ends  # the helper's descriptors (the only ones it keeps but 0-2)
        self._to_helper = to_helper
        self._from_helper = from_helper
        self._outgoing = bytearray()
        self._incoming = bytearray()
        self._submitted: set[bytes] = set()
        self._results: dict[bytes, SourceResult | None] = {}
        self._running = True

    @classmethod
    def start(
        cls, looking_at: Sequence[Path] = (), use_cache: bool = False
    ) -> TransformHelper | None:
        """Fork the helper, which first looks at the wheels ``looking_at`` (``peek``;
        ``use_cache``: whether their plans may take cached outputs); None where
        it cannot (or should not) run."""
        if not may_fork():
            return None
        try:
            jobs_read, jobs_write = os.pipe()
        except OSError:
            return None
        try:
            answers_read, answers_write = os.pipe()
        except OSError:
            _close(jobs_read, jobs_write)
            return None
        try:
            pid = os.fork()
        except OSError:
            _close(jobs_read, jobs_write, answers_read, answers_write)
            return None
        if pid == 0:
            _serve(jobs_read, answers_write, looking_at, use_cache)
        _close(jobs_read, answers_write)
        os.set_blocking(jobs_write, False)  # never blocks: see _exchange
        return cls(pid, jobs_write, answers_read, (jobs_read, answers_write))

    @classmethod
    def connected(cls, address: str) -> TransformHelper | None:
        """A client of the helper serving at the Unix socket ``address``
        (``transform_server``); None where it cannot connect."""
        import socket

        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                connection.connect(address)
                connection.setblocking(False)  # never blocks: see _exchange
                fd = connection.detach()
        except OSError:
            return None
        return cls(0, fd, fd)

    @property
    def pid(self) -> int:
        return self._pid

    def submit(
        self, key: bytes, path: str, source: bytes, in_scope: Collection[str] | None
    ) -> None:
        """Have the helper transform ``source`` (what ``engine.transform_source`` does
        with the codemods ``in_scope``; None: the helper screens it first, as
        ``codemods.transform_source`` does)."""
        if not self._running or key in self._submitted:
            return
        self._submitted.add(key)
        self._outgoing += frame((key, path, source, None if in_scope is None else tuple(in_scope)))
        self._exchange(wait_for=None)

    def result(self, key: bytes) -> SourceResult | None:
        """The helper's result for ``key``; None when it has none (the caller computes it)."""
        if key not in self._submitted:
            return None
        self._exchange(wait_for=key)
        return self._results.pop(key, None)

    def stop(self) -> None:
        """Stop the helper (it has nothing to save) without waiting for it to go;
        a client only lets go of its connection."""
        self._stopped()
        if self._pid != 0:  # not reaped: the pid is still this child's
            with contextlib.suppress(OSError):
                os.kill(self._pid, signal.SIGKILL)

    def close(self) -> None:
        """Stop the helper if it still runs, and reap it."""
        self.stop()
        if self._pid == 0:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self._pid, 0)
        self._pid = 0

    def _stopped(self) -> None:
        if self._running:
            self._running = False
            _close(*{self._to_helper, self._from_helper})  # one socket for a client

    def _exchange(self, wait_for: bytes | None) -> None:
        """Write pending jobs and read answers as the pipes allow; until ``wait_for``'s
        answer is in (or the helper is gone), or, without it, until neither pipe is ready.

        Both directions in one loop: a parent blocked on a full job pipe while
        the helper blocks on a full answer pipe would wait for ever.
        """
        while self._running and (wait_for is None or wait_for not in self._results):
            wanted = {self._from_helper: select.POLLIN}
            if self._outgoing:  # a client's socket is both ends: one registration for both
                wanted[self._to_helper] = wanted.get(self._to_helper, 0) | select.POLLOUT
            poller = select.poll()
            for fd, mask in wanted.items():
                poller.register(fd, mask)
            events = poller.poll(None if wait_for is not None else 0)
            if not events:
                return
            one_socket = self._to_helper == self._from_helper
            for fd, event in events:
                writable = fd == self._to_helper and (not one_socket or event & select.POLLOUT)
                if self._running and writable:
                    self._write()
                readable = fd == self._from_helper and (not one_socket or event & ~select.POLLOUT)
                if self._running and readable:
                    self._read()

    def _write(self) -> None:
        try:
            written = os.write(self._to_helper, self._outgoing[:CHUNK])
        except BlockingIOError:
            return
        except OSError:  # the helper is gone
            self._stopped()
            return
        del self._outgoing[:written]

    def _read(self) -> None:
        try:
            chunk = os.read(self._from_helper, CHUNK)
        except BlockingIOError:  # a client's socket is non-blocking both ways
            return
        except OSError:
            chunk = b""
        if not chunk:  # the helper is gone: what it did not answer is computed here
            self._stopped()
            return
        self._incoming += chunk
        for key, wire in take_messages(self._incoming):
            self._results[key] = None if wire is None else _from_wire(wire)


def _close(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


_early: TransformHelper | TransformServer | None = None


@contextlib.contextmanager
def started_early(looking_at: Sequence[Path], use_cache: bool, workers: bool) -> Iterator[None]:
    """For the command line: fork the helper now, before the rest of pipfix is
    imported, for the run made within this block: a ``TransformHelper`` for a
    serial run or, with ``workers``, a ``transform_server.TransformServer`` for
    a parallel one (``take_early`` and ``take_early_server`` hand it to that
    run, which stops it as soon as its modules are in); stopped if no run took
    it, and reaped, at the end of the block."""
    global _early
    started: TransformHelper | TransformServer | None
    if workers:
        from .transform_server import TransformServer

        started = TransformServer.start(looking_at, use_cache)
    else:
        started = TransformHelper.start(looking_at, use_cache)
    _early = started
    try:
        yield
    finally:
        _early = None
        if started is not None:
            started.close()  # the run only stopped it: its exit overlapped the run's end


def take_early() -> TransformHelper | None:
    """The serial run's helper ``started_early`` forked, once (None if there is
    none; a helper started for workers is stopped: this run would not use it)."""
    return _take_early(TransformHelper)


def take_early_server() -> TransformServer | None:
    """The parallel run's helper ``started_early`` forked, once (None if there is
    none; a serial run's helper is stopped: this run would not use it)."""
    from .transform_server import TransformServer

    return _take_early(TransformServer)


_Early = TypeVar("_Early", "TransformHelper", "TransformServer")


def _take_early(kind: type[_Early]) -> _Early | None:
    global _early
    taken, _early = _early, None
    if isinstance(taken, kind):
        return taken
    if taken is not None:
        taken.stop()
    return None


def to_wire(result: SourceResult) -> Wire:
    return (
        result.source,
        result.applied,
        tuple((u.path, u.line, u.reason) for u in result.unpatchable),
    )


def _from_wire(wire: Wire) -> SourceResult:
    from .codemods.model import SourceResult, Unpatchable

    source, applied, unpatchable = wire
    return SourceResult(
        source, tuple(applied), tuple(Unpatchable(*report) for report in unpatchable)
    )


def transforms_ahead(looking_at: Sequence[Path], use_cache: bool) -> _Ahead:
    """What the helper computes before any job: the results of the modules ``peek``
    finds, by their source (with the codemods in scope for them), so that the job
    that asks for one, with the same codemods in scope, is answered at once."""
    from .peek import likely_transforms

    ahead: _Ahead = {}
    for path, source in likely_transforms(looking_at, use_cache):
        known = transform_ahead(path, source)
        if known is not None:
            ahead[source] = known
    return ahead


def transform_ahead(path: str, source: bytes) -> tuple[frozenset[str], Wire] | None:
    """The codemods in scope for ``source`` (its screen) and its result; None where
    the transform raises (the job that asks for it then computes it, and fails, itself)."""
    from .codemods.model import SourceResult
    from .codemods.screen import screen

    in_scope, parsed = screen(source)
    if not in_scope:  # unchanged: the job for it (sent unscreened) is answered at once
        return in_scope, to_wire(SourceResult(source, (), ()))
    from .codemods.engine import transform_source  # libcst: due, the pre-filter let it by

    try:
        return in_scope, to_wire(transform_source(path, source, in_scope, parsed))
    except Exception:
        return None


def _serve(jobs: int, answers: int, looking_at: Sequence[Path], use_cache: bool) -> NoReturn:
    """In the helper: compute ``transforms_ahead``, then answer each job read from
    ``jobs`` until it ends; never returns."""
    code = 1
    try:
        gc.freeze()  # this process's objects are the parent's: never finalize them here
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends the helper with its parent
        keep_only(jobs, answers)
        ahead = transforms_ahead(looking_at, use_cache)
        pending = bytearray()
        with os.fdopen(answers, "wb") as writer:
            while chunk := os.read(jobs, CHUNK):
                pending += chunk
                for key, path, source, in_scope in take_messages(pending):
                    writer.write(frame((key, _answer(ahead, path, source, in_scope))))
                writer.flush()
        code = 0
    finally:
        os._exit(code)


def _answer(
    ahead: _Ahead, path: str, source: bytes, in_scope: Collection[str] | None
) -> Wire | None:
    """The result of one job: from ``ahead`` (computed with this helper's own screen
    of the same source, so for an unscreened job too), or computed (None if that
    raises: the parent computes it, and meets the error itself)."""
    known = ahead.pop(source, None)
    if known is not None and (in_scope is None or known[0] == frozenset(in_scope)):
        return known[1]
    return computed(path, source, in_scope)


def computed(path: str, source: bytes, in_scope: Collection[str] | None) -> Wire | None:
    """A job's result computed in the helper (``in_scope`` None: it screens first);
    None if that raises: the asking process computes it, and meets the error itself."""
    from .codemods.engine import transform_source

    try:
        return to_wire(transform_source(path, source, in_scope))
    except Exception:
        return None


def keep_only(*kept: int) -> None:
    """Close every inherited descriptor but ``kept`` and standard error (where
    ``-X importtime`` and the like report, as for this process); standard input
    and output become /dev/null.  OSError if that cannot be done quickly: the
    helper then ends, and this process does its work."""
    try:
        open_now = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc: a chroot or a sandbox
        _close_all_but(kept)
    else:
        for fd in open_now:
            if fd > 2 and fd not in kept:
                _close(fd)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(null, fd)
    if null > 2 and null not in kept:
        os.close(null)


# Without /proc, every number below the open-file limit is closed.  CPython 3.10
# and later close a range with one ``close_range`` call where Linux has it; 3.9
# calls ``close`` once per number (~0.25 ms per thousand), so there it does so
# only up to this limit (~16 ms), not up to a container's million (~0.25 s).
_ONE_BY_ONE_UP_TO = 1 << 16
_CLOSES_RANGES = sys.version_info >= (3, 10)


def _close_all_but(kept: Collection[int]) -> None:
    """Close descriptors 3 and up, below the open-file limit, but ``kept``."""
    import resource

    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit == resource.RLIM_INFINITY or (limit > _ONE_BY_ONE_UP_TO and not _CLOSES_RANGES):
        raise OSError("no /proc, and too many descriptors to close one by one")
    low = 3
    for fd in sorted(fd for fd in kept if fd >= low):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, max(low, limit))

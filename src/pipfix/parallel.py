"""Planning many wheels at once, on every CPU the process may use.

Verifying a wheel (inflate and hash every member) and running the codemods
are CPU-bound and independent from wheel to wheel, so a run over many wheels
(``patch-wheel`` on a directory of them, ``apply --all``) forks workers that
each verify, plan, build and check one wheel at a time, a run of one project's
consecutive releases each (``work_order``), while one helper
(``transform_server``, forked first) imports libcst once and transforms for
all of them, each distinct source once (without it, a source file met in
several wheels is transformed by one worker and read by the others:
``shared_results``); the parent receives the finished plans in input order
and does all the writing, under its locks, exactly as a serial run does.  A
worker may write an output's verified temporary file itself (``prepare``:
patch-wheel -o), which the parent alone renames into place once every plan is
in.  The output bytes are the same either way: a plan depends only on its input.

Serial instead when forking is not safe or not worth it: fewer than
``forking.MIN_WHEELS`` wheels (unless ``jobs`` asks for workers), one CPU, a
platform other than Linux, other threads alive in this process (a fork
copies their locks, held or not), or no semaphores that processes can share
(no usable /dev/shm: a pool cannot run).  A serial run still leaves libcst to one
forked helper where it may (``transform_helper``): it verifies and screens
each wheel, and the next one, while the helper imports libcst and transforms.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from . import patcher, wheelfile
from .errors import PipfixError
from .forking import fork_is_safe, planned_workers
from .shared_results import SharedResults

if TYPE_CHECKING:
    from concurrent.futures import Future

    from .store import PreparedReplace
    from .transform_server import TransformServer
    from .work_order import WorkOrder

# A serial run verifies and screens this many wheels ahead of the one whose
# plan it finishes: their modules go to the transform helper meanwhile.
LOOKAHEAD = 1


Prepare = Callable[[patcher.WheelPlan], "PreparedReplace"]
OnPlan = Callable[[int, patcher.WheelPlan, Optional["PreparedReplace"]], None]


def plan_all(
    paths: Sequence[Path],
    *,
    use_cache: bool = False,
    jobs: int | None = None,
    on_plan: OnPlan | None = None,
    inputs_needed: bool = True,
    prepare: Prepare | None = None,
) -> list[patcher.WheelPlan]:
    """``patcher.plan`` for each path, in order; the first error in input order is raised.

    ``jobs``: most worker processes to use; by default one per usable CPU from
    ``forking.MIN_WHEELS`` wheels on.  An explicit ``jobs`` above 1 forks for any two
    wheels or more; 1 is serial.  ``on_plan(index, plan, prepared)`` runs in this
    process for each plan in input order as soon as it and those before it are
    there, while the workers go on with the others (an error it raises ends the
    run).
    ``inputs_needed`` False: the caller only writes the outputs of the wheels
    that need a patch, so a worker does not send their input bytes back
    (``VerifiedWheel.data`` is then empty: ~2 MB less to pickle and pipe per pip
    wheel).  ``prepare(plan)`` (picklable; needs ``on_plan``): for each plan that
    needs a patch, its output written where it is to go and verified there, by
    the process that made the plan, which then drops the output's bytes (a
    worker sends none back, and its parent does not read them again); what it
    returns is ``on_plan``'s ``prepared``, the caller's from then on.  A run that
    fails discards those it has not handed over, once no worker runs.
    """
    if prepare is not None and on_plan is None:
        raise TypeError("prepare needs on_plan, which takes what it prepared")
    workers = planned_workers(len(paths), jobs)
    order = _work_order(paths, workers) if workers > 1 and fork_is_safe() else None
    plans: list[patcher.WheelPlan] = []
    if order is None:
        with wheelfile.reusing_payloads(), patcher.transforms_in_a_helper(paths, use_cache):
            started: deque[patcher.PlanInProgress] = deque()
            for path in paths:
                started.append(patcher.start_plan(path, use_cache=use_cache))
                if len(started) > LOOKAHEAD:
                    _finish_next(started, plans, on_plan, prepare)
            while started:
                _finish_next(started, plans, on_plan, prepare)
        return plans
    from . import transform_helper, transform_server

    early = transform_helper.take_early_server()
    server = early or transform_server.TransformServer.start(paths, use_cache)
    from concurrent.futures import ProcessPoolExecutor, as_completed

    shared = _shared_directory()
    lifeline = _lifeline()
    try:
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=order.context,
            initializer=_join_run,
            initargs=(shared, server, lifeline, order),
        ) as pool:
            # The objects of the imports so far stay in the workers' memory as forked:
            # a collection there would relink (write) every one of them, copying its page.
            gc.freeze()
            try:
                futures = [
                    pool.submit(_plan_claimed, use_cache, inputs_needed, prepare) for _ in paths
                ]
            finally:
                gc.unfreeze()
            planned: dict[int, _Planned] = {}
            failed: dict[int, PipfixError] = {}
            try:
                # Plans come in the workers' order (``work_order``); each is handed on in
                # input order as soon as those before it are in, and the first error in
                # input order ends the run once every wheel before it planned well.
                for future in as_completed(futures):
                    index, result, error = future.result()
                    if result is not None:
                        planned[index] = result
                    elif error is not None:
                        failed[index] = error
                    while len(plans) in planned:
                        plan, prepared = planned.pop(len(plans))
                        plans.append(plan)
                        if on_plan is not None:
                            on_plan(len(plans) - 1, plan, prepared)
                    if len(plans) in failed:
                        raise failed[len(plans)]
            except BaseException:
                pool.shutdown(cancel_futures=True)  # do not plan what will not be written
                _discard_prepared(futures, handed=len(plans))
                raise
            return plans
    finally:
        if early is not None:
            early.stop()  # ``started_early`` reaps it when the command is done
        elif server is not None:
            server.close()
        if shared is not None:
            shutil.rmtree(shared, ignore_errors=True)
        for end in lifeline or ():
            os.close(end)


def _work_order(paths: Sequence[Path], workers: int) -> WorkOrder | None:
    """The order in which ``workers`` workers take ``paths`` (``work_order``); None
    where this system has no semaphores that processes share (no /dev/shm, or a
    read-only one, in some sandboxes and chroots): no pool could run, so the run
    is serial."""
    import multiprocessing  # with concurrent.futures: 10-20 ms, for runs that fork only

    from .work_order import WorkOrder

    try:
        return WorkOrder(paths, workers, multiprocessing.get_context("fork"))
    except OSError:
        return None


def _finish_next(
    started: deque[patcher.PlanInProgress],
    plans: list[patcher.WheelPlan],
    on_plan: OnPlan | None,
    prepare: Prepare | None,
) -> None:
    plans.append(started.popleft()())
    prepared = _prepared_output(plans[-1], prepare)
    if on_plan is not None:
        on_plan(len(plans) - 1, plans[-1], prepared)


def _prepared_output(plan: patcher.WheelPlan, prepare: Prepare | None) -> PreparedReplace | None:
    """``prepare(plan)`` for a plan with an output to write, whose bytes the plan
    then drops: they are written, and verified where they lie."""
    if prepare is None or plan.state is not patcher.WheelState.NEEDS_PATCH:
        return None
    prepared = prepare(plan)
    plan.forget_output()
    return prepared


def _discard_prepared(futures: Sequence[Future[_Claimed]], handed: int) -> None:
    """Drop the outputs that workers prepared for a run that failed, but those of
    the first ``handed`` wheels, handed over (after the pool's shutdown: no
    worker writes any more)."""
    for future in futures:
        if future.done() and not future.cancelled() and future.exception() is None:
            index, result, _error = future.result()
            if index >= handed and result is not None and result[1] is not None:
                result[1].discard()


def _shared_directory() -> Path | None:
    """A private directory for the workers' shared results; None: they share nothing."""
    try:
        return Path(tempfile.mkdtemp(prefix="pipfix-shared-"))
    except OSError:
        return None


def _lifeline() -> tuple[int, int] | None:
    """A pipe the workers watch to end with this process, killed or not (None where
    no pipe can be made: they then end with it only when it ends the pool)."""
    try:
        return os.pipe()
    except OSError:
        return None


_order: WorkOrder | None = None


def _join_run(
    shared: Path | None,
    server: TransformServer | None,
    lifeline: tuple[int, int] | None,
    order: WorkOrder,
) -> None:
    """In a worker: end with the parent (``_end_with_the_parent``), have the run's
    transform server compute the transforms, or share their results with the run's
    other workers where it cannot, take its wheels from ``order``, and reuse the
    payloads of the wheel verified just before (for its whole life)."""
    global _order
    order.join()
    _order = order
    if lifeline is not None:
        _end_with_the_parent(lifeline, shared)
    helper = None if server is None else server.join()
    patcher.share_transforms(None if shared is None else SharedResults(shared), helper)
    wheelfile.start_reusing_payloads()


def _end_with_the_parent(lifeline: tuple[int, int], shared: Path | None) -> None:
    """In a worker: a thread that waits for the end of file on ``lifeline``, whose
    writing end only the parent keeps open, and then ends the worker and removes
    the shared results.  The pool would otherwise leave the workers of a parent
    killed mid-run waiting for work forever (they hold the ends of its queues too)."""
    read_end, write_end = lifeline
    os.close(write_end)

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(read_end, 1):
                pass
        if shared is not None:
            shutil.rmtree(shared, ignore_errors=True)
        os._exit(1)

    threading.Thread(target=watch, name="pipfix-lifeline", daemon=True).start()


_Planned = tuple[patcher.WheelPlan, Optional["PreparedReplace"]]
_Claimed = tuple[int, Optional[_Planned], Optional[PipfixError]]


def _plan_claimed(use_cache: bool, input_needed: bool, prepare: Prepare | None) -> _Claimed:
    """In a worker: the next wheel of its run (``work_order``) planned
    (``_plan_and_build``), with its index; a ``PipfixError`` comes back with the
    index too, for the parent to raise the first in input order (another
    exception, a bug, ends the run as it comes)."""
    assert _order is not None, "a worker joins the run first"
    index = _order.claim()
    try:
        return index, _plan_and_build(_order.paths[index], use_cache, input_needed, prepare), None
    except PipfixError as error:
        return index, None, error


def _plan_and_build(
    path: Path, use_cache: bool, input_needed: bool, prepare: Prepare | None
) -> _Planned:
    """In a worker: the plan with its output already built and verified, ready to write,
    or written by ``prepare`` (without the input's bytes unless ``input_needed`` or
    there is nothing to build), and what ``prepare`` returned."""
    plan = patcher.plan(path, use_cache=use_cache)
    if plan.state is not patcher.WheelState.NEEDS_PATCH:
        return replace(plan, wheel=plan.wheel.without_members()), None
    plan.build_verified()
    prepared = _prepared_output(plan, prepare)
    wheel = plan.wheel.without_members()
    return replace(plan, wheel=wheel if input_needed else replace(wheel, data=b"")), prepared

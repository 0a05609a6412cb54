"""The commands behind the CLI and the Python API: apply, check, diff, restore, patch-wheel.

Each command plans every wheel first (verify, classify, compute the patch in
memory) and only then writes, under the target's lock; bad input therefore
stops a run before anything on disk changes.

The commands on installations import what they need of them (``target``,
``install``, ``swap``) when they run: ``patch-wheel`` and ``diff`` of wheel
files never load the reinstall machinery.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import parallel, patcher, record, seals, store
from .errors import (
    EXIT_NEEDS_ATTENTION,
    EXIT_OK,
    EXIT_UNPATCHABLE,
    PipfixError,
    VerificationError,
)
from .patcher import WheelPlan, WheelState
from .reports import RunReport, WheelReport

if TYPE_CHECKING:
    from . import install
    from .target import Installation


def _installations(
    targets: Sequence[str | Path], *, default: bool, under: str | Path | None = None
) -> list[Installation]:
    from .target import find_installation, find_installations_under, running_interpreter_prefix

    if under is not None:
        return [*find_installations_under(Path(under)), *(find_installation(t) for t in targets)]
    if not targets:
        if not default:
            raise PipfixError(
                Path("."), "name a target: commands that write never default to the running Python"
            )
        targets = [running_interpreter_prefix()]
    return [find_installation(t) for t in targets]


def _wheel_paths(installations: Iterable[Installation]) -> list[Path]:
    paths: dict[Path, None] = {}
    for installation in installations:
        paths.update(dict.fromkeys(installation.ensurepip_wheels()))
    return list(paths)


def _report(plan: WheelPlan, action: str, **extra: object) -> WheelReport:
    wheel = plan.wheel
    existing = plan.existing
    fields: dict[str, object] = dict(
        path=str(wheel.path),
        distribution=wheel.distribution,
        version=wheel.version,
        state=plan.state.value,
        action=action,
        reason=plan.reason,
        patches=existing.patches if existing else plan.patches,
        changed_files=existing.changed_files if existing else tuple(c.path for c in plan.changes),
        sha256=wheel.sha256,
        original_sha256=existing.original_sha256 if existing else wheel.sha256,
    )
    fields.update(extra)
    return WheelReport(**fields)  # type: ignore[arg-type]


def _write_patched(plan: WheelPlan, destination: Path, *, backup: bool) -> WheelReport:
    """Build, verify and atomically place the patched wheel at ``destination``."""
    backup_path = store.ensure_backup(plan.wheel.path, plan.wheel.data) if backup else None
    _prepare_output(plan, destination).commit()
    return _written(plan, destination, backup_path)


def _output_into(destination_dir: Path, plan: WheelPlan) -> store.PreparedReplace:
    """``_prepare_output`` under the input's file name in ``destination_dir`` (for
    ``parallel.plan_all``'s ``prepare``: run where the plan is made)."""
    return _prepare_output(plan, destination_dir / plan.wheel.path.name)


def _prepare_output(plan: WheelPlan, destination: Path) -> store.PreparedReplace:
    """The patched wheel built, written next to ``destination`` and verified there."""
    data = plan.build()
    with plan.digesting():
        return store.PreparedReplace(
            destination, data, lambda temporary: patcher.verify_output(temporary, data, plan)
        )


def _written(plan: WheelPlan, destination: Path, backup_path: Path | None) -> WheelReport:
    sha256 = plan.output_sha256()  # verify_output: the file reads back as its bytes
    if plan.use_cache:
        seals.seal(sha256, destination.name)
    return _report(
        plan,
        "written" if backup_path is None else "patched",
        sha256=sha256,
        backup=str(backup_path) if backup_path else None,
        output=str(destination),
    )


def _exit_code(plans: Iterable[WheelPlan], *, applied: bool) -> int:
    states = {plan.state for plan in plans}
    if WheelState.UNPATCHABLE in states:
        return EXIT_UNPATCHABLE if applied else EXIT_NEEDS_ATTENTION
    if not applied and WheelState.NEEDS_PATCH in states:
        return EXIT_NEEDS_ATTENTION
    return EXIT_OK


_IDLE_ACTIONS = {
    WheelState.PATCHED: "already patched",
    WheelState.SAFE: "nothing to do",
    WheelState.UNPATCHABLE: "not written",
}


def check(
    targets: Sequence[str | Path] = (),
    *,
    under: str | Path | None = None,
    use_cache: bool = True,
    jobs: int | None = None,
) -> RunReport:
    """Which ensurepip wheels and installed pips need patching; exit 1 when any does.

    ``jobs``: most wheels verified and planned at once (``parallel.plan_all``).
    """
    installations = _installations(targets, default=True, under=under)
    plans = parallel.plan_all(_wheel_paths(installations), use_cache=use_cache, jobs=jobs)
    reports = tuple(
        _report(p, "would patch" if p.state is WheelState.NEEDS_PATCH else _IDLE_ACTIONS[p.state])
        for p in plans
    )
    installs = _inspect_installs(installations, plans)
    code = _exit_code(plans, applied=False)
    if code == EXIT_OK and any(r.action == "would reinstall" for r in installs):
        code = EXIT_NEEDS_ATTENTION
    return RunReport(
        "check",
        tuple(str(i.prefix) for i in installations),
        reports,
        code,
        installs=tuple(r.to_json() for r in installs),
    )


def _patched_wheels(plans: Iterable[WheelPlan]) -> dict[install.WheelKey, install.PatchedWheel]:
    """Patched bytes (and verified payloads) of every ensurepip wheel, by (name, version)."""
    from . import install

    patched = {}
    for plan in plans:
        wheel = plan.wheel
        key = install.wheel_key(wheel.distribution, wheel.version)
        if plan.state is WheelState.NEEDS_PATCH:
            patched[key] = install.PatchedWheel(
                wheel.path.name, plan.build(), plan.output_payloads()
            )
        elif plan.state is WheelState.PATCHED:
            patched[key] = install.PatchedWheel(wheel.path.name, wheel.data, wheel.contents)
    return patched


def _bundled_by_version(
    installations: Iterable[Installation], patched: dict[install.WheelKey, install.PatchedWheel]
) -> dict[str, list[install.PatchedWheel]]:
    """For --ensurepip: the patched wheels each Python version's ensurepip bundles."""
    from . import install

    bundled: dict[str, list[install.PatchedWheel]] = {}
    for installation in installations:
        for lib in installation.libs:
            for path in sorted(lib.bundled_dir.glob("*.whl")):
                name, version = path.name.split("-")[:2]
                at_hand = patched.get(install.wheel_key(name, version))
                if at_hand is not None:
                    bundled.setdefault(lib.version, []).append(at_hand)
    return bundled


def _inspect_installs(
    installations: Iterable[Installation], plans: list[WheelPlan]
) -> list[install.InstallReport]:
    from . import install

    patched = _patched_wheels(plans)
    reports = []
    for installation in installations:
        reports += install.reinstall(
            installation, patched, {}, install.InstallOptions(dry_run=True)
        )
    return reports


def apply(
    targets: Sequence[str | Path] = (),
    *,
    dry_run: bool = False,
    under: str | Path | None = None,
    relocatable: bool | None = None,
    ensurepip: bool = False,
    reinstall: bool = True,
    use_cache: bool = True,
    jobs: int | None = None,
) -> RunReport:
    """Patch the ensurepip wheels in place (exact backups), then the installed pips.

    ``use_cache``: take patched wheels from (and keep them in) the user's cache.
    ``jobs``: most wheels verified and planned at once (``parallel.plan_all``).
    """
    from . import install, swap

    installations = _installations(targets, default=dry_run, under=under)
    if dry_run:
        report = check(targets, under=under, use_cache=use_cache, jobs=jobs)
        return RunReport(
            "apply",
            report.targets,
            report.wheels,
            _dry_exit(report),
            dry_run=True,
            installs=report.installs,
        )
    options = install.InstallOptions(
        relocatable=relocatable, ensurepip=ensurepip, installed_checked=True
    )
    asked: dict[Path, install.Asked] = {}
    if reinstall:  # the target answers while the wheels are planned and written
        asked = {i.prefix: install.start_asking_for_schemes(i) for i in installations}
    try:
        # Verify everything before taking the lock: bad input must not change a byte.
        paths = _wheel_paths(installations)
        planned = dict(zip(paths, parallel.plan_all(paths, use_cache=use_cache, jobs=jobs)))
        # The wheel directories are locked too, so `patch-wheel --in-place` on the same
        # wheel waits for this run (and the other way round).
        wheel_locks = [
            store.state_dir_for(path)
            for path, plan in planned.items()
            if plan.state is WheelState.NEEDS_PATCH
        ]
        locks = [*(i.state_dir for i in installations), *wheel_locks]
        found: dict[Path, install.Found] = {}
        with _locked(locks), _undo_on_failure() as undo:
            for installation in installations:
                if installation.state_dir.is_dir():
                    swap.complete(installation.state_dir)
                if reinstall:  # under the lock, before the first write, once per run
                    found[installation.prefix] = install.preflight(installation)
            plans = [
                _still_valid(planned.get(path), path, use_cache)
                for path in _wheel_paths(installations)
            ]
            reports = []
            for plan in plans:
                store.remove_stale_staging(store.state_dir_for(plan.wheel.path))
                if plan.state is WheelState.NEEDS_PATCH:
                    undo.append(_undo_wheel_write(plan))
                    reports.append(_write_patched(plan, plan.wheel.path, backup=True))
                else:
                    reports.append(_report(plan, _IDLE_ACTIONS[plan.state]))
            installs: list[install.InstallReport] = []
            if reinstall:
                patched = _patched_wheels(plans)
                bundled = _bundled_by_version(installations, patched)
                for installation in installations:
                    undo.append(_undo_new_installs(installation))
                    installs += install.reinstall(
                        installation,
                        patched,
                        bundled,
                        options,
                        asked.get(installation.prefix),
                        found.get(installation.prefix),
                    )
    finally:
        for started in asked.values():
            install.stop_asking(started)
    return RunReport(
        "apply",
        tuple(str(i.prefix) for i in installations),
        tuple(reports),
        _exit_code(plans, applied=True),
        installs=tuple(r.to_json() for r in installs),
    )


Undo = Callable[[], None]


@contextlib.contextmanager
def _undo_on_failure() -> Iterator[list[Undo]]:
    """A run that fails part-way puts back what it already changed, newest first.

    Every step is itself atomic, so after the undo the target is exactly as it
    was; if an undo step fails too, the backups and journal are still there and
    ``pipfix restore`` or a re-run converges.
    """
    steps: list[Undo] = []
    try:
        yield steps
    except BaseException:
        for step in reversed(steps):
            with contextlib.suppress(Exception):
                step()
        raise


def _undo_wheel_write(plan: WheelPlan) -> Undo:
    path, original = plan.wheel.path, plan.wheel.data
    backup = store.backup_path_for(path)
    had_backup = backup.exists()
    had_state_dir = backup.parent.exists()

    def undo() -> None:
        if path.exists() and store.sha256_file(path) != plan.wheel.sha256:
            store.replace_atomically(path, original, store.expect_sha256(plan.wheel.sha256))
        if not had_backup and backup.exists():
            backup.unlink()
        if not had_state_dir:
            store.remove_stale_staging(backup.parent)
            store.clean_state_dir(backup.parent)

    return undo


def _undo_new_installs(installation: Installation) -> Undo:
    """Restore the installed distributions this run swapped in (not earlier runs')."""
    from . import swap

    installs_dir = installation.state_dir / swap.INSTALLS
    before = set(installs_dir.glob("*")) if installs_dir.is_dir() else set()

    def undo() -> None:
        if not installs_dir.is_dir():
            return
        for install_dir in sorted(set(installs_dir.glob("*")) - before):
            swap.restore(installation.state_dir, install_dir)

    return undo


def _still_valid(plan: WheelPlan | None, path: Path, use_cache: bool = True) -> WheelPlan:
    """The plan made before the lock, unless the file changed in between."""
    if plan is not None and store.sha256_file(path) == plan.wheel.sha256:
        return plan
    return patcher.plan(path, use_cache=use_cache)


def _dry_exit(report: RunReport) -> int:
    unpatchable = any(w.state == WheelState.UNPATCHABLE.value for w in report.wheels)
    return EXIT_UNPATCHABLE if unpatchable else EXIT_OK


@contextlib.contextmanager
def _locked(directories: Iterable[Path]) -> Iterator[None]:
    """Hold the locks of several targets, taken in a fixed order (no deadlock)."""
    with contextlib.ExitStack() as stack:
        for directory in sorted(set(directories)):
            stack.enter_context(store.target_lock(directory))
        yield


def diff(items: Sequence[str | Path] = ()) -> str:
    """The unified diff pipfix would apply, for a target or for wheel files."""
    wheel_files = [Path(i) for i in items if str(i).endswith(".whl")]
    others = [i for i in items if not str(i).endswith(".whl")]
    paths = list(wheel_files)
    if others or not items:
        paths += _wheel_paths(_installations(others, default=True))
    return "".join(patcher.plan(path).diff() for path in paths)


def restore(targets: Sequence[str | Path], *, under: str | Path | None = None) -> RunReport:
    """Put back the exact originals: ensurepip wheels and installed distributions."""
    from . import install, swap
    from .extension_restore import restore_extensions  # ELF code: restore only

    installations = _installations(targets, default=False, under=under)
    reports: list[WheelReport] = []
    installs: list[install.InstallReport] = []
    extensions: list[dict[str, Any]] = []
    wheel_paths = _wheel_paths(installations)
    with _locked(i.state_dir for i in installations):
        # Every backup is checked before anything is put back: a missing or
        # altered one stops the whole restore, rather than half of it.
        for path in wheel_paths:
            _check_wheel_backup(path)
        for installation in installations:
            if installation.state_dir.is_dir():
                swap.complete(installation.state_dir)
                swap.check_backups(installation.state_dir)
        for path in wheel_paths:
            store.remove_stale_staging(store.state_dir_for(path))
            reports.append(_restore_one(path))
        for installation in installations:
            installs += install.restore_installs(installation)
            extensions += restore_extensions(installation.prefix)
    return RunReport(
        "restore",
        tuple(str(i.prefix) for i in installations),
        tuple(reports),
        EXIT_OK,
        installs=tuple(r.to_json() for r in installs) + tuple(extensions),
    )


def _check_wheel_backup(path: Path) -> None:
    plan = patcher.plan(path)
    if plan.state is not WheelState.PATCHED or plan.existing is None:
        return
    backup = store.backup_path_for(path)
    if not backup.exists():
        raise PipfixError(path, f"patched by pipfix but its backup {backup} is missing")
    if store.sha256_file(backup) != plan.existing.original_sha256:
        raise PipfixError(backup, f"backup does not match the original recorded in {path.name}")


def _restore_one(path: Path) -> WheelReport:
    backup = store.backup_path_for(path)
    plan = patcher.plan(path)
    if plan.state is not WheelState.PATCHED:
        if backup.exists():
            if store.sha256_file(backup) != plan.wheel.sha256:
                raise PipfixError(
                    path, "is neither pipfix's output nor the original; not touching it"
                )
            backup.unlink()  # a restore interrupted after its rename
            store.clean_state_dir(backup.parent)
        return _report(plan, "already original")
    assert plan.existing is not None
    if not backup.exists():
        raise PipfixError(path, f"patched by pipfix but its backup {backup} is missing")
    original = backup.read_bytes()
    if record.sha256_hex(original) != plan.existing.original_sha256:
        raise PipfixError(backup, f"backup does not match the original recorded in {path.name}")
    store.replace_atomically(path, original, store.expect_sha256(plan.existing.original_sha256))
    backup.unlink()
    store.clean_state_dir(backup.parent)
    restored = patcher.plan(path)
    return _report(restored, "restored")


def patch_wheel(
    wheels: Sequence[str | Path],
    out_dir: str | Path | None = None,
    *,
    in_place: bool = False,
    use_cache: bool = True,
    jobs: int | None = None,
) -> RunReport:
    """The same pipeline for loose wheel files (build steps); ``jobs`` as for apply."""
    if (out_dir is None) == (not in_place):
        raise PipfixError(Path("."), "give exactly one of an output directory or in-place")
    paths = [Path(w).absolute() for w in wheels]
    for path in paths:
        if not path.is_file():
            raise VerificationError(path, "no such wheel file")
    destination_dir = Path(out_dir).absolute() if out_dir is not None else None
    if destination_dir is not None and not destination_dir.is_dir():
        raise PipfixError(destination_dir, "output directory does not exist")
    if destination_dir is not None:
        _check_outputs(paths, destination_dir)
        return _patch_into(paths, destination_dir, use_cache, jobs)
    planned = parallel.plan_all(paths, use_cache=use_cache, jobs=jobs)
    reports = []
    with _locked({store.state_dir_for(p) for p in paths}):
        # Another run may have patched a wheel while we waited for the lock.
        plans = [_still_valid(plan, plan.wheel.path, use_cache) for plan in planned]
        for plan in plans:
            reports.append(_patch_one(plan, None))
    return RunReport(
        "patch-wheel", tuple(str(p) for p in paths), tuple(reports), _exit_code(plans, applied=True)
    )


def _check_outputs(paths: Sequence[Path], destination_dir: Path) -> None:
    """-o DIR writes new files: never over an input (no backup would be kept), and
    never two outputs under one name (one of them would be lost)."""
    seen: dict[str, Path] = {}
    for path in paths:
        if (destination_dir / path.name).resolve() == path.resolve():
            raise PipfixError(
                path, "is in the output directory; use --in-place to patch it where it is"
            )
        if path.name in seen and seen[path.name].resolve() != path.resolve():
            raise PipfixError(path, f"has the same file name as {seen[path.name]}")
        seen[path.name] = path


def _patch_into(
    paths: Sequence[Path], destination_dir: Path, use_cache: bool, jobs: int | None
) -> RunReport:
    """patch-wheel -o: each patched output is written and verified next to its final
    name as soon as its plan is made, by the process that made it (a worker's
    output is not sent back), and renamed into place only once every input
    verified; a failure drops them all.  Under the output directory's lock: a
    run writing there meanwhile waits, and the temporary files of a run killed
    there are removed first."""
    prepared: dict[int, store.PreparedReplace] = {}

    def take(index: int, plan: WheelPlan, ready: store.PreparedReplace | None) -> None:
        if ready is not None:
            prepared[index] = ready

    renamed = False
    with store.target_lock(store.state_dir_for(destination_dir / "output.whl")):
        try:
            # Each input is read once: the output of an input replaced during the run is
            # that of the bytes read and verified (the input itself is never written).
            plans = parallel.plan_all(
                paths,
                use_cache=use_cache,
                jobs=jobs,
                on_plan=take,
                inputs_needed=False,
                prepare=functools.partial(_output_into, destination_dir),
            )
            reports = []
            for index, plan in enumerate(plans):
                ready = prepared.pop(index, None)
                if ready is not None:
                    ready.commit(sync_directory=False)
                    renamed = True
                    reports.append(_written(plan, ready.path, None))
                else:
                    reports.append(_patch_one(plan, destination_dir))
            if renamed:
                store.sync_renames(destination_dir)
                renamed = False
        finally:
            if renamed:  # a failure after some renames: those are made durable all the same
                with contextlib.suppress(PipfixError):
                    store.sync_renames(destination_dir)
            for ready in prepared.values():
                ready.discard()
    return RunReport(
        "patch-wheel", tuple(str(p) for p in paths), tuple(reports), _exit_code(plans, applied=True)
    )


def _patch_one(plan: WheelPlan, destination_dir: Path | None) -> WheelReport:
    if plan.state is WheelState.NEEDS_PATCH:
        if destination_dir is None:
            return _write_patched(plan, plan.wheel.path, backup=True)
        return _write_patched(plan, destination_dir / plan.wheel.path.name, backup=False)
    if destination_dir is not None and plan.state is not WheelState.UNPATCHABLE:
        destination = destination_dir / plan.wheel.path.name
        if destination != plan.wheel.path:
            store.replace_atomically(
                destination, plan.wheel.data, store.expect_sha256(plan.wheel.sha256)
            )
        return _report(plan, "written", output=str(destination))
    return _report(plan, _IDLE_ACTIONS[plan.state])

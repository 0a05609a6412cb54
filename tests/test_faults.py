"""Nothing is lost under faults: a kill at any step, a read-only or full filesystem,
a file that cannot be replaced, missing or altered backups.

After any run -- finished, failed, interrupted or killed -- every file pipfix
touches is either exactly as before or exactly pipfix's verified output, a
re-run converges on the state an uninterrupted run reaches, and ``restore``
gives the original bytes back.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hardening import (
    Run,
    bundled_wheels,
    check_wheel,
    ensurepip_template,
    exact_state,
    fork_map,
    fresh_copy,
    installed_state,
    leftovers,
    mixed_files,
    parallel_workers,
    run_forked,
    sha256,
    step_lines,
    warm_up,
)
from pipfix import store

from conftest import SRC, clean_env, tree_digest

# --- kill at every step ---------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    template: Path
    steps: list[str]  # the trace of an uninterrupted apply
    write_phase: float  # seconds from its first to its last step
    original_wheels: dict[str, str]  # name -> sha256
    patched_wheels: dict[str, str]
    before_exact: dict[str, str]
    before_installed: dict[str, str]
    after_installed: dict[str, str]


def _traced_cli_apply(prefix: Path) -> tuple[list[str], list[float], int]:
    """A real ``pipfix apply`` process, its step lines read (and timed) as they come."""
    env = clean_env(PYTHONPATH=str(SRC), PIPFIX_TEST_TRACE_STEPS="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "pipfix", "apply", str(prefix)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    steps, times = [], []
    for line in process.stderr:
        if line.startswith("pipfix-step "):
            steps.append(line.rstrip("\n"))
            times.append(time.monotonic())
    return steps, times, process.wait(timeout=300)


@pytest.fixture(scope="module")
def scenario(scratch: Path) -> Scenario:
    template = ensurepip_template(scratch)
    warm_up(template)
    original_wheels = {n: sha256(p.read_bytes()) for n, p in bundled_wheels(template).items()}
    before_exact = exact_state(template)
    before_installed = installed_state(template)

    prefix = fresh_copy(template)
    steps, times, code = _traced_cli_apply(prefix)
    assert code == 0
    assert len(steps) >= 20, steps  # wheels (backup + output) and two reinstalls
    assert leftovers(prefix) == []
    patched_wheels = {}
    for name, path in bundled_wheels(prefix).items():
        patched_wheels[name] = sha256(path.read_bytes())
        assert patched_wheels[name] != original_wheels[name]
        assert check_wheel(path, original_wheels[name], patched_wheels[name]) == "patched"
    return Scenario(
        template=template,
        steps=steps,
        write_phase=times[-1] - times[0],
        original_wheels=original_wheels,
        patched_wheels=patched_wheels,
        before_exact=before_exact,
        before_installed=before_installed,
        after_installed=installed_state(prefix),
    )


def _check_interrupted(
    prefix: Path, scenario: Scenario, after: dict[str, str] | None = None
) -> dict[str, str]:
    """(a): every wheel and installed file is either as before or as at the end."""
    problems: dict[str, str] = {}
    wheels = bundled_wheels(prefix)
    if sorted(wheels) != sorted(scenario.original_wheels):
        problems["wheels"] = f"ensurepip sees {sorted(wheels)}"
    for name, path in wheels.items():
        try:
            check_wheel(path, scenario.original_wheels[name], scenario.patched_wheels[name])
        except Exception as exc:
            problems[name] = f"torn or foreign wheel: {exc}"
    end = after if after is not None else scenario.after_installed
    problems.update(mixed_files(installed_state(prefix), scenario.before_installed, end))
    return problems


def _check_converges(
    prefix: Path, scenario: Scenario, run: Run, after: dict[str, str] | None = None
) -> dict[str, str]:
    """(b): a re-run finishes and reaches the uninterrupted run's end state."""
    if run.returncode != 0:
        return {"re-run": f"exit {run.returncode}: {run.stderr.strip()}"}
    problems: dict[str, str] = {}
    for name, path in bundled_wheels(prefix).items():
        if sha256(path.read_bytes()) != scenario.patched_wheels[name]:
            problems[name] = "not pipfix's output after the re-run"
        backup = path.parent / ".pipfix" / (name + ".orig")
        if not backup.is_file() or sha256(backup.read_bytes()) != scenario.original_wheels[name]:
            problems[str(backup)] = "wheel backup missing or not the original"
    state = installed_state(prefix)
    end = after if after is not None else scenario.after_installed
    for relative in sorted(set(state) | set(end)):
        if state.get(relative) != end.get(relative):
            problems[relative] = "differs from an uninterrupted run's end state"
    for leftover in leftovers(prefix):
        problems[leftover] = "left behind by the re-run"
    return problems


def _check_restored(prefix: Path, scenario: Scenario, run: Run) -> dict[str, str]:
    """(c): restore gives every original byte back."""
    if run.returncode != 0:
        return {"restore": f"exit {run.returncode}: {run.stderr.strip()}"}
    state = exact_state(prefix)
    return {
        relative: "not restored to its original bytes"
        for relative in sorted(set(state) | set(scenario.before_exact))
        if state.get(relative) != scenario.before_exact.get(relative)
    }


def _kill_rerun_restore(
    prefix: Path, scenario: Scenario, label: str, after: dict[str, str] | None = None
) -> dict[str, str]:
    problems = {f"{label}: {k}": v for k, v in _check_interrupted(prefix, scenario, after).items()}
    rerun = run_forked(["apply", str(prefix)])
    problems.update(
        {
            f"{label}, re-run: {k}": v
            for k, v in _check_converges(prefix, scenario, rerun, after).items()
        }
    )
    restored = run_forked(["restore", str(prefix)])
    problems.update(
        {
            f"{label}, restore: {k}": v
            for k, v in _check_restored(prefix, scenario, restored).items()
        }
    )
    return problems


@dataclass(frozen=True)
class Slot:
    """What a worker needs at its own path: the end state there, and an applied prefix."""

    after_installed: dict[str, str]
    applied: Path


_SLOTS: dict[int, Slot] = {}  # filled lazily in each worker process


def _slot(scenario: Scenario, slot: int) -> Slot:
    if slot not in _SLOTS:
        prefix = fresh_copy(scenario.template, slot)
        assert run_forked(["apply", str(prefix)]).returncode == 0
        applied = prefix.parent.parent / f"applied{slot}" / "prefix"
        if applied.exists():
            shutil.rmtree(applied)
        applied.parent.mkdir(parents=True, exist_ok=True)
        after = installed_state(prefix)
        prefix.rename(applied)
        _SLOTS[slot] = Slot(after, applied)
    return _SLOTS[slot]


def _where(command: str, number: int, label: str) -> str:
    return f"{command} killed at {label.split(' ', 2)[2][:90]!r} (step {number})"


def _report(problems: dict[str, str], steps: list[str], started: float) -> None:
    print(f"{len(steps)} steps, {parallel_workers()} workers, {time.monotonic() - started:.1f} s")
    assert not problems, "\n".join(f"{k}: {v}" for k, v in problems.items())


def test_apply_killed_at_every_step_converges(scenario: Scenario) -> None:
    """Kill ``apply`` (ensurepip wheels and the site-packages reinstall) at each step N.

    The steps are shared out between forked workers, each at a path of its own.
    """

    def kill_at(slot: int, step: tuple[int, str]) -> dict[str, str]:
        number, label = step
        after = _slot(scenario, slot).after_installed
        prefix = fresh_copy(scenario.template, slot)
        killed = run_forked(["apply", str(prefix)], kill_at=number)
        where = _where("apply", number, label)
        if not killed.killed:
            return {where: f"not killed: exit {killed.returncode} {killed.stderr}"}
        return _kill_rerun_restore(prefix, scenario, where, after)

    started = time.monotonic()
    problems = fork_map(kill_at, list(enumerate(scenario.steps, start=1)))
    _report(problems, scenario.steps, started)


def test_apply_killed_at_random_moments_converges(scenario: Scenario) -> None:
    """SIGKILL from outside at seeded random moments of the write phase of a real process."""
    rng = random.Random(20240611)
    problems: dict[str, str] = {}
    env = clean_env(PYTHONPATH=str(SRC), PIPFIX_TEST_TRACE_STEPS="1")
    for attempt in range(4):
        prefix = fresh_copy(scenario.template)
        delay = rng.uniform(0, scenario.write_phase * 1.2)
        process = subprocess.Popen(
            [sys.executable, "-m", "pipfix", "apply", str(prefix)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert process.stderr is not None
        first = process.stderr.readline()  # blocks until the first step (or the end)
        assert first.startswith(b"pipfix-step 1 "), first
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        rest = process.stderr.read().decode()
        process.wait(timeout=60)
        reached = 1 + rest.count("pipfix-step ")
        label = f"random kill {attempt} after {delay:.3f} s (step {reached} reached)"
        print(label)
        problems.update(_kill_rerun_restore(prefix, scenario, label))
    assert not problems, "\n".join(f"{k}: {v}" for k, v in problems.items())


def test_restore_killed_at_every_step_converges(scenario: Scenario) -> None:
    """Kill ``restore`` at each step N: every file is patched or original, and re-running
    ``restore`` -- or ``apply`` first, every third step -- converges."""
    traced = run_forked(["restore", str(fresh_copy(_slot(scenario, 0).applied))], trace=True)
    assert traced.returncode == 0, traced.stderr
    steps = step_lines(traced.stderr)
    assert len(steps) >= 10, steps

    def kill_at(slot: int, step: tuple[int, str]) -> dict[str, str]:
        number, label = step
        where = _where("restore", number, label)
        reference = _slot(scenario, slot)
        prefix = fresh_copy(reference.applied, slot)
        killed = run_forked(["restore", str(prefix)], kill_at=number)
        if not killed.killed:
            return {where: f"not killed: exit {killed.returncode} {killed.stderr}"}
        after = reference.after_installed
        problems = {
            f"{where}: {k}": v for k, v in _check_interrupted(prefix, scenario, after).items()
        }
        if number % 3 == 0:
            reapplied = run_forked(["apply", str(prefix)])
            converged = _check_converges(prefix, scenario, reapplied, after)
            problems.update({f"{where}, apply: {k}": v for k, v in converged.items()})
        again = run_forked(["restore", str(prefix)])
        restored = _check_restored(prefix, scenario, again)
        problems.update({f"{where}, restore: {k}": v for k, v in restored.items()})
        return problems

    started = time.monotonic()
    problems = fork_map(kill_at, list(enumerate(steps, start=1)))
    _report(problems, steps, started)


# --- read-only, full, or one file that cannot be replaced -------------------------------------


@pytest.fixture(scope="module")
def template(scratch: Path) -> Path:
    template = ensurepip_template(scratch)
    warm_up(template)
    return template


def _one_line_error(run: Run, *fragments: str) -> str:
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("pipfix: error: ") and "Traceback" not in run.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _wheel_dir(prefix: Path) -> Path:
    return next(prefix.glob("lib/python3.*/ensurepip/_bundled"))


def _site(prefix: Path) -> Path:
    return next(prefix.glob("lib/python3.*/site-packages"))


def test_read_only_target_changes_nothing(template: Path, read_only_copy) -> None:  # type: ignore[no-untyped-def]
    prefix = read_only_copy(template)
    before = tree_digest(prefix)
    line = _one_line_error(run_forked(["apply", str(prefix)]), "Read-only file system")
    assert line == f"pipfix: error: {prefix / '.pipfix'}: cannot create: Read-only file system"
    wheel = bundled_wheels(prefix)[min(bundled_wheels(prefix))]
    line = _one_line_error(run_forked(["patch-wheel", "--in-place", str(wheel)]))
    assert (
        line == f"pipfix: error: {wheel.parent / '.pipfix'}: cannot create: Read-only file system"
    )
    assert tree_digest(prefix) == before


def test_read_only_site_packages_changes_nothing(template: Path, small_filesystem) -> None:  # type: ignore[no-untyped-def]
    """The wheels are writable, the installed files are not (a read-only mount of their
    own, so the rename fails with EXDEV before EROFS): the run fails in its last phase,
    the swap is rolled back, and every wheel it had already patched is put back."""
    prefix = small_filesystem("256m") / "prefix"
    shutil.copytree(template, prefix, symlinks=True)
    site = _site(prefix)
    subprocess.run(["mount", "--bind", "-o", "ro", str(site), str(site)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(site)], check=True)
        before = exact_state(prefix)
        line = _one_line_error(run_forked(["apply", str(prefix)]), "rolled back")
        assert line.startswith(f"pipfix: error: {site}/"), line
        assert "Invalid cross-device link" in line or "Read-only file system" in line
        assert exact_state(prefix) == before
    finally:
        subprocess.run(["umount", str(site)], check=False)


def _small_copy(small_filesystem, template: Path, free: int) -> Path:  # type: ignore[no-untyped-def]
    """A copy of ``template`` on a tmpfs with about ``free`` bytes left."""
    point = small_filesystem("512m")
    prefix = point / "prefix"
    shutil.copytree(template, prefix, symlinks=True)
    stats = os.statvfs(point)
    used = (stats.f_blocks - stats.f_bfree) * stats.f_frsize
    size_kib = (used + free) // 1024
    subprocess.run(["mount", "-o", f"remount,size={size_kib}k", str(point)], check=True)
    return prefix


def _limit_inodes(point: Path, spare: int) -> None:
    stats = os.statvfs(point)
    used = stats.f_files - stats.f_ffree
    subprocess.run(["mount", "-o", f"remount,nr_inodes={used + spare}", str(point)], check=True)


@pytest.mark.parametrize(
    "where",
    [
        "backup",
        "output",
        "staging",
    ],
)
def test_disk_full_changes_nothing(template: Path, small_filesystem, where: str) -> None:  # type: ignore[no-untyped-def]
    sizes = sorted(p.stat().st_size for p in bundled_wheels(template).values())
    first = bundled_wheels(template)[min(bundled_wheels(template))].stat().st_size
    free = {
        "backup": first // 2,  # the first backup does not fit
        "output": first + first // 2,  # its backup fits, the patched wheel does not
        "staging": 2 * sum(sizes) + 2**20,  # bytes for everything...
    }[where]
    prefix = _small_copy(small_filesystem, template, free)
    if where == "staging":
        # ...but inodes only for the wheels' backups and temporary files: the
        # reinstall's staging tree (a directory per path component) does not fit.
        _limit_inodes(prefix.parent, spare=8)
    before = exact_state(prefix)
    wheel = bundled_wheels(prefix)[min(bundled_wheels(prefix))]
    line = _one_line_error(run_forked(["apply", str(prefix)]), "No space left on device")
    if where == "backup":
        assert line == (
            f"pipfix: error: {wheel.parent / '.pipfix' / (wheel.name + '.orig')}: "
            "cannot write: No space left on device"
        )
    elif where == "output":
        assert line == f"pipfix: error: {wheel}: cannot write: No space left on device"
    else:
        assert line.startswith(f"pipfix: error: {prefix / '.pipfix' / 'stage-'}"), line
    assert exact_state(prefix) == before


def test_an_fsync_that_fails_fails_the_write_once_verification_is_done() -> None:
    """The fsync runs beside the verification (``store._fsynced_meanwhile``): its
    error still reaches the write, after the block, and no thread is left."""
    read_end, write_end = os.pipe()  # fsync refuses a pipe (EINVAL)
    try:
        verified = []
        with pytest.raises(OSError), store._fsynced_meanwhile(write_end):
            verified.append(True)
        assert verified and threading.active_count() == 1
    finally:
        os.close(read_end)
        os.close(write_end)


def _immutable(path: Path) -> Iterator[None]:
    if shutil.which("chattr") is None:
        pytest.skip("needs chattr")
    result = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {result.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=False)


@pytest.mark.parametrize("which", ["installed-module", "last-wheel"])
def test_file_that_cannot_be_replaced_changes_nothing(template: Path, which: str) -> None:
    """As root, permissions do not stop a rename; an immutable file (chattr +i) does:
    EPERM on exactly that file, on any filesystem that supports the flag."""
    prefix = fresh_copy(template)
    if which == "installed-module":
        target = _site(prefix) / "pip" / "_internal" / "utils" / "glibc.py"
    else:
        wheels = bundled_wheels(prefix)
        if len(wheels) < 2:
            pytest.skip("this Python bundles one wheel only")
        target = wheels[max(wheels)]
    before = exact_state(prefix)
    with contextlib.contextmanager(_immutable)(target):
        line = _one_line_error(run_forked(["apply", str(prefix)]), "Operation not permitted")
        assert line.startswith(f"pipfix: error: {target}: "), line
        assert exact_state(prefix) == before
    rerun = run_forked(["apply", str(prefix)])  # once the file may be replaced, it converges
    assert rerun.returncode == 0, rerun.stderr


def test_installed_module_changed_since_installation_changes_nothing(template: Path) -> None:
    """A module pipfix would replace no longer matches RECORD: refused under the lock,
    before the first write (the wheels are not patched either), and nothing is left."""
    prefix = fresh_copy(template)
    module = _site(prefix) / "pip" / "_internal" / "utils" / "glibc.py"
    module.write_bytes(module.read_bytes() + b"# edited by hand\n")
    before = exact_state(prefix)
    line = _one_line_error(run_forked(["apply", str(prefix)]))
    assert line == (
        f"pipfix: error: {module}: changed since it was installed (RECORD differs); "
        "refusing to patch it"
    )
    assert exact_state(prefix) == before


# --- backups -----------------------------------------------------------------------------------


def test_backups_hold_the_originals_and_are_never_overwritten(template: Path) -> None:
    prefix = fresh_copy(template)
    originals = {name: path.read_bytes() for name, path in bundled_wheels(prefix).items()}
    assert run_forked(["apply", str(prefix)]).returncode == 0
    backups = {name: _wheel_dir(prefix) / ".pipfix" / f"{name}.orig" for name in originals}
    assert {n: b.read_bytes() for n, b in backups.items()} == originals
    # The same wheel comes back unpatched (say, CPython was unpacked again): patched again,
    # the backup is still the original.
    for name, data in originals.items():
        (_wheel_dir(prefix) / name).write_bytes(data)
    assert run_forked(["apply", str(prefix)]).returncode == 0
    assert {n: b.read_bytes() for n, b in backups.items()} == originals
    # Without its backup, a patched wheel is left alone: never backed up as an "original".
    name = min(originals)
    backups[name].unlink()
    assert run_forked(["apply", str(prefix)]).returncode == 0
    assert not backups[name].exists()
    # Something else at the backup's place: refused, not overwritten.
    (_wheel_dir(prefix) / name).write_bytes(originals[name])
    backups[name].write_bytes(b"not the original")
    before = exact_state(prefix)
    line = _one_line_error(run_forked(["apply", str(prefix)]))
    assert line == (
        f"pipfix: error: {backups[name]}: existing backup differs from the file it would back up"
    )
    assert exact_state(prefix) == before


@pytest.mark.parametrize("damage", ["missing", "altered"])
@pytest.mark.parametrize("which", ["wheel", "installed"])
def test_restore_refuses_a_missing_or_altered_backup(
    template: Path, which: str, damage: str
) -> None:
    prefix = fresh_copy(template)
    assert run_forked(["apply", str(prefix)]).returncode == 0
    if which == "wheel":
        wheel = bundled_wheels(prefix)[max(bundled_wheels(prefix))]
        backup = wheel.parent / ".pipfix" / f"{wheel.name}.orig"
    else:
        backup = max((prefix / ".pipfix" / "installs").glob("*/files/**/glibc.py"))
    if damage == "missing":
        backup.unlink()
    else:
        backup.write_bytes(backup.read_bytes() + b"# changed\n")
    before = tree_digest(prefix)
    line = _one_line_error(run_forked(["restore", str(prefix)]))
    if which == "wheel" and damage == "missing":
        assert (
            line == f"pipfix: error: {wheel}: patched by pipfix but its backup {backup} is missing"
        )
    elif which == "wheel":
        assert line == (
            f"pipfix: error: {backup}: backup does not match the original recorded in {wheel.name}"
        )
    else:
        assert line == f"pipfix: error: {backup}: backup is missing or altered; refusing to restore"
    assert tree_digest(prefix) == before

"""Nothing is lost under faults: a kill at any step, a read-only or full filesystem,
a file that cannot be replaced, missing or altered backups.

After any run -- finished, failed, interrupted or killed -- every file pipfix
touches is either exactly as before or exactly pipfix's verified output, a
re-run converges on the state an uninterrupted run reaches, and ``restore``
gives the original bytes back.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import SRC, clean_env
from hardening import (
    Run,
    bundled_wheels,
    check_wheel,
    ensurepip_template,
    exact_state,
    fresh_copy,
    installed_state,
    leftovers,
    mixed_files,
    run_forked,
    sha256,
    warm_up,
)

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
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    assert process.stderr is not None
    steps, times = [], []
    for line in process.stderr:
        if line.startswith("pipfix-step "):
            steps.append(line.rstrip("\n"))
            times.append(time.monotonic())
    return steps, times, process.wait(timeout=300)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    base = tmp_path_factory.mktemp("faults")
    template = ensurepip_template(base)
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


def _check_interrupted(prefix: Path, scenario: Scenario) -> dict[str, str]:
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
    problems.update(
        mixed_files(installed_state(prefix), scenario.before_installed, scenario.after_installed)
    )
    return problems


def _check_converges(prefix: Path, scenario: Scenario, run: Run) -> dict[str, str]:
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
    for relative in sorted(set(state) | set(scenario.after_installed)):
        if state.get(relative) != scenario.after_installed.get(relative):
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


def _kill_rerun_restore(prefix: Path, scenario: Scenario, killed: Run, label: str) -> dict[str, str]:
    problems = {f"{label}: {k}": v for k, v in _check_interrupted(prefix, scenario).items()}
    rerun = run_forked(["apply", str(prefix)])
    problems.update({f"{label}, re-run: {k}": v for k, v in _check_converges(prefix, scenario, rerun).items()})
    restored = run_forked(["restore", str(prefix)])
    problems.update(
        {f"{label}, restore: {k}": v for k, v in _check_restored(prefix, scenario, restored).items()}
    )
    return problems


def test_apply_killed_at_every_step_converges(scenario: Scenario) -> None:
    """Kill ``apply`` (ensurepip wheels and the site-packages reinstall) at each step N."""
    problems: dict[str, str] = {}
    started = time.monotonic()
    for number, label in enumerate(scenario.steps, start=1):
        prefix = fresh_copy(scenario.template)
        killed = run_forked(["apply", str(prefix)], kill_at=number)
        if not killed.killed:
            problems[f"step {number}"] = f"not killed: exit {killed.returncode} {killed.stderr}"
            continue
        where = f"killed at {label.split(' ', 2)[2][:100]!r} (step {number})"
        problems.update(_kill_rerun_restore(prefix, scenario, killed, where))
    print(f"{len(scenario.steps)} steps, {time.monotonic() - started:.1f} s")
    assert problems == {}


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
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
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
        problems.update(_kill_rerun_restore(prefix, scenario, Run(process.returncode, "", rest), label))
    assert problems == {}

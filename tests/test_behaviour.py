"""Patched wheels behave: under both static-musl doubles their glibc detection returns
None and never raises; on the real host it returns exactly what the original returns."""

from __future__ import annotations

import json
import zipfile
from functools import cache
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from pipfix import patcher

from conftest import PINNED_NAMES, clean_env, find_interpreter, run
from simulation import VARIANTS, write_sitecustomize

# Runs inside the target interpreter: import each module, call every zero-argument
# glibc/libc function, and report what came back (or what was raised).
PROBE = r"""
import importlib, inspect, json, re, sys
results = {}
for module_name in sys.argv[1:]:
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:
        results[module_name] = {"<import>": "raised " + type(exc).__name__ + ": " + str(exc)}
        continue
    found = {}
    for name, func in sorted(vars(module).items()):
        if not (inspect.isfunction(func) and func.__module__ == module.__name__):
            continue
        if not re.search(r"glibc|libc_ver", name):
            continue
        if any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
               for p in inspect.signature(func).parameters.values()):
            continue
        try:
            found[name] = repr(func())
        except BaseException as exc:
            found[name] = "raised " + type(exc).__name__ + ": " + str(exc)
    results[module_name] = found
print(json.dumps(results))
"""

INTERPRETER_MINORS = ("8", "9", "10", "11", "12", "13")


@cache
def interpreter_for(wheel: Path) -> Path | None:
    """The oldest interpreter here (3.8+) that the wheel's Requires-Python admits."""
    with zipfile.ZipFile(wheel) as archive:
        metadata_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(metadata_name).decode()
    spec = SpecifierSet()
    for line in metadata.splitlines():
        if line.startswith("Requires-Python:"):
            spec = SpecifierSet(line.split(":", 1)[1].strip())
    for minor in INTERPRETER_MINORS:
        python = find_interpreter(minor)
        if python and Version(f"3.{minor}") in spec:
            return python
    return None


def module_names(plan: patcher.WheelPlan) -> list[str]:
    return [c.path[: -len(".py")].replace("/", ".") for c in plan.changes]


def probe(
    python: Path, wheel: Path, modules: list[str], site: Path | None
) -> dict[str, dict[str, str]]:
    path = f"{site}:{wheel}" if site else str(wheel)
    result = run([python, "-c", PROBE, *modules], env=clean_env(PYTHONPATH=path))
    assert result.returncode == 0, result.stderr
    parsed: dict[str, dict[str, str]] = json.loads(result.stdout)
    return parsed


@pytest.fixture(scope="module")
def patched(pinned_wheels: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("patched")
    cache: dict[str, tuple[Path, list[str]]] = {}

    def get(name: str) -> tuple[Path, list[str]]:
        if name not in cache:
            plan = patcher.plan(pinned_wheels[name])
            target = out / name
            target.write_bytes(plan.build())
            cache[name] = (target, module_names(plan))
        return cache[name]

    return get


@pytest.mark.parametrize("name", PINNED_NAMES)
def test_host_results_unchanged(name: str, pinned_wheels: dict[str, Path], patched) -> None:
    python = interpreter_for(pinned_wheels[name])
    if python is None:
        pytest.skip(f"no interpreter on this machine runs {name}")
    patched_wheel, modules = patched(name)
    before = probe(python, pinned_wheels[name], modules, None)
    after = probe(python, patched_wheel, modules, None)
    assert after == before
    assert any(found for found in after.values()), "the probe found no glibc functions"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", PINNED_NAMES)
def test_simulated_static_musl(
    name: str, variant: str, pinned_wheels: dict[str, Path], patched, tmp_path: Path
) -> None:
    python = interpreter_for(pinned_wheels[name])
    if python is None:
        pytest.skip(f"no interpreter on this machine runs {name}")
    write_sitecustomize(tmp_path, variant)
    patched_wheel, modules = patched(name)

    before = probe(python, pinned_wheels[name], modules, tmp_path)
    after = probe(python, patched_wheel, modules, tmp_path)

    raised_before = [f for m in before.values() for f in m.values() if f.startswith("raised")]
    if variant == "B":
        assert raised_before, f"the double did not break the original: {before}"
    for module, found in after.items():
        for function, value in found.items():
            assert not value.startswith("raised"), f"{module}.{function}: {value}"
            if "version_string" in function:
                assert value == "None", f"{module}.{function} returned {value}"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", [n for n in PINNED_NAMES if n.startswith("pip-")])
def test_patched_pip_runs(
    name: str, variant: str, pinned_wheels: dict[str, Path], patched, tmp_path: Path
) -> None:
    python = interpreter_for(pinned_wheels[name])
    if python is None:
        pytest.skip(f"no interpreter on this machine runs {name}")
    write_sitecustomize(tmp_path, variant)
    patched_wheel, _ = patched(name)
    result = run(
        [python, f"{patched_wheel}/pip", "--version"],
        env=clean_env(PYTHONPATH=str(tmp_path)),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pip ")

"""The installed pip of a target is brought to the patched state by ``apply``:
bin/pip and python -m pip run patched code, RECORD verifies, launchers keep their
style (or become relocatable), restore is byte for byte, and an interrupted
reinstall is completed by re-running."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from hardening import step_lines

from conftest import clean_env, pipfix, run, tree_digest
from simulation import write_sitecustomize
from standalone import install_wheel, make_standalone_prefix, verify_installed_record
from wheelmaker import make_wheel

GLIBC_PROBE = (
    "from pip._internal.utils import glibc; from pip._vendor.packaging import _manylinux;"
    "print(glibc.glibc_version_string(), _manylinux._glibc_version_string());"
    "import pip._internal.utils.glibc as g, os; print(os.path.realpath(g.__file__))"
)


def ensurepip_prefix(tmp_path: Path, variant: str = "B") -> tuple[Path, Path]:
    """A prefix whose pip was installed by the real ensurepip, then made 'static musl'."""
    prefix = tmp_path / "prefix"
    python = make_standalone_prefix(Path(sys.executable), prefix, None)
    result = run([python, "-m", "ensurepip", "--default-pip"])
    assert result.returncode == 0, result.stderr
    stdlib = next(prefix.glob("lib/python3.*[0-9]"))
    write_sitecustomize(stdlib, variant)
    return prefix, python


def state_digest(prefix: Path) -> dict[str, str]:
    return {k: v for k, v in tree_digest(prefix).items() if not k.startswith(".pipfix")}


def test_apply_reinstalls_pip_and_restore_is_byte_identical(tmp_path: Path) -> None:
    prefix, python = ensurepip_prefix(tmp_path)
    before = state_digest(prefix)
    broken = run([prefix / "bin" / "pip", "install", "--no-index", make_wheel(tmp_path)])
    assert broken.returncode != 0 and "Dynamic loading not supported" in broken.stderr

    checked = pipfix("check", prefix, "--json")
    assert checked.returncode == 1
    assert json.loads(checked.stdout)["installs"][0]["action"] == "would reinstall"

    applied = pipfix("apply", prefix, "--json")
    assert applied.returncode == 0, applied.stderr
    installs = {i["distribution"]: i for i in json.loads(applied.stdout)["installs"]}
    assert installs["pip"]["action"] == "reinstalled patched"
    assert installs["pip"]["scheme"] == "computed, confirmed by running the target"
    assert installs["pip"]["bytecode"] == "changed modules compiled with the target"
    assert "pip/_internal/utils/glibc.py" in installs["pip"]["changed_files"]

    site = next(prefix.glob("lib/python3.*/site-packages"))
    assert verify_installed_record(site, "pip") > 100
    assert (next(site.glob("pip-*.dist-info")) / "pipfix.json").is_file()
    for launcher in ("pip", "pip3"):
        result = run([prefix / "bin" / launcher, "--version"])
        assert result.returncode == 0, result.stderr
    probe = run([python, "-c", GLIBC_PROBE])
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.splitlines()[0] == "None None"
    assert probe.stdout.splitlines()[1].startswith(str(site.resolve()))
    installed = run([python, "-m", "pip", "install", "--no-index", make_wheel(tmp_path)])
    assert installed.returncode == 0, installed.stderr
    uninstall = run([python, "-m", "pip", "uninstall", "-y", "hello_pipfix"])
    assert uninstall.returncode == 0, uninstall.stderr
    assert pipfix("check", prefix).returncode == 0
    again = pipfix("apply", prefix)
    assert "(installed): already patched" in again.stdout

    restored = pipfix("restore", prefix)
    assert restored.returncode == 0, restored.stderr
    after = state_digest(prefix)
    # The only files allowed to differ are bytecode caches Python itself wrote for the test's
    # own pip runs (hello_pipfix install/uninstall compiled nothing into pip).
    assert {k for k in after.keys() ^ before.keys() if "__pycache__" not in k} == set()
    assert {k: after[k] for k in before if after.get(k) != before[k]} == {}


def test_relocatable_launchers_survive_a_move(tmp_path: Path) -> None:
    prefix, _ = ensurepip_prefix(tmp_path)
    applied = pipfix("apply", prefix, "--relocatable")
    assert applied.returncode == 0, applied.stderr
    assert (prefix / "bin" / "pip3").read_bytes().startswith(b"#!/bin/sh\n'''exec'")
    moved = tmp_path / "moved"
    prefix.rename(moved)
    result = run([moved / "bin" / "pip3", "--version"])
    assert result.returncode == 0, result.stderr
    assert str(moved) in result.stdout
    site = next(moved.glob("lib/python3.*/site-packages"))
    verify_installed_record(site, "pip")
    # restore works from the new place too (paths are kept relative to the prefix)
    assert pipfix("restore", moved).returncode == 0
    assert (moved / "bin" / "pip3").read_bytes().startswith(b"#!" + str(prefix).encode())


def test_ensurepip_installs_pip_without_running_pip(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    python = make_standalone_prefix(Path(sys.executable), prefix, "B")
    before = state_digest(prefix)
    applied = pipfix("apply", prefix, "--ensurepip", "--json")
    assert applied.returncode == 0, applied.stderr
    installs = json.loads(applied.stdout)["installs"]
    assert {i["action"] for i in installs} == {"installed (ensurepip)"}
    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert (prefix / "bin" / "pip3").exists() and (prefix / "bin" / f"pip{minor}").exists()
    assert not (prefix / "bin" / "pip").exists()  # as `python -m ensurepip` does
    result = run([python, "-m", "pip", "--version"])
    assert result.returncode == 0, result.stderr
    assert run([prefix / "bin" / "pip3", "--version"]).returncode == 0
    site = next(prefix.glob("lib/python3.*/site-packages"))
    verify_installed_record(site, "pip")
    assert pipfix("restore", prefix).returncode == 0
    assert not list(site.glob("pip*"))
    # The stdlib caches Python wrote while this test ran pip are not pipfix's doing.
    stdlib_cache = re.compile(r"lib/python3\.\d+/__pycache__")
    after = {k: v for k, v in state_digest(prefix).items() if not stdlib_cache.match(k)}
    assert after == before


def test_installed_version_without_a_wheel_is_rebuilt_and_patched(
    tmp_path: Path, pinned_wheels
) -> None:
    prefix = tmp_path / "prefix"
    python = make_standalone_prefix(Path(sys.executable), prefix, "B")
    install_wheel(python, pinned_wheels["pip-24.0-py3-none-any.whl"])
    applied = pipfix("apply", prefix, "--json")
    assert applied.returncode == 0, applied.stderr
    install = json.loads(applied.stdout)["installs"][0]
    assert install["version"] == "24.0"
    assert install["source"] == "a wheel rebuilt from its installed files"
    probe = run([python, "-c", GLIBC_PROBE])
    assert probe.stdout.splitlines()[0] == "None None", probe.stderr


def test_venv_target_patches_the_venv_not_its_base(tmp_path: Path) -> None:
    base, _ = ensurepip_prefix(tmp_path, variant="A")
    base_digest = state_digest(base)
    venv = tmp_path / "venv"
    # Make the venv from the unpatched base with a working interpreter: no double yet.
    stdlib = next(base.glob("lib/python3.*[0-9]"))
    (stdlib / "sitecustomize.py").rename(tmp_path / "sitecustomize.py")
    assert run([base / "bin" / "python3", "-m", "venv", venv]).returncode == 0
    shutil.move(tmp_path / "sitecustomize.py", stdlib / "sitecustomize.py")
    base_digest = state_digest(base)
    applied = pipfix("apply", venv, "--json")
    assert applied.returncode == 0, applied.stderr
    report = json.loads(applied.stdout)
    assert report["wheels"] == []
    assert [i["action"] for i in report["installs"] if i["distribution"] == "pip"] == [
        "reinstalled patched"
    ]
    assert state_digest(base) == base_digest
    assert run([venv / "bin" / "pip", "--version"]).returncode == 0


def comparable_state(prefix: Path) -> dict[str, str]:
    """The tree, less bytecode caches (their headers hold source mtimes) and their RECORD rows."""
    state = {k: v for k, v in state_digest(prefix).items() if "__pycache__" not in k}
    for record_file in prefix.glob("lib/python3*/site-packages/*.dist-info/RECORD"):
        rows = [r for r in record_file.read_text().splitlines() if "__pycache__" not in r]
        state[str(record_file.relative_to(prefix))] = "\n".join(rows)
    return state


def _steps(prefix: Path) -> list[str]:
    traced = pipfix(
        "apply",
        prefix,
        env=clean_env(
            PYTHONPATH=str(Path(__file__).parents[1] / "src"), PIPFIX_TEST_TRACE_STEPS="1"
        ),
    )
    assert traced.returncode == 0, traced.stderr
    return step_lines(traced.stderr)


def test_interrupted_reinstall_is_completed_by_rerunning(tmp_path: Path) -> None:
    reference, _ = ensurepip_prefix(tmp_path)
    steps = _steps(reference)
    renames = [int(s.split()[1]) for s in steps if " rename " in s and "->" in s]
    assert len(renames) >= 3, steps
    kill_at = renames[len(renames) // 2]
    expected = comparable_state(reference)
    shutil.rmtree(reference)

    prefix, python = ensurepip_prefix(tmp_path)
    env = clean_env(
        PYTHONPATH=str(Path(__file__).parents[1] / "src"), PIPFIX_TEST_KILL_AT_STEP=str(kill_at)
    )
    killed = pipfix("apply", prefix, env=env)
    assert killed.returncode == -9
    assert (prefix / ".pipfix" / "journal.json").exists()

    rerun = pipfix("apply", prefix)
    assert rerun.returncode == 0, rerun.stderr
    assert not (prefix / ".pipfix" / "journal.json").exists()
    site = next(prefix.glob("lib/python3.*/site-packages"))
    verify_installed_record(site, "pip")
    probe = run([python, "-c", GLIBC_PROBE])
    assert probe.stdout.splitlines()[0] == "None None", probe.stderr
    got = comparable_state(prefix)
    assert {k for k in got.keys() | expected.keys() if got.get(k) != expected.get(k)} == set()


@pytest.mark.parametrize("variant", ["A", "B"])
def test_python_m_pip_runs_patched_code_under_both_doubles(tmp_path: Path, variant: str) -> None:
    prefix, python = ensurepip_prefix(tmp_path, variant)
    assert pipfix("apply", prefix).returncode == 0
    probe = run([python, "-c", GLIBC_PROBE])
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.splitlines()[0] == "None None"


def test_cross_compiled_target_gets_no_stale_bytecode(tmp_path: Path, pinned_wheels) -> None:
    """A target that cannot run here: changed modules lose their caches, none are made."""
    prefix, python = ensurepip_prefix(tmp_path)
    real = python.read_bytes()
    python.unlink()
    python.write_bytes(b"\x7fELF" + b"\0" * 60)  # an interpreter for another machine
    python.chmod(0o755)
    site = next(prefix.glob("lib/python3.*/site-packages"))
    caches = site / "pip" / "_internal" / "utils" / "__pycache__"
    assert list(caches.glob("glibc.*.pyc"))
    applied = pipfix("apply", prefix, "--json")
    assert applied.returncode == 0, applied.stderr
    pip_report = next(
        i for i in json.loads(applied.stdout)["installs"] if i["distribution"] == "pip"
    )
    assert pip_report["scheme"] == "computed from the layout (target not run)"
    assert pip_report["bytecode"] == "none for changed modules: the target does not run here"
    assert not list(caches.glob("glibc.*.pyc"))
    assert list(caches.glob("misc.*.pyc")), "caches of unchanged modules stay"
    verify_installed_record(site, "pip")
    python.write_bytes(real)
    probe = run([python, "-c", GLIBC_PROBE])
    assert probe.stdout.splitlines()[0] == "None None", probe.stderr


def test_all_patches_every_installation_below_a_directory(tmp_path: Path) -> None:
    pythons = tmp_path / "pythons"
    for name in ("a", "b"):
        make_standalone_prefix(Path(sys.executable), pythons / name / "install", "B")
    assert pipfix("check", "--all", pythons).returncode == 1
    applied = pipfix("apply", "--all", pythons, "--json")
    assert applied.returncode == 0, applied.stderr
    assert len(json.loads(applied.stdout)["targets"]) == 2
    assert pipfix("check", "--all", pythons).returncode == 0
    assert pipfix("restore", "--all", pythons).returncode == 0
    assert pipfix("check", "--all", pythons).returncode == 1

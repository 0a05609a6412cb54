"""pipfix doctor on real binaries: the running interpreter, musl-gcc builds, the
static-musl simulation, PEP 668 markers, libpython-linked modules, and (when
PIPFIX_STATIC_MUSL_DIR is set) the real fully static musl CPython.

Each test asserts the finding ids it expects, not just that doctor ran.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from native import (
    DEMO_MODULE,
    DEMO_SUFFIX,
    MAIN_SOURCE,
    build_demo,
    build_stub,
    compile_c,
    fake_prefix,
    install_module,
    require_tool,
    stand_in_soname,
    static_libpython_python,
)
from pipfix import doctor_cli, elf, linkage, operations
from pipfix.doctor import DoctorReport, Severity, diagnose, render
from pipfix.doctor.binary import read_binary
from pipfix.doctor.context import Context
from pipfix.doctor.installs import install_items
from pipfix.doctor.live import LiveFacts
from pipfix.doctor.subject import find_subject

from conftest import IN_CI, tree_digest
from standalone import make_standalone_prefix

VERSION = f"{sys.version_info[0]}.{sys.version_info[1]}"
HOST_ARCH = elf.read(Path(sys.executable).resolve()).arch


def ids(report: DoctorReport) -> set[str]:
    return set(report.ids())


def assert_consistent(report: DoctorReport) -> None:
    """JSON round-trips; the exit code follows the severities; sources are known."""
    data = json.loads(json.dumps(report.to_json()))
    assert data["schema"] == 1 and data["command"] == "doctor"
    serious = any(f["severity"] != "info" for f in data["findings"])
    assert data["exit_code"] == (1 if serious else 0)
    assert {f["source"] for f in data["facts"] + data["findings"]} <= {"static", "live", "host"}
    for line in render(report).splitlines():
        assert len(line) <= 80 or "/" in line or "_" in line, line


@pytest.fixture(scope="module")
def musl_binaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    musl_gcc = require_tool("musl-gcc", "musl-tools")
    root = tmp_path_factory.mktemp("musl")
    return {
        "static": compile_c(musl_gcc, MAIN_SOURCE, root / "static", "-static"),
        "dynamic": compile_c(musl_gcc, MAIN_SOURCE, root / "dynamic"),
    }


def prefix_with(tmp_path: Path, executable: Path) -> Path:
    prefix = fake_prefix(tmp_path / "prefix", VERSION)
    shutil.copy2(executable, prefix / "bin" / f"python{VERSION}")
    return prefix


# --- the running interpreter -------------------------------------------------------------


def test_running_interpreter_is_healthy_and_live() -> None:
    report = diagnose()
    assert_consistent(report)
    assert report.live["available"] is True
    found = ids(report)
    assert {"interpreter.summary", "loading.ok", "tags.platforms"} <= found
    assert not found & {"loading.impossible", "loading.dlopen-self-fails", "tags.crash"}
    assert report.finding("loading.ok").source == "live"
    libc = report.fact("interpreter.libc")
    assert libc.source == "live" and str(libc.value).startswith("glibc ")
    tags = report.finding("tags.platforms")
    assert tags.source == "live" and tags.evidence["manylinux"] is True
    assert tags.evidence["platforms"][-1] == f"linux_{HOST_ARCH}"
    # harmless here: dlopen(NULL) works, so an unpatched wheel is information only
    for finding in report.findings:
        if finding.id == "ensurepip.needs-patch":
            assert finding.severity is Severity.INFO


def test_a_venv_target_is_examined_through_its_base() -> None:
    if sys.prefix == sys.base_prefix:
        pytest.skip("the tests do not run in a venv")
    report = diagnose(sys.executable, run_target=False)
    assert report.target["venv"] is True
    assert report.target["base_prefix"] == str(Path(sys.base_prefix))
    assert report.live == {"available": False, "reason": "not run (--static-only)"}
    assert "installs.root-outside-venv" not in ids(report)


# --- musl-gcc builds as the target's executable --------------------------------------------


def test_static_musl_binary(tmp_path: Path, musl_binaries: dict[str, Path]) -> None:
    prefix = prefix_with(tmp_path, musl_binaries["static"])
    report = diagnose(prefix)  # it "runs" but does not answer: static facts only
    assert_consistent(report)
    assert report.live["available"] is False and "without answering" in report.live["reason"]
    assert {"loading.impossible", "tags.no-binary-wheels", "interpreter.summary"} <= ids(report)
    assert report.finding("loading.impossible").severity is Severity.ERROR
    assert str(report.fact("interpreter.linking").value).startswith("static")
    assert report.finding("tags.platforms").evidence["platforms"] == [f"linux_{HOST_ARCH}"]
    explanation = report.finding("tags.no-binary-wheels").explanation or ""
    assert "_get_musl_version" in explanation and "PT_INTERP" in explanation
    assert report.exit_code == 1


def test_dynamic_musl_binary(tmp_path: Path, musl_binaries: dict[str, Path]) -> None:
    prefix = prefix_with(tmp_path, musl_binaries["dynamic"])
    binary = elf.read(musl_binaries["dynamic"])
    assert binary.interpreter and "ld-musl" in binary.interpreter
    report = diagnose(prefix)
    assert_consistent(report)
    found = ids(report)
    assert "loading.ok" in found and "loading.impossible" not in found
    assert report.finding("loading.ok").source == "static"
    if not Path(binary.interpreter).is_file():
        pytest.skip(f"{binary.interpreter} missing: musl version unknown")
    libc = report.fact("interpreter.libc")
    assert str(libc.value).startswith("musl 1.") and libc.source == "host"
    tags = report.finding("tags.platforms")
    assert tags.evidence["musllinux"] is True and tags.evidence["manylinux"] is False
    assert tags.evidence["platforms"][-2] == f"musllinux_1_0_{HOST_ARCH}"
    assert "tags.no-binary-wheels" not in found

    # --static-only runs nothing, not even the loader: the version stays unknown, no warning
    quiet = diagnose(prefix, run_target=False)
    assert "not run" in str(quiet.fact("interpreter.libc").value)
    assert "tags.no-binary-wheels" not in ids(quiet)


# --- the static-musl simulation (a real interpreter, Python-level double) -------------------


@pytest.mark.parametrize("variant", ["A", "B"])
def test_simulated_static_musl_prefix(tmp_path: Path, variant: str) -> None:
    python = make_standalone_prefix(Path(sys.executable).resolve(), tmp_path / "p", variant)
    prefix = python.parent.parent
    before = tree_digest(prefix)
    report = diagnose(prefix)
    assert tree_digest(prefix) == before  # read-only, even when it runs the target
    assert_consistent(report)
    found = ids(report)
    assert report.live["available"] is True
    assert "ensurepip.needs-patch" in found
    assert report.finding("ensurepip.needs-patch").severity is Severity.WARNING
    if variant == "A":  # ctypes imports; CDLL(None) fails: pip finds no libc at all
        assert "loading.dlopen-self-fails" in found
        assert report.finding("tags.no-binary-wheels").source == "live"
        assert report.fact("tags.platforms").value == [f"linux_{HOST_ARCH}"]
    else:  # `import ctypes` raises: the unpatched pip crashes computing tags
        assert {"loading.ctypes-import-fails", "tags.crash"} <= found
        crash = report.finding("tags.crash")
        assert "Dynamic loading not supported" in crash.summary
        assert crash.evidence["from"] == "ensurepip wheel"

        wheels = sorted((prefix / "lib").glob("python3*/ensurepip/_bundled/*.whl"))
        operations.patch_wheel(wheels, in_place=True)
        after = diagnose(prefix)
        assert "tags.crash" not in ids(after)
        assert {"ensurepip.patched", "tags.no-binary-wheels"} <= ids(after)


# --- PEP 668, user scripts, root -----------------------------------------------------------


def test_externally_managed_marker(tmp_path: Path) -> None:
    prefix = prefix_with(tmp_path, Path(sys.executable).resolve())
    assert "installs.externally-managed" not in ids(diagnose(prefix, run_target=False))
    marker = prefix / "lib" / f"python{VERSION}" / "EXTERNALLY-MANAGED"
    marker.write_text("[externally-managed]\nError=Use the distro's packages.\n",
                      encoding="utf-8")
    report = diagnose(prefix, run_target=False)
    finding = report.finding("installs.externally-managed")
    assert finding.severity is Severity.WARNING
    assert finding.evidence == {"marker": str(marker), "message": "Use the distro's packages."}
    assert finding.action and "venv" in finding.action


def _context(prefix: Path, env: dict[str, str], euid: int) -> Context:
    subject = find_subject(prefix)
    binary = read_binary(subject, may_run=False)
    return Context(subject, binary, LiveFacts(False, "test"), env, euid)


def test_root_outside_venv_and_user_scripts(tmp_path: Path) -> None:
    prefix = prefix_with(tmp_path, Path(sys.executable).resolve())
    home = tmp_path / "home"
    (home / ".local" / "bin").mkdir(parents=True)
    (home / ".local" / "bin" / "tool").touch()
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    found = {f.id: f for f in install_items(_context(prefix, env, 0)) if hasattr(f, "severity")}
    assert found["installs.root-outside-venv"].severity is Severity.WARNING
    off_path = found["installs.user-scripts-off-path"]
    assert off_path.severity is Severity.WARNING  # something is installed there already
    assert off_path.evidence["installed_there"] == ["tool"]

    env_ok = {"HOME": str(home), "PATH": f"{home}/.local/bin:/usr/bin", "VIRTUAL_ENV": "/v"}
    quiet = [f for f in install_items(_context(prefix, env_ok, 0)) if hasattr(f, "severity")]
    assert quiet == []
    as_user = [f.id for f in install_items(_context(prefix, env, 1000)) if hasattr(f, "severity")]
    assert "installs.root-outside-venv" not in as_user


# --- extension modules linked against libpython --------------------------------------------


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_stub(tmp_path_factory.mktemp("stub"), stand_in_soname())


def test_module_needing_an_unreachable_libpython(tmp_path: Path, stub: Path) -> None:
    prefix = fake_prefix(tmp_path / "prefix", VERSION, static_libpython_python())
    site = prefix / "lib" / f"python{VERSION}" / "site-packages"
    missing = build_demo(tmp_path / f"{DEMO_MODULE}{DEMO_SUFFIX}", stub)
    install_module(site, missing)
    (site / "junk.so").write_bytes(b"not an ELF file")
    report = diagnose(prefix, run_target=False)
    finding = report.finding("extensions.libpython-missing")
    assert finding.severity is Severity.ERROR
    [module] = finding.evidence["modules"]
    assert module["path"] == str(site / missing.name)
    assert module["needed"] == [stand_in_soname()]
    assert module["runpath"] is None and module["rpath"] is None
    assert "cannot open shared object file" in (finding.explanation or "")
    assert finding.action == f"pipfix fix-extensions {prefix}"
    assert report.finding("extensions.unreadable").evidence["files"][0]["path"].endswith("junk.so")


def test_module_whose_runpath_finds_a_second_libpython(tmp_path: Path, stub: Path) -> None:
    prefix = fake_prefix(tmp_path / "prefix", VERSION, static_libpython_python())
    site = prefix / "lib" / f"python{VERSION}" / "site-packages"
    module = build_demo(tmp_path / f"{DEMO_MODULE}{DEMO_SUFFIX}", stub,
                        "-Wl,--enable-new-dtags", f"-Wl,-rpath,{stub.parent}")
    install_module(site, module)
    report = diagnose(prefix, run_target=False)
    found = ids(report)
    assert "extensions.libpython-second-copy" in found
    assert "extensions.libpython-missing" not in found
    [entry] = report.finding("extensions.libpython-second-copy").evidence["modules"]
    assert entry["runpath"] == [str(stub.parent)]
    assert entry["resolution"][0]["how"] == "found via module RUNPATH"


def test_rpath_is_inherited_from_the_executable_but_runpath_is_not(
    tmp_path: Path, stub: Path
) -> None:
    gcc = require_tool("gcc", "gcc")
    rpath_exe = compile_c(gcc, MAIN_SOURCE, tmp_path / "rpath-exe", "-Wl,--disable-new-dtags",
                          f"-Wl,-rpath,{stub.parent}")
    runpath_exe = compile_c(gcc, MAIN_SOURCE, tmp_path / "runpath-exe",
                            "-Wl,--enable-new-dtags", f"-Wl,-rpath,{stub.parent}")
    plain = build_demo(tmp_path / "plain.so", stub)
    with_runpath = build_demo(tmp_path / "with-runpath.so", stub, "-Wl,--enable-new-dtags",
                              "-Wl,-rpath,/nonexistent")
    env: dict[str, str] = {}

    def problem(exe: Path, module: Path) -> str | None:
        interpreter = linkage.Interpreter(exe, elf.read(exe))
        link = linkage.classify(module, elf.read(module), interpreter, env)
        assert link is not None
        return link.problem

    assert problem(rpath_exe, plain) == "second-copy"  # found through the executable's RPATH
    assert problem(rpath_exe, with_runpath) == "missing"  # a RUNPATH module ignores it
    assert problem(runpath_exe, plain) == "missing"  # RUNPATH is never inherited
    env["LD_LIBRARY_PATH"] = str(stub.parent)
    assert problem(runpath_exe, plain) == "second-copy"


# --- command line --------------------------------------------------------------------------


def test_cli_human_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = prefix_with(tmp_path, Path(sys.executable).resolve())
    code = doctor_cli.main(["doctor", "--static-only", str(prefix)])
    out = capsys.readouterr().out
    assert code in (0, 1)
    for title in ("Interpreter binary", "Loading extension modules", "Platform tags",
                  "ensurepip wheels and installed pip", "Where installs go"):
        assert f"\n{title}\n" in out
    assert out.rstrip().endswith(f"exit {code}")
    assert doctor_cli.main(["doctor", "--static-only", "--json", str(prefix)]) == code
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"schema", "command", "exit_code", "target", "live", "facts", "findings"}
    assert data["target"]["prefix"] == str(prefix)


def test_cli_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert doctor_cli.main(["doctor", str(tmp_path / "missing")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("pipfix: error:")
    (tmp_path / "empty").mkdir()
    assert doctor_cli.main(["doctor", str(tmp_path / "empty")]) == 2
    assert "not a Python installation" in capsys.readouterr().err


# --- the real fully static musl CPython ----------------------------------------------------


def static_musl_prefixes() -> list[Path]:
    root = os.environ.get("PIPFIX_STATIC_MUSL_DIR")
    if not root:
        message = "PIPFIX_STATIC_MUSL_DIR is not set (tests/e2e/build-static-musl-python.sh)"
        if IN_CI:
            pytest.fail(f"{message}; CI must provide it")
        pytest.skip(message)
    return [Path(root) / "upstream-ctypes", Path(root) / "pbs-ctypes"]


@pytest.mark.static_musl
@pytest.mark.parametrize("run_target", [True, False], ids=["live", "static-only"])
def test_real_static_musl_cpython(run_target: bool) -> None:
    for prefix in static_musl_prefixes():
        report = diagnose(prefix, run_target=run_target)
        assert_consistent(report)
        found = ids(report)
        assert "loading.impossible" in found, prefix
        assert report.fact("interpreter.linking").value.startswith("static")
        assert "musl" in str(report.fact("interpreter.libc").value)
        assert report.finding("interpreter.summary").evidence["interpreter"] is None
        platforms = report.fact("tags.platforms").value
        assert not any(p.startswith(("musllinux", "manylinux")) for p in platforms), platforms
        assert {"ensurepip.needs-patch", "ensurepip.patched"} & found
        wheels = report.fact("ensurepip.wheels").value
        assert any(w.startswith("pip ") for w in wheels) and any(
            w.startswith("setuptools ") for w in wheels)
        if run_target:
            assert report.live["available"] is True
            assert "Dynamic loading not supported" in str(report.fact("loading.dlopen_self").value)
            unpatched = "ensurepip.needs-patch" in found
            if prefix.name == "upstream-ctypes" and unpatched:
                assert "tags.crash" in found
            else:
                assert "tags.no-binary-wheels" in found

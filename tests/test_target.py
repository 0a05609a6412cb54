"""Finding installations and the wheels their ensurepip would use, without running them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipfix.errors import NotAnInstallationError
from pipfix.target import find_installation, find_installations_under, read_build_vars

from conftest import pipfix


def fake_prefix(
    root: Path,
    version: str = "3.11",
    wheels: tuple[str, ...] = ("pip-23.2.1-py3-none-any.whl",),
    build_vars: str | None = None,
    libdir: str = "lib",
) -> Path:
    stdlib = root / libdir / f"python{version}"
    (stdlib / "ensurepip" / "_bundled").mkdir(parents=True)
    (stdlib / "os.py").write_text("")
    for wheel in wheels:
        (stdlib / "ensurepip" / "_bundled" / wheel).write_bytes(b"")
    if build_vars is not None:
        (stdlib / "_sysconfigdata__linux_x86_64-linux-gnu.py").write_text(build_vars)
    (root / "bin").mkdir(exist_ok=True)
    (root / "bin" / f"python{version}").write_bytes(b"\x7fELF not for this host")
    return root


def test_prefix_and_executable_resolve_to_the_same_installation(tmp_path: Path) -> None:
    prefix = fake_prefix(tmp_path / "opt")
    by_prefix = find_installation(prefix)
    by_executable = find_installation(prefix / "bin" / "python3.11")
    assert by_prefix == by_executable
    assert [p.name for p in by_prefix.ensurepip_wheels()] == ["pip-23.2.1-py3-none-any.whl"]


def test_several_versions_and_free_threaded(tmp_path: Path) -> None:
    prefix = fake_prefix(tmp_path / "opt", "3.12")
    fake_prefix(prefix, "3.13t", ("pip-24.2-py3-none-any.whl",))
    installation = find_installation(prefix)
    assert [lib.version for lib in installation.libs] == ["3.12", "3.13t"]
    assert len(installation.ensurepip_wheels()) == 2


def test_wheel_pkg_dir_is_parsed_not_executed_and_relocated(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    build_vars = (
        f"import pathlib; pathlib.Path({str(marker)!r}).write_text('oops')\n"
        "build_time_vars = {'prefix': '/usr', 'WHEEL_PKG_DIR': '/usr/share/python-wheels'}\n"
    )
    prefix = fake_prefix(tmp_path / "sysroot" / "usr", build_vars=build_vars, wheels=())
    wheels = prefix / "share" / "python-wheels"
    wheels.mkdir(parents=True)
    for name in (
        "pip-23.2.1-py3-none-any.whl",
        "setuptools-68.0.0-py3-none-any.whl",
        "urllib3-2.0.0-py3-none-any.whl",
    ):
        (wheels / name).write_bytes(b"")
    installation = find_installation(prefix)
    assert [p.name for p in installation.ensurepip_wheels()] == [
        "pip-23.2.1-py3-none-any.whl",
        "setuptools-68.0.0-py3-none-any.whl",
    ]
    assert not marker.exists()


def test_sysconfigdata_without_literal_vars_is_an_error(tmp_path: Path) -> None:
    data = tmp_path / "_sysconfigdata_x.py"
    data.write_text("build_time_vars = dict(a=1)\n")
    with pytest.raises(Exception, match="no literal build_time_vars"):
        read_build_vars(data)


def test_windows_layout(tmp_path: Path) -> None:
    prefix = tmp_path / "Python311"
    bundled = prefix / "Lib" / "ensurepip" / "_bundled"
    bundled.mkdir(parents=True)
    (prefix / "Lib" / "os.py").write_text("")
    (bundled / "pip-23.2.1-py3-none-any.whl").write_bytes(b"")
    assert len(find_installation(prefix).ensurepip_wheels()) == 1


def test_lib64_symlink_is_not_counted_twice(tmp_path: Path) -> None:
    prefix = fake_prefix(tmp_path / "opt")
    (prefix / "lib64").symlink_to("lib")
    assert len(find_installation(prefix).libs) == 1


def test_venv_is_its_own_kind_of_target(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "lib" / "python3.11" / "site-packages").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    installation = find_installation(venv)
    assert (
        installation.is_venv and installation.libs == () and installation.venv_versions == ("3.11",)
    )
    assert installation.ensurepip_wheels() == []


def test_not_an_installation_says_what_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(NotAnInstallationError, match=r"looked for pyvenv.cfg, lib/python3.X/os.py"):
        find_installation(tmp_path)


def test_all_finds_every_installation_below_a_directory(tmp_path: Path) -> None:
    for version in ("3.10", "3.11", "3.12"):
        fake_prefix(tmp_path / "pythons" / f"cpython-{version}" / "install", version)
    found = find_installations_under(tmp_path / "pythons")
    assert [i.libs[0].version for i in found] == ["3.10", "3.11", "3.12"]


def test_check_on_a_cross_compiled_target_never_runs_it(tmp_path: Path, pinned_wheels) -> None:
    prefix = fake_prefix(tmp_path / "opt", wheels=())
    shutil.copy(
        pinned_wheels["pip-23.2.1-py3-none-any.whl"],
        prefix / "lib" / "python3.11" / "ensurepip" / "_bundled",
    )
    python = prefix / "bin" / "python3.11"
    python.chmod(0o755)  # executing it would fail with "Exec format error"
    result = pipfix("check", prefix)
    assert result.returncode == 1, result.stderr
    assert "pip 23.2.1 (ensurepip wheel): would patch" in result.stdout
    applied = pipfix("apply", prefix, "-v")
    assert applied.returncode == 0, applied.stderr
    assert pipfix("check", prefix).returncode == 0

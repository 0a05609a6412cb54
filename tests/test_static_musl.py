"""The proof on the real thing: a fully static musl CPython 3.11, built by
tests/e2e/build-static-musl-python.sh, in two installs -- upstream ctypes (``import
ctypes`` raises OSError) and python-build-standalone's patched ctypes (``CDLL(None)``
raises OSError). Each step proves the failure first.

In CI these tests are mandatory: a failed build fails the run. Elsewhere they use the
build when it exists (``PIPFIX_STATIC_MUSL_DIR``, or the cache the script fills) and
skip with the reason when it does not.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from installer import install
from installer.destinations import SchemeDictionaryDestination
from installer.sources import WheelFile

from conftest import IN_CI, ROOT, clean_env, pipfix, run, tree_digest
from standalone import verify_installed_record
from wheelmaker import make_wheel

INSTALLS = ("upstream-ctypes", "pbs-ctypes")
VERSION = "3.11"
GLIBC_PROBE = (
    "from pip._internal.utils import glibc; from pip._vendor.packaging import _manylinux;"
    "print(glibc.glibc_version_string(), _manylinux._glibc_version_string())"
)


def _cached_build() -> Path | None:
    cache = Path(
        os.environ.get("PIPFIX_E2E_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pipfix-e2e"
    )
    builds = sorted(cache.glob("static-musl-*/.complete"), key=lambda p: p.stat().st_mtime)
    return builds[-1].parent if builds else None


@pytest.fixture(scope="session")
def static_musl_dir() -> Path:
    configured = os.environ.get("PIPFIX_STATIC_MUSL_DIR")
    if configured:
        return Path(configured)
    if IN_CI:
        sys.path.insert(0, str(ROOT / "tests" / "e2e"))
        from static_musl import build_static_musl_python

        return build_static_musl_python()
    found = _cached_build()
    if found is None:
        pytest.skip(
            "no static-musl CPython built here: run "
            "'bash tests/e2e/build-static-musl-python.sh' or set PIPFIX_STATIC_MUSL=1"
        )
    return found


_PBS_LAUNCHER = (
    "#!/bin/sh\n"
    '\'\'\'exec\' "$(dirname -- "$(realpath -- "$0")")"/\'python3.11\' "$0" "$@"\n'
    "' '''\n"
)


class _BuildHostDestination(SchemeDictionaryDestination):
    """How a standalone build installs pip on its build host: installer, and for
    python-build-standalone-style builds relocatable /bin/sh launchers."""

    relocatable = False

    def write_script(self, name, module, attr, section):  # type: ignore[no-untyped-def]
        if not self.relocatable:
            return super().write_script(name, module, attr, section)
        body = (
            f"import re\nimport sys\nfrom {module} import {attr.split('.')[0]}\n"
            "if __name__ == '__main__':\n"
            "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
            f"    sys.exit({attr}())\n"
        )
        from installer.utils import Scheme

        return self.write_to_fs(
            Scheme("scripts"), name, io.BytesIO((_PBS_LAUNCHER + body).encode()), True
        )


def _ship_pip(prefix: Path, relocatable: bool) -> None:
    """Install the prefix's own (unpatched) bundled pip, as its build host would."""
    wheel = next((prefix / "lib" / f"python{VERSION}" / "ensurepip" / "_bundled").glob("pip-*.whl"))
    site = prefix / "lib" / f"python{VERSION}" / "site-packages"
    destination = _BuildHostDestination(
        {
            "purelib": str(site),
            "platlib": str(site),
            "scripts": str(prefix / "bin"),
            "data": str(prefix),
            "headers": str(prefix / "include"),
        },
        interpreter=str(prefix / "bin" / f"python{VERSION}"),
        script_kind="posix",
    )
    destination.relocatable = relocatable
    with zipfile.ZipFile(wheel) as archive:
        install(WheelFile(archive), destination, {"INSTALLER": b"pip\n"})


def _wheel_hashes(prefix: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in prefix.glob(f"lib/python{VERSION}/ensurepip/_bundled/*.whl")
    }


def _state(prefix: Path) -> dict[str, str]:
    """The tree, less pipfix's state dir and the stdlib caches the target writes when run."""
    cache = re.compile(rf"lib/python{VERSION}/(.*/)?__pycache__(/|$)")
    return {
        k: v
        for k, v in tree_digest(prefix).items()
        if not k.startswith(".pipfix") and not cache.match(k)
    }


@pytest.fixture(params=INSTALLS)
def prefix(request: pytest.FixtureRequest, static_musl_dir: Path, tmp_path: Path) -> Path:
    install_name: str = request.param
    target = tmp_path / "python"
    shutil.copytree(static_musl_dir / install_name, target, symlinks=True)
    _ship_pip(target, relocatable=install_name == "pbs-ctypes")
    return target


@pytest.mark.e2e
@pytest.mark.static_musl
def test_real_static_musl_build_is_what_we_think(static_musl_dir: Path) -> None:
    for install_name in INSTALLS:
        python = static_musl_dir / install_name / "bin" / f"python{VERSION}"
        described = subprocess.run(["file", "-b", str(python)], capture_output=True, text=True)
        if described.returncode == 0:
            assert "statically linked" in described.stdout
        headers = subprocess.run(["readelf", "-lW", str(python)], capture_output=True, text=True)
        if headers.returncode == 0:
            assert "INTERP" not in headers.stdout
        ctypes_import = run([python, "-c", "import ctypes"])
        if install_name == "upstream-ctypes":
            assert ctypes_import.returncode != 0
            assert "OSError" in ctypes_import.stderr
        else:
            assert ctypes_import.returncode == 0, ctypes_import.stderr
            dlopen = run([python, "-c", "import ctypes; ctypes.CDLL(None)"])
            assert "Dynamic loading not supported" in dlopen.stderr


@pytest.mark.e2e
@pytest.mark.static_musl
def test_end_to_end_on_real_static_musl(prefix: Path, tmp_path: Path) -> None:
    python = prefix / "bin" / f"python{VERSION}"
    original_state = _state(prefix)
    original_wheels = _wheel_hashes(prefix)

    # 1. The bug, first.
    broken = run([python, "-m", "venv", tmp_path / "v-before"], timeout=600)
    assert broken.returncode != 0
    assert "ensurepip" in broken.stdout + broken.stderr
    ensurepip = run([python, "-m", "ensurepip", "--root", tmp_path / "root-before"])
    assert ensurepip.returncode != 0
    assert "Dynamic loading not supported" in ensurepip.stderr
    assert run([python, "-m", "pip", "install", "--no-index", make_wheel(tmp_path)]).returncode != 0
    assert pipfix("check", prefix).returncode == 1

    # 2. pipfix apply, from the host Python, as a build step would.
    applied = pipfix("apply", prefix, "-v")
    assert applied.returncode == 0, applied.stderr
    assert "reinstalled patched" in applied.stdout
    venv = tmp_path / "v"
    made = run([python, "-m", "venv", venv], timeout=600)
    assert made.returncode == 0, made.stdout + made.stderr
    assert run([venv / "bin" / "pip", "--version"]).returncode == 0
    installed = run([venv / "bin" / "pip", "install", "--no-index", make_wheel(tmp_path)])
    assert installed.returncode == 0, installed.stdout + installed.stderr
    imported = run(
        [venv / "bin" / "python", "-c", "import hello_pipfix; print(hello_pipfix.GREETING)"]
    )
    assert imported.stdout.strip() == "hello from a wheel", imported.stderr
    version = run([python, "-m", "pip", "--version"])
    assert version.returncode == 0 and str(prefix) in version.stdout, version.stderr
    assert run([prefix / "bin" / "pip3", "--version"]).returncode == 0
    probe = run([python, "-c", GLIBC_PROBE])
    assert probe.stdout.strip() == "None None", probe.stderr
    site = prefix / "lib" / f"python{VERSION}" / "site-packages"
    assert verify_installed_record(site, "pip") > 100
    assert pipfix("check", prefix).returncode == 0

    # 3. ensurepip into a fresh root.
    rooted = run([python, "-m", "ensurepip", "--root", tmp_path / "root"])
    assert rooted.returncode == 0, rooted.stderr

    # 4. The prefix moves; launchers keep working (relocatable where they were,
    #    and where --relocatable asks for it).
    if not (prefix / "bin" / "pip3").read_bytes().startswith(b"#!/bin/sh"):
        assert pipfix("apply", prefix, "--relocatable").returncode == 0
    moved = tmp_path / "moved"
    prefix.rename(moved)
    moved_pip = run([moved / "bin" / "pip3", "--version"])
    assert moved_pip.returncode == 0 and str(moved) in moved_pip.stdout, moved_pip.stderr
    moved.rename(prefix)

    # 5. Restore: byte-identical originals, and the failure is back.
    restored = pipfix("restore", prefix)
    assert restored.returncode == 0, restored.stderr
    assert _wheel_hashes(prefix) == original_wheels
    assert _state(prefix) == original_state
    assert run([python, "-m", "venv", tmp_path / "v-after"], timeout=600).returncode != 0


def _readme_recipe(name: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- recipe: {name} -->\n```sh\n(.*?)```", text, re.S)
    assert match, f"README has no recipe {name}"
    return match.group(1)


@pytest.mark.e2e
@pytest.mark.static_musl
def test_readme_post_install_hook_word_for_word(prefix: Path, tmp_path: Path) -> None:
    recipe = _readme_recipe("post-install-hook")
    bindir = Path(sys.executable).parent
    env = clean_env(PREFIX=str(prefix), PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    if not (bindir / "pipfix").exists():
        pytest.fail(f"pipfix is not installed next to {sys.executable}: run scripts/test.sh")
    result = subprocess.run(["sh", "-c", recipe], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    made = run([prefix / "bin" / f"python{VERSION}", "-m", "venv", tmp_path / "v"], timeout=600)
    assert made.returncode == 0, made.stdout + made.stderr

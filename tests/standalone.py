"""Throw-away "standalone-like" prefixes made from a real interpreter on this machine.

The binary is copied, the stdlib symlinked entry by entry, ``ensurepip``
copied (so pipfix may rewrite its wheels), and the static-musl double
(``simulation.py``) placed in the prefix's stdlib directory, so every venv
made from the prefix inherits it, as it would inherit the real thing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from simulation import write_sitecustomize

_SKIP = {"ensurepip", "site-packages", "sitecustomize.py", "__pycache__"}


def describe(python: Path) -> dict[str, str]:
    """Version and stdlib directory of a real interpreter."""
    code = (
        "import json, sys, sysconfig;"
        "print(json.dumps({'version': '%d.%d' % sys.version_info[:2],"
        " 'stdlib': sysconfig.get_path('stdlib'), 'executable': sys.executable}))"
    )
    output = subprocess.run(
        [str(python), "-I", "-c", code], capture_output=True, text=True, check=True
    ).stdout
    result: dict[str, str] = json.loads(output)
    return result


def make_standalone_prefix(python: Path, dest: Path, variant: str | None) -> Path:
    """Build the prefix at ``dest`` and return the path of its python executable."""
    info = describe(python)
    version = info["version"]
    real_stdlib = Path(info["stdlib"])
    bindir = dest / "bin"
    bindir.mkdir(parents=True)
    executable = bindir / f"python{version}"
    shutil.copy2(os.path.realpath(info["executable"]), executable)
    for alias in ("python3", "python"):
        (bindir / alias).symlink_to(executable.name)
    stdlib = dest / "lib" / f"python{version}"
    stdlib.mkdir(parents=True)
    for entry in real_stdlib.iterdir():
        if entry.name not in _SKIP:
            (stdlib / entry.name).symlink_to(entry)
    shutil.copytree(
        real_stdlib / "ensurepip",
        stdlib / "ensurepip",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (stdlib / "site-packages").mkdir()
    if variant is not None:
        write_sitecustomize(stdlib, variant)
    return executable


def install_wheel(python: Path, wheel: Path) -> None:
    """Install ``wheel`` into the prefix of ``python`` the way a build host would:
    with installer, scripts pointing at the prefix's interpreter, bytecode compiled."""
    import zipfile

    from installer import install
    from installer.destinations import SchemeDictionaryDestination
    from installer.sources import WheelFile

    prefix = python.parent.parent
    site = next(prefix.glob("lib/python3*/site-packages"))
    destination = SchemeDictionaryDestination(
        {
            "purelib": str(site),
            "platlib": str(site),
            "scripts": str(prefix / "bin"),
            "data": str(prefix),
            "headers": str(prefix / "include"),
        },
        interpreter=str(python),
        script_kind="posix",
    )
    with zipfile.ZipFile(wheel) as archive:
        install(WheelFile(archive), destination, {"INSTALLER": b"pip\n"})


def verify_installed_record(site: Path, distribution: str) -> int:
    """Every hashed RECORD row of an installed distribution matches the file; rows checked."""
    from installer.records import RecordEntry, parse_record_file

    dist_info = next(site.glob(f"{distribution}-*.dist-info"))
    rows = list(parse_record_file((dist_info / "RECORD").read_text().splitlines()))
    checked = 0
    for path, hash_, size in rows:
        if not hash_:
            continue
        entry = RecordEntry.from_elements(path, hash_, size)
        data = (site / path).resolve().read_bytes()
        assert entry.hash_ is not None and entry.hash_.validate(data), path
        assert entry.size == len(data), path
        checked += 1
    return checked

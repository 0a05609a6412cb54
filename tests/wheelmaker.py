"""Build small wheels by code, for installs and for the bad-input corpus."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from collections.abc import Mapping
from pathlib import Path


def record_row(name: str, payload: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(payload).digest()).rstrip(b"=")
    return f"{name},sha256={digest.decode()},{len(payload)}\n"


def make_wheel(
    directory: Path,
    distribution: str = "hello_pipfix",
    version: str = "1.0",
    files: Mapping[str, bytes] | None = None,
) -> Path:
    """A valid pure-Python wheel with a correct RECORD."""
    files = dict(files or {f"{distribution}/__init__.py": b"GREETING = 'hello from a wheel'\n"})
    dist_info = f"{distribution}-{version}.dist-info"
    files[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n"
    ).encode()
    files[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: pipfix-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = "".join(record_row(n, p) for n, p in files.items()) + f"{dist_info}/RECORD,,\n"
    path = directory / f"{distribution}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, payload in files.items():
            archive.writestr(name, payload)
        archive.writestr(f"{dist_info}/RECORD", record)
    return path

"""Fetch the pinned upstream wheels listed in manifest.txt into cache/.

The tests run against real pip and setuptools wheels from PyPI, never against
copies committed here. Each wheel is fetched by pip with ``--require-hashes``,
so a file that does not match its pinned sha256 is never used. The machine's
own pip configuration (find-links, extra indexes) is ignored on purpose: the
same manifest must give the same files everywhere.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.txt"
CACHE = HERE / "cache"


def read_manifest(manifest: Path = MANIFEST) -> dict[str, str]:
    """Return {wheel file name: sha256} from the manifest."""
    pins: dict[str, str] = {}
    for line in manifest.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, digest = line.split()
            pins[name] = digest
    return pins


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pip_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
    )
    return env


def _requirement(filename: str, digest: str) -> str:
    name, version = filename.split("-")[:2]
    return f"{name}=={version} --hash=sha256:{digest}\n"


def fetch_one(filename: str, digest: str, cache: Path) -> Path:
    """Download one pinned wheel into ``cache`` unless a verified copy is there."""
    target = cache / filename
    if target.is_file() and sha256_of(target) == digest:
        return target
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(_requirement(filename, digest), encoding="utf-8")
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--require-hashes",
            "--only-binary",
            ":all:",
            "--python-version",
            "3.13",
            "--dest",
            tmp,
            "-r",
            str(requirements),
        ]
        result = subprocess.run(command, env=_pip_environment(), capture_output=True, text=True)
        downloaded = Path(tmp) / filename
        if result.returncode != 0 or not downloaded.is_file():
            raise RuntimeError(f"{filename}: pip download failed:\n{result.stderr}")
        if sha256_of(downloaded) != digest:
            raise RuntimeError(f"{filename}: sha256 does not match the manifest")
        os.replace(downloaded, target)
    return target


def fetch_all(cache: Path = CACHE) -> list[Path]:
    """Make sure every pinned wheel is in ``cache``; return their paths."""
    cache.mkdir(parents=True, exist_ok=True)
    pins = read_manifest()
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(fetch_one, n, d, cache) for n, d in pins.items()]
        return [f.result() for f in futures]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=CACHE)
    args = parser.parse_args()
    try:
        paths = fetch_all(args.dest)
    except RuntimeError as exc:
        print(f"fetch.py: {exc}", file=sys.stderr)
        return 1
    print(f"{len(paths)} pinned wheels verified in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``pipfix doctor``: why pip, venv and binary wheels do (not) work with a Python build.

Read-only. Works from the target's files alone (it may be cross-compiled);
when the target runs on this host, live facts are added (``python -I -c``
probes with a clean environment, see ``live``), and every fact and finding
says where it came from: ``static`` (files), ``live`` (running the target) or
``host`` (this machine's environment, user and loader). ``--static-only``
runs nothing at all.

Exit codes: 0 when every finding is ``info``, 1 when any is a ``warning`` or
an ``error``, 2 when doctor itself fails (not an installation, unreadable).

JSON (``pipfix doctor --json``, ``schema`` = 1; fields are only ever added)::

    {"schema": 1, "command": "doctor", "exit_code": 0 | 1,
     "target": {"path", "prefix", "base_prefix", "venv": bool, "version": "3.11",
                "stdlib", "executable": str | null, "site_packages": [str]},
     "live": {"available": bool, "reason": str | null},
     "facts": [{"id": "interpreter.libc", "label": str, "value": JSON,
                "source": "static" | "live" | "host"}],
     "findings": [{"id": "loading.impossible", "group": "loading",
                   "severity": "info" | "warning" | "error",
                   "summary": str, "explanation": str | null,
                   "evidence": {str: JSON}, "action": str | null,
                   "source": "static" | "live" | "host"}]}

Finding ids (stable), by group:

* interpreter: ``summary``, ``not-found``, ``unreadable``
* loading: ``ok``, ``impossible`` (static executable), ``dlopen-self-fails``,
  ``ctypes-import-fails``, ``extension-fails``, ``probe-crashed``
* tags: ``platforms``, ``no-binary-wheels``, ``crash``
* ensurepip: ``needs-patch``, ``patched``, ``safe``, ``unpatchable``,
  ``unreadable``, ``none``, ``pip-patched``, ``pip-unpatched``,
  ``pip-not-installed``
* extensions: ``ok``, ``libpython-missing``, ``libpython-second-copy``,
  ``unloadable``, ``unreadable``
* installs: ``externally-managed``, ``user-scripts-off-path``,
  ``root-outside-venv``
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .binary import read_binary
from .checks import interpreter_items, loading_items
from .context import Context, host_context_values
from .extensions import extension_items
from .findings import DoctorReport, Fact, Finding, Item, Severity
from .installs import install_items
from .live import gather
from .packages import ensurepip_pip_wheel, package_items
from .render import render
from .subject import Subject, find_subject
from .tags import tag_items


def _items(ctx: Context) -> Iterator[Item]:
    yield from interpreter_items(ctx)
    yield from loading_items(ctx)
    yield from tag_items(ctx)
    yield from package_items(ctx)
    yield from extension_items(ctx)
    yield from install_items(ctx)


def diagnose(target: str | Path | None = None, *, run_target: bool = True) -> DoctorReport:
    """Examine ``target`` (a prefix, venv or python executable; default: the running Python)."""
    subject = find_subject(target)
    binary = read_binary(subject, may_run=run_target)
    live = gather(subject.executable, ensurepip_pip_wheel(subject), allowed=run_target)
    env, euid = host_context_values()
    ctx = Context(subject, binary, live, env, euid)
    return DoctorReport.build(subject.to_json(), live.to_json(), _items(ctx))


__all__ = ["DoctorReport", "Fact", "Finding", "Severity", "Subject", "diagnose", "render"]

"""Console-script launchers (``pip``, ``pip3``, ``pip3.X``) in the target's own style.

python-build-standalone ships relocatable ``/bin/sh`` trampolines that find
the interpreter next to themselves, so a moved prefix keeps working; most
other installations use an absolute shebang. pipfix keeps whatever the target
already has and writes trampolines only where they already are, or where
``--relocatable`` asks for them.
"""

from __future__ import annotations

from pathlib import Path

from installer.scripts import Script

_TRAMPOLINE = (
    "#!/bin/sh\n"
    '\'\'\'exec\' "$(dirname -- "$(realpath -- "$0")")"/\'{interpreter}\' "$0" "$@"\n'
    "' '''\n"
)


def is_relocatable(script: bytes) -> bool:
    """A ``/bin/sh`` trampoline that execs a python found next to the script."""
    lines = script.split(b"\n", 2)
    return (
        len(lines) >= 2
        and lines[0].startswith(b"#!/bin/sh")
        and lines[1].startswith(b"'''exec'")
        and b"$0" in lines[1]
    )


def existing_style_is_relocatable(scripts: list[Path]) -> bool | None:
    """True/False from the target's current launchers; None when it has none."""
    styles = []
    for script in scripts:
        try:
            styles.append(is_relocatable(script.read_bytes()[:512]))
        except OSError:
            continue
    if not styles:
        return None
    return all(styles)


def generate(
    name: str, module: str, attr: str, section: str, interpreter: Path, relocatable: bool
) -> bytes:
    """A launcher for one entry point, by installer, with the chosen first lines."""
    _, data = Script(name, module, attr, section).generate(str(interpreter), "posix")  # type: ignore[arg-type]
    if not relocatable:
        return data
    body = data.split(b"\n", 1)[1] if data.startswith(b"#!") else data
    return _TRAMPOLINE.format(interpreter=interpreter.name).encode() + body


def make_relocatable(script: bytes, interpreter: Path) -> bytes:
    """An existing shebang launcher turned into a trampoline (same Python body)."""
    if is_relocatable(script):
        return script
    body = script.split(b"\n", 1)[1] if script.startswith(b"#!") else script
    if body.startswith(b"'''exec'"):  # installer's own long-path form
        body = body.split(b"' '''\n", 1)[-1]
    return _TRAMPOLINE.format(interpreter=interpreter.name).encode() + body

"""Command line of ``pipfix doctor`` and ``pipfix fix-extensions``.

``register(commands)`` adds both subcommands to pipfix's parser (called from
``cli.build_parser``); ``main`` runs them on their own (tests, and
``python -m pipfix.doctor_cli``). Handlers print one line for a
:class:`PipfixError` and return an exit code; they never show a traceback for it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .errors import EXIT_ERROR, PipfixError

if TYPE_CHECKING:
    import argparse

DOCTOR_EXIT_CODES = """exit codes:
  0  healthy: only informational findings
  1  at least one finding of severity warning or error
  2  error: not a Python installation, unreadable target
"""

FIX_EXIT_CODES = """exit codes:
  0  done (or nothing to do); with --dry-run: planned
  1  some files were skipped (reported with the reason); nothing half-written
  2  error: bad input, not a Python installation, I/O failure, lock busy
"""


def _fail(exc: PipfixError) -> int:
    print(f"pipfix: error: {exc}", file=sys.stderr)
    return exc.exit_code


def _print_json(data: dict[str, Any]) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import diagnose, render

    try:
        report = diagnose(args.target, run_target=not args.static_only)
    except PipfixError as exc:
        return _fail(exc)
    if args.json:
        _print_json(report.to_json())
    else:
        sys.stdout.write(render(report))
    return report.exit_code


def cmd_fix_extensions(args: argparse.Namespace) -> int:
    from .fix_extensions import fix_extensions

    try:
        report = fix_extensions(args.items, dry_run=args.dry_run)
    except PipfixError as exc:
        return _fail(exc)
    if args.json:
        _print_json(report.to_json())
        return report.exit_code
    if args.quiet:
        return report.exit_code
    for item in report.files:
        line = f"{item.action}: {item.path}"
        if item.reason:
            line += f" [{item.reason}]"
        print(line)
        if args.verbose:
            print(f"    RPATH={item.rpath} RUNPATH={item.runpath}")
            if item.record:
                print(f"    RECORD: {item.record}")
            if item.backup:
                print(f"    backup: {item.backup}")
    actions = [f.action for f in report.files]
    counts = {a: actions.count(a) for a in dict.fromkeys(actions)}
    print(", ".join(f"{n} {a}" for a, n in counts.items()) or "no extension module needs fixing")
    return report.exit_code


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``doctor`` and ``fix-extensions`` to pipfix's subcommands."""
    import argparse

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], text: str, epilog: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text, epilog=epilog,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(handler=handler)
        return sub

    sub = command("doctor", cmd_doctor,
                  "explain whether pip, venv and binary wheels work with a Python build "
                  "(read-only)", DOCTOR_EXIT_CODES)
    sub.add_argument("target", nargs="?", metavar="TARGET",
                     help="prefix, venv or python executable (default: the running Python)")
    sub.add_argument("--json", action="store_true", help="machine-readable report (schema 1)")
    sub.add_argument("--static-only", action="store_true",
                     help="never run the target (or its loader): facts from files only")

    sub = command("fix-extensions", cmd_fix_extensions,
                  "drop DT_NEEDED libpython from extension modules that cannot load it "
                  "(exact backups kept; undone by `pipfix restore`)", FIX_EXIT_CODES)
    sub.add_argument("items", nargs="*", metavar="TARGET|PATH",
                     help="prefix, venv or python executable, or .so files / directories "
                     "(required unless --dry-run)")
    sub.add_argument("--dry-run", action="store_true", help="only say what would change")
    sub.add_argument("--json", action="store_true", help="machine-readable report (schema 1)")
    sub.add_argument("-v", "--verbose", action="store_true", help="also print paths and backups")
    sub.add_argument("-q", "--quiet", action="store_true", help="print errors only")


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="pipfix")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
        return code
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"pipfix: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

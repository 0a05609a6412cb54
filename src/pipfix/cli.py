"""Command line: argparse to the operations, and rendering of their reports.

Nothing here decides what to patch; it only parses arguments, calls the API
and prints (human lines or ``--json``). User errors become one line on stderr
and a documented exit code, never a traceback.

The operations are imported by each command, not with this module:
``patch-wheel`` first forks its transform helper (``transform_helper.started_early``:
for a serial run, or one serving every worker of a parallel run), which then
imports libcst while this process imports the rest of pipfix.  It is forked even
before argparse is imported and the parser built (``_early_patch_wheel`` reads the
command line for it); a run that turns out to be of the other kind does not use
it, and it is stopped.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from . import doctor_cli
from ._version import __version__
from .errors import EXIT_ERROR, EXIT_OK, PipfixError

if TYPE_CHECKING:
    import argparse

    from .reports import RunReport, WheelReport

EXIT_CODES_HELP = """exit codes:
  0  success; for check: nothing needs patching
  1  check: something needs patching
  2  error: bad input, not a Python installation, I/O failure, lock busy
  3  a shape the codemods cannot guard safely; that wheel was not written
"""


def _wheel_line(wheel: WheelReport, verbose: bool, kind: str) -> str:
    line = f"{wheel.distribution} {wheel.version} ({kind}): {wheel.action}"
    if wheel.action not in ("restored", "already original"):
        line += f" [{wheel.reason}]"
    if verbose:
        line += f"\n    {wheel.path}\n    sha256 {wheel.sha256}"
        if wheel.backup:
            line += f"\n    backup {wheel.backup}"
        if wheel.output and wheel.output != wheel.path:
            line += f"\n    output {wheel.output}"
    return line


def _install_line(install: dict[str, object], verbose: bool) -> str:
    line = f"{install['distribution']} {install['version']} (installed): {install['action']}"
    if install.get("source") and install["action"] != "already patched":
        line += f" [from {install['source']}]"
    if verbose:
        line += f"\n    {install['site_dir']}"
        for key in ("scheme", "scripts", "bytecode"):
            if install.get(key):
                line += f"\n    {key}: {install[key]}"
    return line


def _summary(report: RunReport) -> str:
    actions = [w.action for w in report.wheels] + [str(i["action"]) for i in report.installs]
    if not actions:
        return "no ensurepip wheels or installed pip found"
    counts = {a: actions.count(a) for a in dict.fromkeys(actions)}
    summary = ", ".join(f"{n} {a}" for a, n in counts.items())
    if report.command == "check" and report.exit_code == 1:
        summary += f"; run: pipfix apply {' '.join(report.targets)}"
    return summary


def _render(report: RunReport, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(report.to_json(), indent=2, sort_keys=True))
        return
    if args.quiet:
        return
    kind = "wheel" if report.command == "patch-wheel" else "ensurepip wheel"
    for wheel in report.wheels:
        print(_wheel_line(wheel, args.verbose, kind))
    for install in report.installs:
        print(_install_line(install, args.verbose))
    print(_summary(report))


def _cmd_check(args: argparse.Namespace) -> int:
    from . import operations

    report = operations.check(
        args.targets, under=args.all, use_cache=not args.no_cache, jobs=args.jobs
    )
    _render(report, args)
    return report.exit_code


def _cmd_apply(args: argparse.Namespace) -> int:
    from . import operations

    report = operations.apply(
        args.targets,
        dry_run=args.dry_run,
        under=args.all,
        relocatable=args.relocatable,
        ensurepip=args.ensurepip,
        reinstall=not args.wheels_only,
        use_cache=not args.no_cache,
        jobs=args.jobs,
    )
    _render(report, args)
    return report.exit_code


def _cmd_restore(args: argparse.Namespace) -> int:
    from . import operations

    report = operations.restore(args.targets, under=args.all)
    _render(report, args)
    return report.exit_code


def _cmd_patch_wheel(args: argparse.Namespace) -> int:
    from . import operations

    report = operations.patch_wheel(
        args.wheels,
        args.output,
        in_place=args.in_place,
        use_cache=not args.no_cache,
        jobs=args.jobs,
    )
    _render(report, args)
    return report.exit_code


def _cmd_diff(args: argparse.Namespace) -> int:
    from . import operations

    text = operations.diff(args.items)
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))
    sys.stdout.buffer.flush()
    return EXIT_OK


def _cmd_list_patches(args: argparse.Namespace) -> int:
    from .codemods import all_codemods

    codemods = all_codemods()
    if args.json:
        print(json.dumps([c.__dict__ | {"upstream": list(c.upstream)} for c in codemods], indent=2))
        return EXIT_OK
    for codemod in codemods:
        print(f"{codemod.id}: {codemod.why}")
        for reference in codemod.upstream:
            print(f"    upstream: {reference}")
    return EXIT_OK


def _add_cache_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="neither use nor fill the cache of patched wheels and of seals of verified "
        "ones ($XDG_CACHE_HOME/pipfix)",
    )
    parser.add_argument(
        "-j",
        "--jobs",
        type=_positive_int,
        default=None,
        metavar="N",
        help="verify and patch up to N wheels at once (default: one per usable CPU "
        "from six wheels on)",
    )


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _add_output_flags(parser: argparse.ArgumentParser, json_flag: bool = True) -> None:
    if json_flag:
        parser.add_argument(
            "--json", action="store_true", help="machine-readable report (schema 1)"
        )
    parser.add_argument("-v", "--verbose", action="store_true", help="also print paths and hashes")
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")


def build_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="pipfix",
        description="Make the pip and setuptools wheels that ensurepip bundles work on "
        "statically linked and musl CPython builds.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pipfix {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], text: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=text,
            description=text,
            epilog=EXIT_CODES_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler)
        return sub

    target_help = "installation prefix or its python executable"
    all_help = "every installation and venv below DIR (e.g. a directory of standalone Pythons)"
    sub = command(
        "check", _cmd_check, "report which ensurepip wheels and installed pips need patching"
    )
    sub.add_argument(
        "targets", nargs="*", metavar="TARGET", help=f"{target_help} (default: the running Python)"
    )
    sub.add_argument("--all", metavar="DIR", help=all_help)
    _add_output_flags(sub)
    _add_cache_flag(sub)

    sub = command(
        "apply",
        _cmd_apply,
        "patch the ensurepip wheels in place (exact backups kept), "
        "then bring the installed pip and setuptools to the patched state",
    )
    sub.add_argument(
        "targets", nargs="*", metavar="TARGET", help=f"{target_help} (required unless --dry-run)"
    )
    sub.add_argument("--all", metavar="DIR", help=all_help)
    sub.add_argument("--dry-run", action="store_true", help="only say what would change")
    style = sub.add_mutually_exclusive_group()
    style.add_argument(
        "--relocatable",
        dest="relocatable",
        action="store_true",
        default=None,
        help="write /bin/sh launchers that find python next to themselves "
        "(default: keep the target's current style)",
    )
    style.add_argument(
        "--no-relocatable",
        dest="relocatable",
        action="store_false",
        help="write launchers with an absolute shebang",
    )
    sub.add_argument(
        "--ensurepip",
        action="store_true",
        help="install pip from the patched bundled wheels where none is installed",
    )
    sub.add_argument(
        "--wheels-only",
        action="store_true",
        help="patch the ensurepip wheels only; leave installed distributions alone",
    )
    _add_output_flags(sub)
    _add_cache_flag(sub)

    sub = command("diff", _cmd_diff, "print the unified diff of what would change; writes nothing")
    sub.add_argument(
        "items", nargs="*", metavar="TARGET|WHEEL", help=f"{target_help}, or wheel files"
    )

    sub = command(
        "restore", _cmd_restore, "put back the exact originals (wheels and installed files)"
    )
    sub.add_argument("targets", nargs="*", metavar="TARGET", help=target_help)
    sub.add_argument("--all", metavar="DIR", help=all_help)
    _add_output_flags(sub)

    sub = command("patch-wheel", _cmd_patch_wheel, "patch loose wheel files (for build steps)")
    sub.add_argument("wheels", nargs="+", metavar="WHEEL", type=Path)
    where = sub.add_mutually_exclusive_group(required=True)
    where.add_argument("-o", "--output", type=Path, metavar="DIR", help="write results to DIR")
    where.add_argument("--in-place", action="store_true", help="replace the files, keeping backups")
    _add_output_flags(sub)
    _add_cache_flag(sub)

    sub = command(
        "list-patches",
        _cmd_list_patches,
        "list the codemods, why they exist and upstream references",
    )
    sub.add_argument("--json", action="store_true", help="machine-readable list")

    doctor_cli.register(commands)
    return parser


def _early_patch_wheel(arguments: Sequence[str]) -> tuple[list[Path], bool, bool] | None:
    """The wheels of a ``patch-wheel`` command line, whether it may use the cache
    and whether it runs workers, read before argparse is even imported: the
    transform helper's head start.  None for other commands, for ``--help``, or
    where a ``-j`` value does not read as a number.  A guess never decides
    anything: the helper only looks at these paths, and a run of the other kind
    (serial or with workers) leaves it unused (``transform_helper.take_early``)."""
    from . import forking

    if not arguments or arguments[0] != "patch-wheel" or "--" in arguments:
        return None
    wheels: list[Path] = []
    jobs: int | None = None
    words = iter(arguments[1:])
    for word in words:
        if word in ("-h", "--help"):
            return None
        if word in ("-j", "--jobs"):
            word = "-j" + next(words, "")
        elif word.startswith("--jobs="):
            word = "-j" + word[len("--jobs="):]
        if word.startswith("-j"):
            if not word[2:].isdigit():
                return None
            jobs = int(word[2:])
        elif word.endswith(".whl") and not word.startswith("-"):
            wheels.append(Path(word))
    if not wheels:
        return None
    return wheels, "--no-cache" not in arguments, forking.planned_workers(len(wheels), jobs) >= 2


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    early: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    patch_wheel = _early_patch_wheel(arguments)
    if patch_wheel is not None:
        from . import transform_helper

        early = transform_helper.started_early(*patch_wheel)
    with early:
        return _parsed_and_run(arguments)


def _parsed_and_run(arguments: Sequence[str]) -> int:
    args = build_parser().parse_args(arguments)
    try:
        code: int = args.handler(args)
        return code
    except PipfixError as exc:
        print(f"pipfix: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"pipfix: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("pipfix: interrupted", file=sys.stderr)
        return 130


def run() -> NoReturn:
    """The ``pipfix`` command: ``main``, then exit without tearing the interpreter down.

    Every file pipfix writes is complete (fsynced and renamed) before ``main``
    returns and nothing is left to finalizers, so, besides the ``atexit``
    handlers (run here: logging, coverage), the only work a normal exit would
    add is freeing every object one by one: 60-100 ms after a libcst run.
    The cyclic garbage collector runs rarely: a run allocates hundreds of
    thousands of short-lived objects (libcst trees, RECORD rows) that hold no
    cycles, and scanning them at the default rate cost a tenth of a run.
    """
    gc.set_threshold(100_000, 50, 100)
    code = main()
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is not None:
        run_exit_handlers()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe: what could not be printed is lost either way
        code = code or EXIT_ERROR
    os._exit(code)

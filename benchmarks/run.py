#!/usr/bin/env python3
"""pipfix against the alternatives it replaces, on the pinned upstream wheels.

    python benchmarks/run.py              # 5 repetitions, prints a markdown table
    python benchmarks/run.py --repeat 9   # more repetitions
    python benchmarks/run.py --quick      # one repetition, fewer wheels: a smoke run

Every command runs as a whole process, as a user or a build step runs it, and
pipfix and each alternative take turns on the same input (the order flips
every repetition), so a busy machine slows both alike.  The table gives the
median wall time of each side and their ratio (pipfix / alternative); the CPU
ratio (user + system time of the process tree) is less sensitive to load.

The alternatives are scripted faithfully:

* the shell hack python-build-standalone used: ``unzip``, ``sed`` the same
  guards into the files pipfix changes, ``zip -r`` (RECORD is left stale);
* ``python -m wheel unpack``, the same ``sed``, ``python -m wheel pack``
  (RECORD regenerated);
* ``pip install --force-reinstall --no-deps`` of the patched pip wheel into a
  venv, against ``pipfix apply`` on a prefix made by the real ensurepip.

pipfix runs from this checkout (``PYTHONPATH=src``) with the interpreter
running this script, which needs pipfix's dependencies (``pip install .``);
pip runs with ``PIP_CONFIG_FILE=/dev/null`` and ``PIP_NO_INDEX=1``; the pipfix
cache lives in a temporary ``XDG_CACHE_HOME`` (cold rows run with the cache
disabled).  Needs bash, sed, zip and unzip (``apt-get install zip unzip``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import random
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
TESTS = ROOT / "tests"
FETCH = ROOT / "vendored_wheels" / "fetch.py"
ONE_WHEEL = "pip-23.2.1-py3-none-any.whl"
QUICK_WHEELS = 4

# The guards pipfix's codemods add, as sed expressions: ImportError handlers
# also catch OSError, and ``x = ctypes.CDLL(None)`` is wrapped in try/except.
SED_GUARDS = (
    r"-e 's/except ImportError:/except (ImportError, OSError):/' "
    r"-e 's/^\( *\)\([A-Za-z_][A-Za-z_0-9]*\) = ctypes\.CDLL(None)$/"
    r"\1try:\n\1    \2 = ctypes.CDLL(None)\n\1except OSError:\n\1    return None/'"
)

TARGETS = {  # case id: (kind, limit, text)
    "one-hack": ("ratio", 0.80, "≤ 0.80"),
    "one-wheel": ("ratio", 0.55, "≤ 0.55"),
    "all-hack": ("ratio", 0.25, "≤ 0.25"),
    "apply-pip": ("ratio", 0.30, "≤ 0.30"),
    "noop-check": ("seconds", 0.20, "≤ 0.20 s"),
    "noop-apply": ("seconds", 0.20, "≤ 0.20 s"),
}
RSS_LIMIT_MIB = 80

# The least any libcst codemod tool takes on the one wheel: the interpreter,
# libcst, and pipfix's codemods on the modules pipfix changes there, read from
# plain files (no wheel read, verified or written) and ending, as pipfix does,
# without the interpreter's teardown (libcst's many objects take ~30 ms to free).
# Exits 1 if a module comes out unchanged: the reference must do the real work.
CODEMODS_FLOOR = """
import os, sys
from pipfix.codemods.engine import transform_source
for path in sys.argv[1:]:
    with open(path, "rb") as module:
        if not transform_source(path, module.read()).changed:
            os._exit(1)
os._exit(0)
"""

# Runs a command and prints its exit code, the largest RSS of its processes
# (RUSAGE_CHILDREN, KiB) and the peak sum of the PSS of its process tree (KiB;
# -1 without /proc), sampled every millisecond.
MEMORY_PROBE = """
import os, resource, subprocess, sys, time

def tree(pid):
    found = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as children:
                for child in children.read().split():
                    found += tree(int(child))
    except OSError:
        pass
    return found

def pss(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0

sampling = os.path.exists(f"/proc/{os.getpid()}/smaps_rollup")
process = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
peak = 0
while sampling and process.poll() is None:
    peak = max(peak, sum(pss(pid) for pid in tree(process.pid)))
    time.sleep(0.001)
code = process.wait()
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, peak if sampling else -1)
"""
TIMES = "\u00d7"  # the multiplication sign of ratios


class BenchmarkError(Exception):
    """The benchmark cannot run here (missing tool or dependency) or a command failed."""


# --- processes --------------------------------------------------------------------------


def base_environment(work: Path) -> dict[str, str]:
    """Like the test suite's clean_env: no user pip/Python configuration leaks in."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))
    }
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_INDEX="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        PIP_NO_CACHE_DIR="1",
        PYTHONNOUSERSITE="1",
        LC_ALL="C",
        XDG_CACHE_HOME=str(work / "cache-warm"),
    )
    return env


@dataclass
class Command:
    """One contender of a case: what runs, how to reset its inputs, what exit is fine."""

    label: str
    argv: list[str]
    env: dict[str, str]
    prepare: Callable[[], None] = lambda: None
    ok: tuple[int, ...] = (0,)
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)

    def run(self, record: bool = True) -> None:
        self.prepare()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        result = subprocess.run(self.argv, env=self.env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if result.returncode not in self.ok:
            raise BenchmarkError(
                f"{self.label}: exit {result.returncode}\n$ {shlex.join(self.argv)}\n"
                f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
        if record:
            self.walls.append(wall)
            self.cpus.append(
                after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
            )

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpus)


# Below this many repetitions a ratio gets no interval.
MIN_REPEATS_FOR_INTERVAL = 5
RESAMPLES = 2000


def ratio_interval(mine: Command, other: Command) -> tuple[float, float] | None:
    """A 95% bootstrap interval of ``mine.wall / other.wall`` (ratio of medians).

    Single timings on a shared VM spread by tens of percent, so a ratio near a
    target says little by itself.  Repetitions are resampled in pairs where both
    commands ran in each one (the two timings of a repetition share the machine's
    phase), each command on its own otherwise.  The seed is fixed: the same
    timings give the same interval.
    """
    mine_walls, other_walls = mine.walls, other.walls
    if min(len(mine_walls), len(other_walls)) < MIN_REPEATS_FOR_INTERVAL:
        return None
    draw = random.Random(0)
    paired = len(mine_walls) == len(other_walls)
    ratios = []
    for _ in range(RESAMPLES):
        picks = [draw.randrange(len(mine_walls)) for _ in mine_walls]
        others = picks if paired else [draw.randrange(len(other_walls)) for _ in other_walls]
        ratios.append(
            statistics.median(mine_walls[i] for i in picks)
            / statistics.median(other_walls[i] for i in others)
        )
    ratios.sort()
    return ratios[int(0.025 * RESAMPLES)], ratios[int(0.975 * RESAMPLES) - 1]


def ratio_text(ratio: float, interval: tuple[float, float] | None) -> str:
    if interval is None:
        return f"{ratio:.2f}{TIMES}"
    return f"{ratio:.2f}{TIMES} ({interval[0]:.2f}-{interval[1]:.2f})"


@dataclass
class Case:
    """pipfix against zero or more alternatives on the same input."""

    id: str
    title: str
    pipfix: Command
    alternatives: list[tuple[str, Command]] = field(default_factory=list)  # (target id, cmd)
    note: str = ""


def check_output(argv: Sequence[str], env: dict[str, str], what: str) -> str:
    result = subprocess.run(list(argv), env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchmarkError(f"{what} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def fresh_dir(path: Path) -> Callable[[], None]:
    def prepare() -> None:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)

    return prepare


def absent(path: Path) -> Callable[[], None]:
    def prepare() -> None:
        shutil.rmtree(path, ignore_errors=True)

    return prepare


def both(*steps: Callable[[], None]) -> Callable[[], None]:
    def prepare() -> None:
        for step in steps:
            step()

    return prepare


def load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise BenchmarkError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the benchmark ----------------------------------------------------------------------


class Benchmark:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.python = sys.executable
        self.env = base_environment(work)
        self.pipfix_env = dict(self.env, PYTHONPATH=str(SRC))
        self.notes: list[str] = []
        # Each ratio's bootstrap interval, computed once for the table and the JSON.
        self._intervals: dict[tuple[int, int], tuple[float, float] | None] = {}
        # The floor of any run that patches a module: a process that imports libcst,
        # and one that imports what pipfix builds on (RECORD rows: installer; wheel
        # file names: packaging); ``setup`` adds the codemods' own floor.
        self.references = [
            Command("interpreter start (python -c pass)", [self.python, "-c", "pass"],
                    self.pipfix_env),
            Command("interpreter start + import libcst", [self.python, "-c", "import libcst"],
                    self.pipfix_env),
            Command("interpreter start + import libcst, installer, packaging.utils",
                    [self.python, "-c", "import libcst, installer, packaging.utils"],
                    self.pipfix_env),
        ]
        # The references the one-wheel run is compared with repetition by repetition.
        self.compared = [self.references[1]]
        # The codemods' floor, once ``setup`` has made it (``codemods_floor``).
        self.floor: Command | None = None
        self.cases: list[Case] = []
        self.extra: dict[str, Any] = {}
        self.no_cache_flag = False
        # How pipfix is started: its console script, as users run it, once
        # ``check_requirements`` finds it installed for this interpreter.
        self.entry: list[str] = ["-m", "pipfix"]

    # setup (never timed)

    def log(self, message: str) -> None:
        if not self.args.silent_progress:
            print(f"[setup] {message}", file=sys.stderr, flush=True)

    def pipfix(self, *args: str) -> list[str]:
        return [self.python, *self.entry, *args]

    def find_console_script(self) -> None:
        """Run pipfix as users do, through the ``pipfix`` script the install put next
        to this interpreter's others (it imports ``pipfix.cli`` from the checkout,
        which ``PYTHONPATH`` puts first); ``python -m pipfix`` where there is none
        (it adds runpy's start-up: a few milliseconds per run)."""
        script = Path(sysconfig.get_path("scripts")) / "pipfix"  # ``self.python`` is this one
        if script.is_file():
            self.entry = [str(script)]
        else:
            self.notes.append(f"no console script at {script}: pipfix runs as python -m pipfix")
        self.extra["pipfix_entry"] = " ".join(self.entry)

    def check_requirements(self) -> dict[str, bool]:
        code = "import pipfix, libcst, wheel, installer, packaging; print(pipfix.__file__)"
        try:
            where = check_output([self.python, "-c", code], self.pipfix_env, "import pipfix")
        except BenchmarkError as exc:
            raise BenchmarkError(
                f"{exc}\npipfix's dependencies are missing for {self.python}: "
                "run 'python3 -m pip install .' in the checkout first"
            ) from None
        self.extra["pipfix_module"] = where.strip()
        self.find_console_script()
        tools = {tool: shutil.which(tool) is not None for tool in ("bash", "sed", "zip", "unzip")}
        if not all(tools.values()):
            missing = " ".join(t for t, ok in tools.items() if not ok)
            self.notes.append(
                f"missing {missing}: the shell-hack and wheel comparisons are skipped "
                "(install them, e.g. 'apt-get install zip unzip')"
            )
        help_text = check_output(self.pipfix("patch-wheel", "--help"), self.pipfix_env, "pipfix")
        self.no_cache_flag = "--no-cache" in help_text
        if not self.no_cache_flag:
            self.notes.append(
                "this pipfix's CLI has no --no-cache: cold rows use an empty cache "
                "directory, warm-cache rows are skipped"
            )
        return tools

    def wheels(self) -> list[Path]:
        fetch = load_module("vendored_fetch", FETCH)
        self.log("pinned wheels (vendored_wheels/fetch.py)")
        paths = sorted(fetch.fetch_all(), key=lambda p: (p.name.split("-")[0], p.name))
        return list(paths)

    def cold(self, argv: list[str], label: str, prepare: Callable[[], None]) -> Command:
        """A pipfix command that must not use a cache entry."""
        cache = self.work / "cache-cold"
        if self.no_cache_flag:
            return Command(label, [*argv, "--no-cache"], self.pipfix_env, prepare)
        env = dict(self.pipfix_env, XDG_CACHE_HOME=str(cache))
        return Command(label, argv, env, both(absent(cache), prepare))

    def changed_files(self, wheels: list[Path]) -> dict[str, list[str]]:
        """What pipfix changes in each wheel: the files the hack edits too."""
        out = self.work / "planned"
        out.mkdir()
        report = json.loads(
            check_output(
                self.pipfix("patch-wheel", *map(str, wheels), "-o", str(out), "--json"),
                dict(self.pipfix_env, XDG_CACHE_HOME=str(self.work / "cache-setup")),
                "pipfix patch-wheel (setup)",
            )
        )
        return {Path(w["path"]).name: list(w["changed_files"]) for w in report["wheels"]}

    def codemods_floor(self, wheel: Path, files: list[str]) -> Command:
        """``CODEMODS_FLOOR`` on the modules pipfix changes in ``wheel``, unpacked once."""
        modules = self.work / "floor-modules"
        modules.mkdir()
        paths = []
        with zipfile.ZipFile(wheel) as archive:
            for index, name in enumerate(files):
                path = modules / f"{index}-{name.rpartition('/')[2]}"
                path.write_bytes(archive.read(name))
                paths.append(str(path))
        return Command(
            f"interpreter start + import libcst + pipfix's codemods on the {len(files)} "
            "modules it changes (read from files; no teardown, as pipfix)",
            [self.python, "-c", CODEMODS_FLOOR, *paths],
            self.pipfix_env,
        )

    def hack_script(self, jobs: list[tuple[Path, list[str]]], out_dir: Path, work: Path) -> Path:
        """The shell hack, once per wheel: unzip, sed the guards in, zip -r."""
        lines = ["set -eu"]
        for index, (wheel, files) in enumerate(jobs):
            unpacked = work / str(index)
            edits = " ".join(shlex.quote(f) for f in files)
            lines += [
                f"mkdir -p {shlex.quote(str(unpacked))} && cd {shlex.quote(str(unpacked))}",
                f"unzip -q {shlex.quote(str(wheel))}",
                f"sed -i {SED_GUARDS} {edits}" if files else ":",
                f"zip -q -r {shlex.quote(str(out_dir / wheel.name))} .",
            ]
        script = self.work / f"hack-{len(jobs)}.sh"
        script.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return script

    def wheel_script(self, wheel: Path, files: list[str], out_dir: Path, work: Path) -> Path:
        """wheel unpack, the same sed, wheel pack (RECORD regenerated)."""
        py = shlex.quote(self.python)
        unpacked = shlex.quote(str(work / "-".join(wheel.name.split("-")[:2])))
        edits = " ".join(shlex.quote(f) for f in files)
        script = self.work / "wheel-unpack-pack.sh"
        script.write_text(
            "set -eu\n"
            f"{py} -m wheel unpack -d {shlex.quote(str(work))} {shlex.quote(str(wheel))}\n"
            f"cd {unpacked}\n"
            f"sed -i {SED_GUARDS} {edits}\n"
            f"{py} -m wheel pack -d {shlex.quote(str(out_dir))} .\n",
            encoding="utf-8",
        )
        return script

    def make_prefix(self) -> Path | None:
        """A standalone-like prefix whose pip and setuptools the real ensurepip installed."""
        sys.path.insert(0, str(TESTS))  # standalone.py imports its neighbours
        try:
            standalone = importlib.import_module("standalone")
        except ImportError as exc:
            self.notes.append(f"apply rows skipped: tests/standalone.py unavailable ({exc})")
            return None
        finally:
            sys.path.remove(str(TESTS))
        template = self.work / "prefix-template"
        self.log("prefix from this interpreter + python -m ensurepip")
        python = standalone.make_standalone_prefix(Path(self.python), template, None)
        result = subprocess.run(
            [str(python), "-m", "ensurepip", "--default-pip"],
            env=self.env, capture_output=True, text=True,
        )
        if result.returncode != 0:
            self.notes.append(f"apply rows skipped: ensurepip failed: {result.stderr[-300:]}")
            return None
        # An installed CPython has its stdlib compiled; the prefix links this
        # interpreter's modules one by one, so compile the top level here, or
        # every run of the target (pipfix asks it for its scheme and compiles
        # changed modules with it) would compile its imports from source.
        stdlib = template / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
        subprocess.run(
            [str(python), "-m", "compileall", "-q", "-l", str(stdlib)],
            env=self.env, capture_output=True, check=False,
        )
        return template

    def make_venv(self) -> Path | None:
        venv = self.work / "venv"
        self.log("venv for pip --force-reinstall (python -m venv)")
        result = subprocess.run(
            [self.python, "-m", "venv", str(venv)], env=self.env, capture_output=True, text=True
        )
        if result.returncode != 0:
            self.notes.append(f"pip comparison skipped: python -m venv failed: {result.stderr}")
            return None
        return venv

    def copy_of(self, template: Path, dest: Path) -> Callable[[], None]:
        def prepare() -> None:
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(template, dest, symlinks=True)

        return prepare

    def setup(self) -> None:
        tools = self.check_requirements()
        wheels = self.wheels()
        by_name = {w.name: w for w in wheels}
        if ONE_WHEEL not in by_name:
            raise BenchmarkError(f"{ONE_WHEEL} is not in vendored_wheels/manifest.txt")
        one = by_name[ONE_WHEEL]
        batch = wheels[:QUICK_WHEELS] if self.args.quick else wheels
        self.log("what pipfix changes in each wheel")
        changes = self.changed_files(wheels)
        floor = self.codemods_floor(one, changes[one.name])
        self.references.append(floor)
        self.compared.append(floor)
        self.floor = floor
        hack_ok = all(tools.values())
        w = self.work

        # 1. One wheel, cold process.
        one_out = w / "out-one"
        case = Case(
            "one",
            f"one wheel ({one.name.split('-py')[0]}), cold process, cache disabled",
            self.cold(self.pipfix("patch-wheel", str(one), "-o", str(one_out), "-q"),
                      "pipfix patch-wheel", fresh_dir(one_out)),
        )
        if hack_ok:
            hack_out = w / "out-hack-one"
            script = self.hack_script([(one, changes[one.name])], hack_out, w / "hack-one")
            case.alternatives.append((
                "one-hack",
                Command("shell hack: unzip, sed, zip -r", ["bash", str(script)], self.env,
                        both(fresh_dir(hack_out), absent(w / "hack-one"))),
            ))
            wheel_out = w / "out-wheel-one"
            script = self.wheel_script(one, changes[one.name], wheel_out, w / "wheel-one")
            case.alternatives.append((
                "one-wheel",
                Command("python -m wheel unpack, sed, python -m wheel pack", ["bash", str(script)],
                        self.env, both(fresh_dir(wheel_out), fresh_dir(w / "wheel-one"))),
            ))
        self.cases.append(case)

        # 2. The same, the patched output already in the cache.
        if self.no_cache_flag:
            warm_out = w / "out-warm"
            warm = Command("pipfix patch-wheel (cache hit)",
                           self.pipfix("patch-wheel", str(one), "-o", str(warm_out), "-q"),
                           self.pipfix_env, fresh_dir(warm_out))
            warm.run(record=False)  # fills the cache
            case = Case("warm", "one wheel, cache hit (same input seen before)", warm)
            if hack_ok:
                case.alternatives.append(("", self.cases[0].alternatives[0][1]))
            self.cases.append(case)

        # 3. All pinned wheels in one call, against the hack once per wheel.
        all_out = w / "out-all"
        case = Case(
            "all",
            f"{len(batch)} pinned pip/setuptools wheels, one pipfix call, cache disabled",
            self.cold(self.pipfix("patch-wheel", *map(str, batch), "-o", str(all_out), "-q"),
                      "pipfix patch-wheel (all)", fresh_dir(all_out)),
        )
        if hack_ok:
            hack_out = w / "out-hack-all"
            script = self.hack_script([(b, changes[b.name]) for b in batch], hack_out,
                                      w / "hack-all")
            case.alternatives.append((
                "all-hack",
                Command("shell hack once per wheel", ["bash", str(script)], self.env,
                        both(fresh_dir(hack_out), absent(w / "hack-all"))),
            ))
        self.cases.append(case)

        # 4. apply with the site-packages reinstall, against pip --force-reinstall.
        template = self.make_prefix()
        venv = self.make_venv()
        if template is not None:
            target = w / "prefix"
            case = Case(
                "apply",
                "apply on a prefix (2 ensurepip wheels + installed pip and setuptools), "
                "cache disabled",
                self.cold(self.pipfix("apply", str(target), "-q"), "pipfix apply",
                          self.copy_of(template, target)),
            )
            if venv is not None:
                pip_wheel = w / "planned" / ONE_WHEEL
                case.alternatives.append((
                    "apply-pip",
                    Command("pip install --force-reinstall --no-deps (patched pip wheel) "
                            "into a venv",
                            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                             "--force-reinstall", "--no-deps", str(pip_wheel)], self.env),
                ))
            self.cases.append(case)
            if self.no_cache_flag and venv is not None:
                warm_apply = Command("pipfix apply (cache hit)",
                                     self.pipfix("apply", str(target), "-q"), self.pipfix_env,
                                     self.copy_of(template, target))
                warm_apply.run(record=False)
                self.cases.append(Case("apply-warm", "apply on a prefix, patched wheels cached",
                                       warm_apply, [("", case.alternatives[0][1])]))

            # 5. No-op runs on the patched prefix.
            patched = w / "prefix-patched"
            self.copy_of(template, patched)()
            check_output(self.pipfix("apply", str(patched), "-q"), self.pipfix_env, "setup apply")
            for case_id, title, argv in (
                ("noop-check", "no-op: check on a patched prefix",
                 self.pipfix("check", str(patched), "-q")),
                ("noop-apply", "no-op: apply again on a patched prefix",
                 self.pipfix("apply", str(patched), "-q")),
            ):
                self.cases.append(Case(case_id, title, Command("pipfix", argv, self.pipfix_env)))
            trace = subprocess.run(
                [self.python, "-X", "importtime", *self.pipfix("check", str(patched), "-q")[1:]],
                env=self.pipfix_env, capture_output=True, text=True,
            )
            self.extra["noop_imports_libcst"] = "libcst" in trace.stderr
            self.extra["noop_check_exit"] = trace.returncode

        # 6. Peak memory of patching one wheel, and all of them, in a fresh process.
        for key, case in (("", self.cases[0]), ("_all", self.cases_by_id("all"))):
            rss, pss = self.peak_memory(
                [*case.pipfix.argv], case.pipfix.env, case.pipfix.prepare
            )
            self.extra[f"peak_rss{key}_mib"] = rss
            self.extra[f"peak_pss_tree{key}_mib"] = pss

    def cases_by_id(self, case_id: str) -> Case:
        return next(c for c in self.cases if c.id == case_id)

    def peak_memory(
        self, argv: list[str], env: dict[str, str], prepare: Callable[[], None]
    ) -> tuple[float, float | None]:
        """Peak memory (MiB) of ``argv`` run alone from a fresh process: the RSS of
        its largest process (RUSAGE_CHILDREN), and the peak sum of the PSS of its
        process tree (pipfix and any helper or worker it forks: shared pages counted
        once), sampled every millisecond from /proc (None where there is none)."""
        prepare()
        out = check_output(
            [self.python, "-c", MEMORY_PROBE, *argv], env, "peak memory probe"
        ).split()
        if out[0] != "0":
            raise BenchmarkError(f"peak memory probe: {shlex.join(argv)} exited {out[0]}")
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB here
        pss = int(out[2])
        return int(out[1]) * scale / 2**20, (pss / 1024 if pss >= 0 else None)

    # timing

    def measure(self) -> None:
        repeat = 1 if self.args.quick else self.args.repeat
        commands_of: list[list[Command]] = []
        seen: set[int] = set()  # a command two cases share runs once per repetition
        for case in self.cases:
            commands = [case.pipfix, *(cmd for _, cmd in case.alternatives)]
            commands_of.append([c for c in commands if id(c) not in seen])
            seen.update(id(c) for c in commands)
        commands_of.append(self.references)
        if not self.args.quick:
            self.log("warm-up run of every command")
            for commands in commands_of:
                for command in commands:
                    command.run(record=False)
        for rep in range(repeat):
            self.log(f"repetition {rep + 1}/{repeat}")
            for commands in commands_of:
                for command in commands if rep % 2 == 0 else reversed(commands):
                    command.run()

    # report

    def table(self) -> str:
        header = (
            "| case | pipfix | alternative | alternative's time | ratio (wall) | ratio (CPU) "
            "| target |\n|---|---:|---|---:|---:|---:|---|"
        )
        rows = []
        for case in self.cases:
            mine = case.pipfix
            if not case.alternatives:
                verdict = ""
                if case.id in TARGETS:
                    _kind, limit, text = TARGETS[case.id]
                    verdict = f"{text}: {'met' if mine.wall <= limit else 'not met'}"
                    if case.id == "noop-check" and "noop_imports_libcst" in self.extra:
                        imported = self.extra["noop_imports_libcst"]
                        verdict += f"; libcst {'imported' if imported else 'not imported'}"
                rows.append(f"| {case.title} | {mine.wall:.3f} s | — | — | — | — | {verdict} |")
                continue
            for index, (target_id, alt) in enumerate(case.alternatives):
                ratio, cpu_ratio = mine.wall / alt.wall, mine.cpu / alt.cpu
                interval = self.interval(mine, alt)
                verdict = ""
                if target_id in TARGETS:
                    _kind, limit, text = TARGETS[target_id]
                    verdict = f"{text}{TIMES}: {'met' if ratio <= limit else 'not met'}"
                    if interval is not None and interval[0] <= limit <= interval[1]:
                        verdict += " (the target is within the interval)"
                title = case.title if index == 0 else ""
                mine_text = f"{mine.wall:.3f} s" if index == 0 else ""
                rows.append(
                    f"| {title} | {mine_text} | {alt.label} | {alt.wall:.3f} s "
                    f"| {ratio_text(ratio, interval)} | {cpu_ratio:.2f}{TIMES} | {verdict} |"
                )
        return "\n".join([header, *rows])

    def summary(self) -> str:
        repeat = 1 if self.args.quick else self.args.repeat
        cpus = os.cpu_count() or 1
        lines = [
            f"pipfix benchmark: CPython {platform.python_version()} on {platform.system()} "
            f"{platform.machine()}, {cpus} CPUs; {repeat} repetition(s), alternating; "
            "medians; a wall ratio is median over median, with its 95% bootstrap interval "
            f"from {MIN_REPEATS_FOR_INTERVAL} repetitions on",
            f"pipfix runs as: {self.entry_label()}",
            "",
            self.table(),
            "",
        ]
        rss = self.extra.get("peak_rss_mib")
        if rss is not None:
            lines.append(
                f"Peak memory, patch-wheel of {ONE_WHEEL} in a fresh process: "
                f"{self.memory('')}; all wheels in one call: {self.memory('_all')}."
            )
        lines += self.reference_lines()
        lines += [f"Note: {note}" for note in self.notes]
        return "\n".join(lines)

    def interval(self, mine: Command, other: Command) -> tuple[float, float] | None:
        """``ratio_interval(mine, other)``, resampled once per pair of commands."""
        key = (id(mine), id(other))
        if key not in self._intervals:
            self._intervals[key] = ratio_interval(mine, other)
        return self._intervals[key]

    def entry_label(self) -> str:
        if self.entry[0] == "-m":
            return "python -m pipfix"
        return "its console script (pipfix)"

    def memory(self, key: str) -> str:
        """Peak memory as the summary gives it; the target applies to one wheel ("")."""
        rss = self.extra[f"peak_rss{key}_mib"]
        pss = self.extra[f"peak_pss_tree{key}_mib"]
        measured = pss if pss is not None else rss
        target = ""
        if not key:
            met = "met" if measured < RSS_LIMIT_MIB else "not met"
            target = f", target < {RSS_LIMIT_MIB} MiB: {met}"
        if pss is None:
            return f"largest process {rss:.1f} MiB RSS{target}"
        return (
            f"{pss:.1f} MiB PSS over its process tree (sampled every ms{target}), "
            f"largest process {rss:.1f} MiB RSS"
        )

    def reference_lines(self) -> list[str]:
        """The floor of the one-wheel case, as a share of its alternatives."""
        if not all(command.walls for command in self.references):
            return []
        start, *floors = self.references

        def shares(floor: Command) -> str:
            of = "; ".join(
                f"{floor.wall / alt.wall:.2f}{TIMES} {alt.label.split(':')[0]}"
                for _, alt in self.cases[0].alternatives
            )
            return f" ({of})" if of else ""

        lines = [
            f"Reference, same repetitions: {start.label} {start.wall:.3f} s; "
            + "; ".join(f"{f.label} {f.wall:.3f} s{shares(f)}" for f in floors)
            + ".",
        ]
        # What pipfix adds to importing libcst, and to the codemods' floor, moves less
        # with the machine's phase than the ratios do: each repetition's difference,
        # then their median.
        one = self.cases[0].pipfix if self.cases else None
        for floor in self.compared:
            if one is not None and len(one.walls) == len(floor.walls):
                added = statistics.median(a - b for a, b in zip(one.walls, floor.walls))
                lines.append(
                    f"{self.cases[0].title}: pipfix took {floor.label} plus "
                    f"{added * 1000:.0f} ms (median of the differences per repetition)."
                )
        if self.cases and self.floor is not None:
            lines.extend(self._headroom(self.floor))
        return lines

    def _headroom(self, floor: Command) -> list[str]:
        """What each one-wheel target leaves beyond the codemods' floor in this run: the
        time any tool that runs these codemods has to read, verify and write the wheel
        (negative: in this run's phase no such tool meets the target)."""
        lines = []
        for target_id, alternative in self.cases[0].alternatives:
            if target_id not in TARGETS or not alternative.walls or not floor.walls:
                continue
            _kind, limit, text = TARGETS[target_id]
            allowed = limit * alternative.wall
            left = (allowed - floor.wall) * 1000
            verdict = (
                f"{left:.0f} ms more than the codemods' floor ({floor.wall:.3f} s) takes"
                if left >= 0
                else f"{-left:.0f} ms less than the codemods' floor ({floor.wall:.3f} s) "
                "takes: no tool that runs these codemods meets it in this run"
            )
            lines.append(
                f"{self.cases[0].title}: the target {text}{TIMES} "
                f"{alternative.label.split(':')[0]} allows {allowed:.3f} s, {verdict}."
            )
        return lines

    def results(self) -> dict[str, Any]:
        def command(cmd: Command) -> dict[str, Any]:
            return {"label": cmd.label, "argv": cmd.argv, "wall": cmd.walls, "cpu": cmd.cpus,
                    "median_wall": cmd.wall, "median_cpu": cmd.cpu}

        return {
            "python": platform.python_version(),
            "platform": f"{platform.system()} {platform.machine()}",
            "cpus": os.cpu_count(),
            "cases": [
                {"id": c.id, "title": c.title, "pipfix": command(c.pipfix),
                 "alternatives": [
                     dict(command(a), target=t, ratio_wall_interval=self.interval(c.pipfix, a))
                     for t, a in c.alternatives
                 ]}
                for c in self.cases
            ],
            "references": [command(c) for c in self.references],
            **self.extra,
            "notes": self.notes,
        }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time pipfix against the shell hack, wheel unpack/pack and pip "
        "--force-reinstall on the pinned wheels; print the ratio table."
    )
    parser.add_argument("--repeat", type=int, default=5, metavar="N",
                        help="repetitions per command (medians; default 5)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: one repetition, no warm-up, {QUICK_WHEELS} wheels "
                        "in the all-wheels case")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write raw timings here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--silent-progress", action="store_true",
                        help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("benchmarks/run.py: Linux only (bash, zip, ensurepip prefixes)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="pipfix-bench-"))
    try:
        bench = Benchmark(args, work)
        bench.setup()
        bench.measure()
        print(bench.summary())
        if args.json:
            args.json.write_text(json.dumps(bench.results(), indent=2) + "\n", encoding="utf-8")
        return 0
    except BenchmarkError as exc:
        print(f"benchmarks/run.py: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""benchmarks/run.py --quick runs end to end and prints its ratio table.

The numbers are not judged here (benchmarks are not pass/fail); only that every
case ran, against the alternatives this machine has, and that the table is there.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import sysconfig
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from conftest import ROOT, clean_env, run


def test_quick_benchmark_prints_the_ratio_table(tmp_path: Path) -> None:
    raw = tmp_path / "results.json"
    started = time.monotonic()
    result = run(
        [sys.executable, ROOT / "benchmarks" / "run.py", "--quick", "--silent-progress",
         "--json", raw],
        env=clean_env(XDG_CACHE_HOME=str(tmp_path / "xdg")),
        timeout=300,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    header = (
        "| case | pipfix | alternative | alternative's time | ratio (wall) | ratio (CPU) "
        "| target |"
    )
    assert header in lines
    table = lines[lines.index(header) + 2 :]
    rows = table[: table.index("")] if "" in table else table
    assert any(row.startswith("| one wheel") for row in rows), result.stdout
    assert any(" pinned pip/setuptools wheels, one pipfix call" in row for row in rows)
    assert all(row.count("|") == 8 for row in rows)
    assert "Peak memory, patch-wheel of" in result.stdout
    # pipfix is timed as users run it: its console script, where it is installed.
    installed = (Path(sysconfig.get_path("scripts")) / "pipfix").is_file()
    entry = "its console script (pipfix)" if installed else "python -m pipfix"
    assert f"pipfix runs as: {entry}" in lines
    assert "pipfix took interpreter start + import libcst plus " in result.stdout
    assert "pipfix took interpreter start + import libcst + pipfix's codemods on the 2 " in (
        result.stdout
    )
    if any("shell hack" in row for row in rows):  # unzip and zip are there
        assert "the target \u2264 0.80\u00d7 shell hack allows " in result.stdout
        assert " than the codemods' floor (" in result.stdout

    results = json.loads(raw.read_text())
    assert results["peak_rss_mib"] > 0
    if sys.platform.startswith("linux"):  # the process tree is sampled from /proc
        assert results["peak_pss_tree_mib"] > 0 and results["peak_pss_tree_all_mib"] > 0
    ids = [case["id"] for case in results["cases"]]
    assert ids[0] == "one" and "all" in ids
    for case in results["cases"]:
        for command in (case["pipfix"], *case["alternatives"]):
            assert len(command["wall"]) == 1 and command["median_wall"] > 0
    if "apply" in ids:  # needs ensurepip in this interpreter
        assert {"noop-check", "noop-apply"} <= set(ids)
        assert results["noop_imports_libcst"] is False
    assert not (tmp_path / "xdg").exists()  # the benchmark keeps its cache to itself
    print(f"benchmarks/run.py --quick took {elapsed:.1f} s")  # shown with -s; target < 60 s


def _benchmark_module() -> ModuleType:
    script = ROOT / "benchmarks" / "run.py"
    spec = importlib.util.spec_from_file_location("pipfix_benchmark", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_ratio_interval_is_a_deterministic_bootstrap_of_the_ratio_of_medians() -> None:
    bench = _benchmark_module()

    def timed(*walls: float) -> Any:
        command = bench.Command("x", [], {})
        command.walls = list(walls)
        return command

    assert bench.ratio_interval(timed(1, 2, 3, 4), timed(2, 4, 6, 8)) is None  # too few
    steady = bench.ratio_interval(timed(*[3.0] * 7), timed(*[4.0] * 7))
    assert steady == (0.75, 0.75)
    mine = timed(0.27, 0.30, 0.25, 0.33, 0.26, 0.29, 0.24, 0.31, 0.28)
    other = timed(0.31, 0.42, 0.30, 0.36, 0.33, 0.40, 0.29, 0.45, 0.35)
    low, high = bench.ratio_interval(mine, other)
    assert low < mine.wall / other.wall < high
    assert (low, high) == bench.ratio_interval(mine, other)  # fixed seed
    # Each command resampled on its own when they ran a different number of times.
    assert bench.ratio_interval(mine, timed(*other.walls[:-1])) is not None
    assert bench.ratio_text(0.5, (0.4, 0.6)) == f"0.50{bench.TIMES} (0.40-0.60)"

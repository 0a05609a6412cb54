"""A cgroup's CPU quota caps the CPUs pipfix counts (``cpu_quota``, ``forking``):
read from a copy of the /proc and cgroup files of each layout (v1, v2, a
container's mount of its own cgroup), and from a real cgroup with a quota of
one CPU, where a run forks neither workers nor a transform helper."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipfix import cpu_quota

from conftest import IN_CI, SRC, clean_env


def _layout(
    tmp_path: Path, membership: str, mounts: list[tuple[str, str, str]], files: dict[str, str]
) -> str:
    """A /proc/self with ``membership`` as its cgroup file and ``mounts`` (root
    within the hierarchy, mount point under ``tmp_path``, type and options) in
    its mountinfo, and the cgroup ``files`` (path under ``tmp_path``: content)."""
    proc = tmp_path / "proc-self"
    proc.mkdir()
    (proc / "cgroup").write_text(membership)
    lines = [
        f"{30 + index} 1 0:{40 + index} {root} {tmp_path / point} rw,relatime - {kind}"
        for index, (root, point, kind) in enumerate(mounts)
    ]
    (proc / "mountinfo").write_text("\n".join(lines) + "\n")
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    return str(proc)


V2 = ("/", "cg", "cgroup2 cgroup2 rw")
V1_CPU = ("/", "cpu,cpuacct", "cgroup cgroup rw,cpu,cpuacct")


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cg/cpu.max": "max 100000\n", "cg/ci/job/cpu.max": "max 100000\n"}, None),
        ({"cg/cpu.max": "max 100000\n", "cg/ci/cpu.max": "200000 100000\n",
          "cg/ci/job/cpu.max": "max 100000\n"}, 2),  # an ancestor's quota holds
        ({"cg/ci/cpu.max": "400000 100000\n", "cg/ci/job/cpu.max": "150000 100000\n"}, 2),
        ({"cg/ci/job/cpu.max": "50000 100000\n"}, 1),  # half a CPU is still one
        ({"cg/ci/job/cpu.max": "garbage\n"}, None),
    ],
)
def test_cgroup_v2_the_lowest_quota_on_the_way_up(
    tmp_path: Path, files: dict[str, str], expected: int | None
) -> None:
    proc = _layout(tmp_path, "0::/ci/job\n", [V2], files)
    assert cpu_quota.cpu_quota(proc) == expected


def test_cgroup_v1_quota_over_period(tmp_path: Path) -> None:
    files = {
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        "cpu,cpuacct/ci/cpu.cfs_quota_us": "300000\n",
        "cpu,cpuacct/ci/cpu.cfs_period_us": "100000\n",
    }
    membership = "5:memory:/ci\n3:cpu,cpuacct:/ci\n1:name=systemd:/ci\n0::/ci\n"
    proc = _layout(tmp_path, membership, [V1_CPU, ("/", "unified", "cgroup2 cgroup2 rw")], files)
    assert cpu_quota.cpu_quota(proc) == 3


def test_a_container_sees_its_own_cgroup_at_the_mount_point(tmp_path: Path) -> None:
    # Without a cgroup namespace the path names the host's cgroup, which is mounted
    # (or not found) under the container's mount point: the walk starts where it exists.
    files = {"cg/cpu.max": "200000 100000\n"}
    proc = _layout(tmp_path, "0::/system.slice/docker-0123.scope\n", [V2], files)
    assert cpu_quota.cpu_quota(proc) == 2
    mounted_root = [("/system.slice/docker-0123.scope", "cg", "cgroup2 cgroup2 rw")]
    again = tmp_path / "again"
    again.mkdir()
    proc = _layout(again, "0::/system.slice/docker-0123.scope\n", mounted_root, files)
    assert cpu_quota.cpu_quota(proc) == 2


def test_no_cgroup_files_no_quota(tmp_path: Path) -> None:
    assert cpu_quota.cpu_quota(str(tmp_path / "absent")) is None
    proc = _layout(tmp_path, "0::/\n", [("/", "cg", "cgroup2 cgroup2 rw")], {})
    assert cpu_quota.cpu_quota(proc) is None


# A real cgroup ---------------------------------------------------------------


def _writable_cpu_hierarchy() -> tuple[Path, int] | None:
    """A mounted hierarchy with the cpu controller where this process may make a
    cgroup (root): (its mount point, cgroup version)."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return None
    for mount_root, point, version in cpu_quota._cpu_mounts(
        Path("/proc/self/mountinfo").read_text().splitlines()
    ):
        path = Path(point)
        if mount_root != "/" or not os.access(path, os.W_OK):
            continue
        if version == 1:
            return path, 1
        with contextlib.suppress(OSError):
            if "cpu" in (path / "cgroup.subtree_control").read_text().split():
                return path, 2
    return None


@pytest.fixture
def one_cpu_cgroup() -> Iterator[Path]:
    """A fresh cgroup whose quota is one CPU; removed afterwards."""
    found = _writable_cpu_hierarchy()
    if found is None:
        if IN_CI:
            pytest.fail("CI needs a writable cgroup cpu controller (root) for this test")
        pytest.skip("needs root and a writable cgroup cpu controller")
    hierarchy, version = found
    group = hierarchy / f"pipfix-test-{os.getpid()}"
    group.mkdir()
    try:
        if version == 2:
            (group / "cpu.max").write_text("100000 100000")
        else:
            (group / "cpu.cfs_period_us").write_text("100000")
            (group / "cpu.cfs_quota_us").write_text("100000")
        yield group
    finally:
        for _ in range(50):  # the child has left when it has exited
            with contextlib.suppress(OSError):
                group.rmdir()
                break
            time.sleep(0.1)


def test_a_run_in_a_one_cpu_cgroup_forks_nothing(one_cpu_cgroup: Path) -> None:
    script = (
        "import os, sys\n"
        "open(sys.argv[1], 'w').write(str(os.getpid()))\n"  # joins the cgroup
        "from pipfix import forking, transform_helper\n"
        "print(len(os.sched_getaffinity(0)), forking.usable_cpus(),"
        " forking.planned_workers(24, None), transform_helper.may_fork())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(one_cpu_cgroup / "cgroup.procs")],
        env=clean_env(PYTHONPATH=str(SRC)), capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    affinity, usable, workers, may_fork = result.stdout.split()
    assert (usable, workers, may_fork) == ("1", "1", "False"), affinity

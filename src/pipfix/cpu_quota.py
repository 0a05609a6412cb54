"""The CPU time a Linux cgroup lets this process use: its CPU quota.

A container or a CI job may run on a host of 64 CPUs with a quota of 2: the
affinity mask shows 64, and a run that forked a worker per CPU would pay for
64 processes' memory and get 2 CPUs' time.  The quota is the smallest that the
process's cgroup and its ancestors set: ``cpu.max`` in cgroup v2,
``cpu.cfs_quota_us`` over ``cpu.cfs_period_us`` in v1, read under the mount of
the hierarchy that has the cpu controller (inside a container, that mount is
often the container's own cgroup: the walk up from the process's path starts
wherever that path exists under it).  Read in a fraction of a millisecond,
importing nothing: the command line asks before it forks anything.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator

PROC_SELF = "/proc/self"


@functools.cache
def cpu_quota(proc_self: str = PROC_SELF) -> int | None:
    """Whole CPUs the quota allows (rounded up, at least 1); None where no quota
    is set or none can be read.  Read once per process: a run asks up to three
    times (the command line, the transform server, the worker pool)."""
    lowest: float | None = None
    for directory, version in _cpu_cgroup_directories(proc_self):
        share = _share(directory, version)
        if share is not None and (lowest is None or share < lowest):
            lowest = share
    return None if lowest is None else max(1, -int(-lowest // 1))  # rounded up


def _cpu_cgroup_directories(proc_self: str) -> Iterator[tuple[str, int]]:
    """The directories of this process's cgroup and its ancestors, in each
    hierarchy with the cpu controller (cgroup version 1 or 2)."""
    try:
        cgroups = _read(proc_self, "cgroup").splitlines()
        mountinfo = _read(proc_self, "mountinfo").splitlines()
    except OSError:
        return
    for mount_root, mount_point, version in _cpu_mounts(mountinfo):
        for line in cgroups:
            hierarchy, _, rest = line.partition(":")
            controllers, _, path = rest.partition(":")
            if version == 2 and hierarchy == "0" and not controllers:
                yield from _up_from(mount_point, mount_root, path, 2)
            elif version == 1 and "cpu" in controllers.split(","):
                yield from _up_from(mount_point, mount_root, path, 1)


def _cpu_mounts(mountinfo: list[str]) -> Iterator[tuple[str, str, int]]:
    """(root within the hierarchy, mount point, version) of each cgroup mount
    that can hold a CPU quota."""
    for line in mountinfo:
        before, separator, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if not separator or len(fields) < 5 or len(tail) < 3:
            continue
        root, mount_point = _unescape(fields[3]), _unescape(fields[4])
        if tail[0] == "cgroup2":
            yield root, mount_point, 2
        elif tail[0] == "cgroup" and "cpu" in tail[2].split(","):
            yield root, mount_point, 1


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for escaped, plain in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escaped, plain)
    return field


def _up_from(
    mount_point: str, mount_root: str, path: str, version: int
) -> Iterator[tuple[str, int]]:
    """The cgroup's directory under ``mount_point`` and each parent up to the mount
    point itself (a path outside the mount's root, or not under it here, is
    walked from where it exists)."""
    relative = path
    if mount_root != "/" and (path == mount_root or path.startswith(mount_root + "/")):
        relative = path[len(mount_root):]
    parts = [part for part in relative.split("/") if part]
    while parts and not os.path.isdir(os.path.join(mount_point, *parts)):
        parts.pop()
    while True:
        yield os.path.join(mount_point, *parts), version
        if not parts:
            return
        parts.pop()


def _share(directory: str, version: int) -> float | None:
    """The CPUs one cgroup's own quota allows, None if it sets none."""
    try:
        if version == 2:
            quota, period = _read(directory, "cpu.max").split()
        else:
            quota = _read(directory, "cpu.cfs_quota_us")
            period = _read(directory, "cpu.cfs_period_us")
        if quota == "max" or int(quota) <= 0 or int(period) <= 0:
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _read(directory: str, name: str) -> str:
    """A small file's text, as the file system encodes names (no codec to look up)."""
    with open(os.path.join(directory, name), "rb") as file:
        return os.fsdecode(file.read()).strip()

"""
How many worker processes C{workers: auto} means: the CPUs this process may
run on (its affinity mask), capped by the cgroup v2 CPU quota
(C{cpu.max}), at least one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

__all__ = ["availableCPUs", "cgroupQuota", "resolveWorkers"]


def cgroupQuota(readFile: Callable[[str], str] | None = None) -> float | None:
    """
    The CPU quota of this process's cgroup v2, in CPUs.

    @param readFile: reads a file's text (tests give a fake one); raises
        L{OSError} for a missing file.
    @return: C{quota / period} from the C{cpu.max} of the process's cgroup
        (C{"200000 100000"} is 2.0), or L{None} without a quota
        (C{"max 100000"}), without cgroup v2, or when unreadable.
    """
    read = readFile or _read
    try:
        group = _cgroupPath(read("/proc/self/cgroup"))
        if group is None:
            return None
        text = read(os.path.join("/sys/fs/cgroup", group.lstrip("/"), "cpu.max"))
    except OSError:
        return None
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def _cgroupPath(text: str) -> str | None:
    # cgroup v2 is the line "0::/path".
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def availableCPUs(
    affinity: Callable[[], set[int]] | None = None,
    quota: Callable[[], float | None] | None = None,
) -> int:
    """
    The CPUs this process can use: those of its affinity mask, fewer when
    the cgroup quota allows less (a quota of 1.5 CPUs gives 2: the half
    still needs a process to use it), at least 1.

    @param affinity: returns the CPUs of the mask (tests give a fake);
        C{os.sched_getaffinity(0)} when L{None}.
    @param quota: returns the cgroup quota in CPUs or L{None}; L{cgroupQuota}
        when L{None}.
    """
    if affinity is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    else:
        cpus = len(affinity())
    limit = (quota or cgroupQuota)()
    if limit is not None:
        cpus = min(cpus or 1, math.ceil(limit))
    return max(1, cpus or 1)


def resolveWorkers(value: int | str, cpus: Callable[[], int] = availableCPUs) -> int:
    """
    The number of worker processes a C{workers} value asks for.

    @param value: a number, or C{"auto"}.
    @param cpus: how many CPUs C{"auto"} means.
    """
    if value == "auto":
        return cpus()
    return int(value)

"""How many CPUs this process may really use.

os.cpu_count() reports the node's cores; a container limited to 2 CPUs on a
64-core node would otherwise start 64 builds. The answer is the smallest of the
affinity mask and the cgroup CPU quota (v2 ``cpu.max``, v1 ``cfs_quota_us``).
"""

from __future__ import annotations

import math
import os
from functools import cache
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup quota, or None when there is no quota."""
    v2 = _read(root / "cpu.max")
    if v2:
        quota, _, period = v2.partition(" ")
        if quota != "max" and period:
            return int(quota) / int(period)
        return None
    quota_v1 = _read(root / "cpu" / "cpu.cfs_quota_us") or _read(root / "cpu.cfs_quota_us")
    period_v1 = _read(root / "cpu" / "cpu.cfs_period_us") or _read(root / "cpu.cfs_period_us")
    if quota_v1 and period_v1 and int(quota_v1) > 0:
        return int(quota_v1) / int(period_v1)
    return None


def cpus_from(affinity: int, quota: float | None) -> int:
    if quota is None:
        return max(1, affinity)
    # Rounded down: a fractional remainder is left to the server itself.
    return max(1, min(affinity, math.floor(quota)))


@cache
def available_cpus() -> int:
    return cpus_from(len(os.sched_getaffinity(0)), cgroup_cpu_limit())

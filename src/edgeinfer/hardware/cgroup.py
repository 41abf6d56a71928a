"""The process's cgroup limits (v2 unified, or v1) under an injectable root.

The cgroup is found from `<root>/proc/self/cgroup`; when that directory exists under
`<root>/sys/fs/cgroup` it is used, else the mount's top (inside a container with its own cgroup
namespace the top *is* the container's cgroup). Limits are the tightest along the path up to the
top, because a parent's limit binds its children.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from edgeinfer.hardware._read import (
    parse_cpu_list,
    read_int,
    read_keyed,
    read_text,
    to_int,
    under,
)

Root = str | os.PathLike[str]

# cgroup v1 writes "no limit" as LONG_MAX rounded down to a page (9223372036854771712).
_V1_UNLIMITED = 1 << 60
_N = TypeVar("_N", int, float)


@dataclass(frozen=True)
class Cgroup:
    version: int | None = None  # 2, 1, or None when no cgroup files are visible
    path: str = ""  # the process's cgroup as /proc/self/cgroup names it
    memory_limit_bytes: int | None = None  # None: no limit
    memory_usage_bytes: int | None = None  # memory.current / memory.usage_in_bytes
    # usage minus inactive file cache: what the OOM killer will not reclaim first (the
    # "working set" kubelet and `docker stats` report). Page cache of mmapped models is in usage.
    memory_working_set_bytes: int | None = None
    oom_events: int | None = None  # times the limit was hit and the OOM path ran (v2)
    oom_kills: int | None = None  # processes killed by the OOM killer in this cgroup
    cpu_quota: float | None = None  # CPUs' worth of time per period; None: no quota
    cpuset: tuple[int, ...] | None = None  # CPUs the cgroup may run on; None: unknown


def _self_paths(root: Root) -> tuple[str | None, dict[str, str]]:
    """(v2 path, {v1 controller: path}) from /proc/self/cgroup."""
    v2: str | None = None
    v1: dict[str, str] = {}
    for line in (read_text(under(root, "/proc/self/cgroup")) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        hier, controllers, path = parts
        if hier == "0" and controllers == "":
            v2 = path
        for c in controllers.split(","):
            if c:
                v1[c] = path
    return v2, v1


def _chain(top: Path, path: str | None) -> list[Path]:
    """[leaf, ..., top]: the process's cgroup directory and its ancestors inside the mount."""
    rel = [p for p in (path or "").split("/") if p and p not in (".", "..")]
    if rel and not top.joinpath(*rel).is_dir():
        rel = []  # the path is outside this mount (a container without cgroupns): use the top
    dirs = [top.joinpath(*rel[:n]) for n in range(len(rel), 0, -1)]
    return [*dirs, top]


def _min(values: list[_N | None]) -> _N | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


def _v2_quota(path: Path) -> float | None:
    parts = (read_text(path / "cpu.max") or "").split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    quota, period = to_int(parts[0]), to_int(parts[1])
    if not quota or not period or quota <= 0 or period <= 0:
        return None
    return quota / period


def _v2_limit(path: Path) -> int | None:
    value = read_int(path / "memory.max")  # "max" -> None
    return value if value is not None and value > 0 else None


def _working_set(usage: int | None, stat: dict[str, str], key: str) -> int | None:
    if usage is None:
        return None
    inactive = to_int(stat.get(key))
    return usage if inactive is None else max(0, usage - inactive)


def _read_v2(top: Path, path: str | None) -> Cgroup:
    chain = _chain(top, path)
    leaf = chain[0]
    events = read_keyed(leaf / "memory.events")
    usage = read_int(leaf / "memory.current")
    return Cgroup(
        version=2,
        path=path or "/",
        memory_limit_bytes=_min([_v2_limit(d) for d in chain]),
        memory_usage_bytes=usage,
        memory_working_set_bytes=_working_set(
            usage, read_keyed(leaf / "memory.stat"), "inactive_file"
        ),
        oom_events=to_int(events.get("oom")),
        oom_kills=to_int(events.get("oom_kill")),
        cpu_quota=_min([_v2_quota(d) for d in chain]),
        cpuset=parse_cpu_list(read_text(leaf / "cpuset.cpus.effective")),
    )


def _v1_dir(base: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (base / name).is_dir():
            return base / name
    return None


def _v1_limit(path: Path) -> int | None:
    value = read_int(path / "memory.limit_in_bytes")
    return value if value is not None and 0 < value < _V1_UNLIMITED else None


def _v1_quota(path: Path) -> float | None:
    quota, period = read_int(path / "cpu.cfs_quota_us"), read_int(path / "cpu.cfs_period_us")
    if quota is None or period is None or quota <= 0 or period <= 0:
        return None  # quota -1: unlimited
    return quota / period


def _read_v1(base: Path, paths: dict[str, str]) -> Cgroup:
    memory = cpu = cpuset = None
    usage = working = oom_kills = None
    limits: list[int | None] = []
    quotas: list[float | None] = []
    if (top := _v1_dir(base, ("memory",))) is not None:
        chain = _chain(top, paths.get("memory"))
        memory = chain[0]
        stat = read_keyed(memory / "memory.stat")
        hierarchical = to_int(stat.get("hierarchical_memory_limit"))
        limits = [_v1_limit(d) for d in chain]
        if hierarchical is not None and 0 < hierarchical < _V1_UNLIMITED:
            limits.append(hierarchical)
        usage = read_int(memory / "memory.usage_in_bytes")
        working = _working_set(usage, stat, "total_inactive_file")
        oom_kills = to_int(read_keyed(memory / "memory.oom_control").get("oom_kill"))
    if (top := _v1_dir(base, ("cpu", "cpu,cpuacct", "cpuacct,cpu"))) is not None:
        chain = _chain(top, paths.get("cpu"))
        cpu = chain[0]
        quotas = [_v1_quota(d) for d in chain]
    if (top := _v1_dir(base, ("cpuset",))) is not None:
        leaf = _chain(top, paths.get("cpuset"))[0]
        cpuset = parse_cpu_list(
            read_text(leaf / "cpuset.effective_cpus") or read_text(leaf / "cpuset.cpus")
        )
    if memory is None and cpu is None and cpuset is None:
        return Cgroup()
    return Cgroup(
        version=1,
        path=paths.get("memory") or paths.get("cpu") or "/",
        memory_limit_bytes=_min(limits),
        memory_usage_bytes=usage,
        memory_working_set_bytes=working,
        oom_kills=oom_kills,
        cpu_quota=_min(quotas),
        cpuset=cpuset,
    )


_V2_MARKERS = ("cgroup.controllers", "memory.max", "cpu.max", "memory.current")


def read_cgroup(root: Root = "/") -> Cgroup:
    base = under(root, "/sys/fs/cgroup")
    v2_path, v1_paths = _self_paths(root)
    # Hybrid hosts mount v2 at /sys/fs/cgroup/unified with no controllers: that is v1 for limits.
    leaf = _chain(base, v2_path)[0]
    if any((base / m).exists() or (leaf / m).exists() for m in _V2_MARKERS):
        return _read_v2(base, v2_path)
    return _read_v1(base, v1_paths)


def quota_cpus(cgroup: Cgroup) -> int | None:
    """The CPU quota as whole CPUs, rounded up (1.5 CPUs of time keeps 2 threads busy)."""
    if cgroup.cpu_quota is None:
        return None
    return max(1, math.ceil(cgroup.cpu_quota - 1e-9))

"""What the governor and the thread defaults need, composed from the sysfs/procfs/cgroup readers."""

from __future__ import annotations

import os
from dataclasses import dataclass

from edgeinfer.hardware.cgroup import Cgroup, quota_cpus, read_cgroup
from edgeinfer.hardware.procfs import MemInfo, read_cpuinfo, read_meminfo
from edgeinfer.hardware.sysfs import Topology, read_cpufreq, read_thermal, read_topology

Root = str | os.PathLike[str]


@dataclass(frozen=True)
class Readings:
    """One reading of the dynamic state; None is "unknown" (no sensor, hidden by a container)."""

    temp_c: float | None = None
    freq_cur_hz: float | None = None  # mean of the online CPUs' current frequency
    freq_max_hz: float | None = None  # the fastest CPU's hardware maximum
    # Memory as the tightest limit sees it: the cgroup's working set and limit when a cgroup
    # limit is set (capped at MemTotal), else MemTotal - MemAvailable and MemTotal.
    memory_used_bytes: int | None = None
    memory_limit_bytes: int | None = None
    memory_available_bytes: int | None = None  # MemAvailable of the whole machine
    cgroup_memory_limit_bytes: int | None = None
    throttled: bool | None = None  # firmware says the clock is capped now (Raspberry Pi)


def memory_view(cgroup: Cgroup, mem: MemInfo) -> tuple[int | None, int | None]:
    """(used, limit) bytes under the tightest memory limit."""
    limit = cgroup.memory_limit_bytes
    if limit is not None:
        if mem.total_bytes is not None:
            limit = min(limit, mem.total_bytes)
        used = cgroup.memory_working_set_bytes
        return (cgroup.memory_usage_bytes if used is None else used), limit
    if mem.total_bytes is None or mem.available_bytes is None:
        return None, mem.total_bytes
    return max(0, mem.total_bytes - mem.available_bytes), mem.total_bytes


def read_readings(root: Root = "/") -> Readings:
    """Reads a few dozen small files (more on many-core hosts): ~1 ms; the governor caches it."""
    freq = read_cpufreq(root)
    cgroup = read_cgroup(root)
    mem = read_meminfo(root)
    used, limit = memory_view(cgroup, mem)
    return Readings(
        temp_c=read_thermal(root).cpu_temp_c,
        freq_cur_hz=freq.cur_hz_mean,
        freq_max_hz=freq.max_hz,
        memory_used_bytes=used,
        memory_limit_bytes=limit,
        memory_available_bytes=mem.available_bytes,
        cgroup_memory_limit_bytes=cgroup.memory_limit_bytes,
        throttled=freq.throttled_now,
    )


# ---- CPUs the process may use ---------------------------------------------------------------
@dataclass(frozen=True)
class CpuAllowance:
    """How many CPUs this process may keep busy, and why."""

    online: int | None  # online CPUs in the tree (sysfs; else /proc/cpuinfo's count)
    affinity: int | None  # len(os.sched_getaffinity(0)); only for the real root "/"
    quota: float | None  # cgroup CPU quota in CPUs
    cpuset: int | None  # CPUs in the cgroup's cpuset
    usable: int  # min of the above (quota rounded up), at least 1
    threads: int  # default intra-op threads for one busy model (see default_threads)


def _is_real_root(root: Root) -> bool:
    return os.path.realpath(root) == "/"


def cpu_allowance(
    root: Root = "/", topology: Topology | None = None, cgroup: Cgroup | None = None
) -> CpuAllowance:
    topology = read_topology(root) if topology is None else topology
    cgroup = read_cgroup(root) if cgroup is None else cgroup
    allowed = set(topology.online)
    affinity = None
    if _is_real_root(root) and hasattr(os, "sched_getaffinity"):
        mask = os.sched_getaffinity(0)
        affinity = len(mask)
        allowed = allowed & mask if allowed else set(mask)
    if cgroup.cpuset is not None:
        allowed = allowed & set(cgroup.cpuset) if allowed else set(cgroup.cpuset)
    online = len(topology.online) or read_cpuinfo(root).processors or None
    counts = [
        online,
        affinity,
        quota_cpus(cgroup),
        len(cgroup.cpuset) if cgroup.cpuset else None,
        len(allowed) or None,
    ]
    known = [n for n in counts if n]
    # When nothing in the tree says, trust the OS only for the real machine.
    fallback = (os.cpu_count() or 1) if _is_real_root(root) else 1
    usable = max(1, min(known)) if known else fallback
    return CpuAllowance(
        online=online,
        affinity=affinity,
        quota=cgroup.cpu_quota,
        cpuset=len(cgroup.cpuset) if cgroup.cpuset else None,
        usable=usable,
        threads=_threads(usable, topology, tuple(sorted(allowed))),
    )


def _threads(usable: int, topology: Topology, allowed: tuple[int, ...]) -> int:
    """One intra-op thread per fast physical core we may use.

    A parallel op ends when its slowest thread ends, so threads on LITTLE cores hold back the
    big ones: count only big cores. SMT siblings share one core's SIMD units, so hyperthreads add
    little to GEMM-bound work: count physical cores.
    """
    threads = usable
    if topology.heterogeneous:
        big = [c for c in topology.big if c in allowed] if allowed else list(topology.big)
        if big:
            threads = min(threads, len(big))
            allowed = tuple(big)
    physical = topology.physical_cores(allowed or None)
    if physical:
        threads = min(threads, physical)
    return max(1, threads)


def usable_cpus(root: Root = "/") -> int:
    """CPUs this process may keep busy: min(affinity, cgroup quota rounded up, cpuset, online).
    A container limited to 2 CPUs on a 64-core host answers 2."""
    return cpu_allowance(root).usable


def default_threads(root: Root = "/") -> int:
    """Intra-op threads for a model when one model is busy at a time: the usable CPUs, limited to
    big cores on big.LITTLE and to physical cores with SMT. Divide among concurrently busy
    models (instances) rather than oversubscribing."""
    return cpu_allowance(root).threads


def threads_per_instance(instances: int, root: Root = "/") -> int:
    """What `intra_op_threads = 0` means for every tensor backend: the default threads shared
    among the model's instances, which run at once (at least one each)."""
    return max(1, default_threads(root) // max(1, instances))

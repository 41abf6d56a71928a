"""Hardware awareness (layer 2): what the device is and how hot/full it is right now.

Readers take an injectable root directory (default "/") so tests use fake sysfs trees. They
never raise for missing or malformed files: unknown is None. Imports only the standard library
and `edgeinfer.errors`/`edgeinfer.config`; onnx is imported lazily by `estimate_onnx_bytes`.
"""

from edgeinfer.hardware.budget import (
    RESIDENT_FACTOR,
    BudgetExceeded,
    MemoryBudget,
    Reservation,
    default_budget_bytes,
    estimate_onnx_bytes,
)
from edgeinfer.hardware.cgroup import Cgroup, read_cgroup
from edgeinfer.hardware.device import (
    CpuAllowance,
    Readings,
    cpu_allowance,
    default_threads,
    read_readings,
    threads_per_instance,
    usable_cpus,
)
from edgeinfer.hardware.governor import (
    Governor,
    GovernorConfig,
    GovernorSnapshot,
    scaled_batch,
    scaled_concurrency,
)
from edgeinfer.hardware.procfs import CpuInfo, MemInfo, read_cpuinfo, read_meminfo
from edgeinfer.hardware.sysfs import (
    CpuFreq,
    Thermal,
    Topology,
    read_cpufreq,
    read_thermal,
    read_topology,
)

__all__ = [
    "RESIDENT_FACTOR",
    "BudgetExceeded",
    "Cgroup",
    "CpuAllowance",
    "CpuFreq",
    "CpuInfo",
    "Governor",
    "GovernorConfig",
    "GovernorSnapshot",
    "MemInfo",
    "MemoryBudget",
    "Readings",
    "Reservation",
    "Thermal",
    "Topology",
    "cpu_allowance",
    "default_budget_bytes",
    "default_threads",
    "estimate_onnx_bytes",
    "read_cgroup",
    "read_cpufreq",
    "read_cpuinfo",
    "read_meminfo",
    "read_readings",
    "read_thermal",
    "read_topology",
    "scaled_batch",
    "scaled_concurrency",
    "threads_per_instance",
    "usable_cpus",
]

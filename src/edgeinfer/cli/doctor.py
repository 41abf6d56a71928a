"""`edgeinfer doctor`: what this device is, and how to run models fast on it.

Also runs on its own: `python -m edgeinfer.cli.doctor [--json] [--root DIR]`. Importing this module
is cheap: runtimes (onnxruntime, llama_cpp) are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys
from pathlib import Path
from typing import Any

from edgeinfer import __version__
from edgeinfer.cli.doctor_advice import recommend
from edgeinfer.cli.doctor_render import render
from edgeinfer.errors import LoadError
from edgeinfer.hardware import (
    Cgroup,
    CpuAllowance,
    CpuFreq,
    CpuInfo,
    MemInfo,
    Thermal,
    Topology,
    cpu_allowance,
    default_budget_bytes,
    read_cgroup,
    read_cpufreq,
    read_cpuinfo,
    read_meminfo,
    read_thermal,
    read_topology,
)
from edgeinfer.hardware.device import Readings, memory_view


# ---- collect --------------------------------------------------------------------------------
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def runtimes() -> dict[str, Any]:
    """Installed runtimes and their versions; imports onnxruntime and llama_cpp (slow-ish)."""
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "edgeinfer": __version__,
        "numpy": _version("numpy"),
        "onnxruntime": None,
        "llama_cpp": None,
    }
    try:
        import onnxruntime as ort

        out["onnxruntime"] = {
            "version": ort.__version__,
            "providers": list(ort.get_available_providers()),
        }
    except (ImportError, OSError):
        pass
    try:
        import llama_cpp  # type: ignore[import-not-found,unused-ignore]

        from edgeinfer.runtime import llm_backends

        try:
            variant = llm_backends.load(llama_cpp)  # a portable build's CPU variants, if any
        except LoadError as e:
            variant = str(e)
        info = llama_cpp.llama_print_system_info()
        out["llama_cpp"] = {
            "version": getattr(llama_cpp, "__version__", _version("llama_cpp_python")),
            "system_info": info.decode(errors="replace").strip() if info else "",
            "cpu_variant": variant or "built in",
            "extra_buffer_types": _extra_buffer_types(),
            "attention": _attention(),
        }
    except (ImportError, OSError, AttributeError):
        pass
    out["backends"] = backends(platform.machine())
    return out


# Which CPUs each backend's wheels and kernels are built for (runtime.BACKENDS names).
_SUITS = {
    "openvino": {
        "x86_64": "yes (Intel/AMD; bf16/INT8 kernels where the CPU has them)",
        "aarch64": "yes (ARM Compute Library; INT8 partly runs in fp16)",
    },
    "litert": {"x86_64": "yes (XNNPACK)", "aarch64": "yes (XNNPACK)"},
}


def backends(machine: str) -> list[dict[str, Any]]:
    """Every backend in the table: installed or not (and how to install it), its version,
    the files it serves and whether it suits this CPU."""
    from edgeinfer.runtime import BACKENDS

    rows = []
    for b in BACKENDS.values():
        installed = b.installed()
        rows.append(
            {
                "name": b.name,
                "installed": installed,
                "version": b.version() if installed else None,
                "files": list(b.files),
                "install": f"pip install 'edgeinfer[{b.extra}]'",
                "suits_cpu": _SUITS.get(b.name, {}).get(
                    machine, "yes" if b.name != "openvino" else f"no wheel for {machine}"
                ),
            }
        )
    return rows


def _attention() -> dict[str, Any]:
    """What a GGUF model's `[llm]` defaults run: flash attention and the KV cache type."""
    from edgeinfer.config import LlmOptions

    o = LlmOptions()
    return {"flash_attn": o.flash_attn, "kv_cache_type": o.kv_cache_type, "flash": o.flash}


def _extra_buffer_types() -> dict[str, Any]:
    """The cached verdict on llama.cpp's AMX/repacked kernels (probed now if there is none):
    what `[llm] extra_buffer_types = "auto"` uses on this machine."""
    from edgeinfer.runtime import llm_kernels
    from edgeinfer.runtime.llm_probe import verdict

    v = verdict()
    features = llm_kernels.cpu_features()
    return {
        "enabled": v.enabled,
        "reason": v.reason,
        "cache": v.path,
        "kernels": list(v.kernels),
        "disabled": list(v.disabled),
        "cpu_backend": sorted(k for k, on in features.items() if on == "1"),
    }


def collect(root: str | Path = "/", with_runtimes: bool = True) -> dict[str, Any]:
    """The whole report as one JSON-able dict."""
    topology, cgroup, cpuinfo = read_topology(root), read_cgroup(root), read_cpuinfo(root)
    freq, thermal, mem = read_cpufreq(root), read_thermal(root), read_meminfo(root)
    allowance = cpu_allowance(root, topology, cgroup)
    report: dict[str, Any] = {
        "root": str(root),
        "cpu": _cpu(root, cpuinfo, topology, allowance),
        "frequency": _frequency(freq, cpuinfo),
        "thermal": _thermal(thermal),
        "memory": _memory(cgroup, mem),
        "runtimes": runtimes() if with_runtimes else {},
    }
    report["recommendations"] = recommend(report, cpuinfo, topology, allowance.threads)
    return report


def _cpu(
    root: str | Path, cpuinfo: CpuInfo, topology: Topology, allowance: CpuAllowance
) -> dict[str, Any]:
    return {
        "model": cpuinfo.model,
        "board": cpuinfo.board,
        "arch": cpuinfo.arch or (platform.machine() if str(root) == "/" else ""),
        "emulated": cpuinfo.emulated,
        "online": allowance.online,
        "online_cpus": list(topology.online),
        "physical_cores": topology.physical_cores(),
        "heterogeneous": topology.heterogeneous,
        "big_cpus": list(topology.big),
        "little_cpus": list(topology.little),
        "capacity": {str(c.cpu): c.capacity for c in topology.cores if c.capacity},
        "affinity": allowance.affinity,
        "cgroup_cpu_quota": allowance.quota,
        "cpuset": allowance.cpuset,
        "usable_cpus": allowance.usable,
        "simd": list(cpuinfo.simd),
        "int8_dot": cpuinfo.int8_dot,
    }


def _frequency(freq: CpuFreq, cpuinfo: CpuInfo) -> dict[str, Any]:
    return {
        "cur_mhz_mean": None if freq.cur_hz_mean is None else round(freq.cur_hz_mean / 1e6),
        "max_mhz": None if freq.max_hz is None else round(freq.max_hz / 1e6),
        "cpuinfo_mhz": cpuinfo.mhz,
        "per_cpu": [{"cpu": c.cpu, "cur_khz": c.cur_khz, "max_khz": c.max_khz} for c in freq.cores],
        "throttle_count": freq.throttle_count,
        "throttle_flags": list(freq.throttle_flags),
        "throttled_now": freq.throttled_now,
    }


def _thermal(thermal: Thermal) -> dict[str, Any]:
    return {
        "cpu_temp_c": None if thermal.cpu_temp_c is None else round(thermal.cpu_temp_c, 1),
        "source": thermal.source,
        "zones": [
            {"name": z.name, "type": z.type, "temp_c": round(z.temp_c, 1)} for z in thermal.zones
        ],
    }


def _memory(cgroup: Cgroup, mem: MemInfo) -> dict[str, Any]:
    used, limit = memory_view(cgroup, mem)
    readings = Readings(
        memory_available_bytes=mem.available_bytes,
        cgroup_memory_limit_bytes=cgroup.memory_limit_bytes,
    )
    return {
        "total_bytes": mem.total_bytes,
        "available_bytes": mem.available_bytes,
        "cgroup_version": cgroup.version,
        "cgroup_path": cgroup.path,
        "cgroup_limit_bytes": cgroup.memory_limit_bytes,
        "cgroup_usage_bytes": cgroup.memory_usage_bytes,
        "cgroup_working_set_bytes": cgroup.memory_working_set_bytes,
        "oom_events": cgroup.oom_events,
        "oom_kills": cgroup.oom_kills,
        "used_bytes": used,
        "limit_bytes": limit,
        "model_budget_bytes": default_budget_bytes(readings),
    }


# ---- command --------------------------------------------------------------------------------
def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="read sysfs/procfs under this directory (a copied tree; default: /)",
    )
    p.set_defaults(func=cmd_doctor)


def add_doctor(sub: Any) -> None:
    """Register `edgeinfer doctor` on the CLI's subparsers."""
    p = sub.add_parser(
        "doctor",
        help="show what this device is and how to run models on it",
        description="Print the CPU, usable cores, clocks, temperature, memory "
        "and cgroup limits, SIMD features, installed runtimes, and "
        "recommendations for threads and quantization.",
    )
    _configure(p)


def cmd_doctor(args: argparse.Namespace) -> int:
    if not args.root.is_dir():
        print(f"edgeinfer: error: --root {args.root}: not a directory", file=sys.stderr)
        return 2
    report = collect(args.root)
    text = json.dumps(report, indent=2) if args.json else render(report)
    try:
        print(text)
    except UnicodeEncodeError:  # a non-UTF-8 terminal: "°C" -> "?C"
        print(text.encode("ascii", "replace").decode("ascii"))
    return 0

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
import textwrap
from pathlib import Path
from typing import Any

from edgeinfer import __version__
from edgeinfer.hardware import (
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
from edgeinfer.hardware.governor import GovernorConfig
from edgeinfer.hardware.procfs import CpuInfo
from edgeinfer.hardware.sysfs import Topology

_KEY = 16  # width of the key column


# ---- collect --------------------------------------------------------------------------------
def _cpu_list(cpus: tuple[int, ...] | list[int]) -> str:
    """(0, 1, 2, 3, 6) -> "0-3,6"."""
    out: list[str] = []
    run: list[int] = []
    for cpu in sorted(cpus):
        if run and cpu != run[-1] + 1:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(cpu)
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


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

        info = llama_cpp.llama_print_system_info()
        out["llama_cpp"] = {
            "version": getattr(llama_cpp, "__version__", _version("llama_cpp_python")),
            "system_info": info.decode(errors="replace").strip() if info else "",
            "extra_buffer_types": _extra_buffer_types(),
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


def _kernels_line(bufts: dict[str, Any]) -> str:
    """llama.cpp's extra buffer types in use, the ones turned off and why; the build's ISA."""
    isa = f"; CPU backend built for {' '.join(bufts.get('cpu_backend') or ['?'])}"
    if not bufts["enabled"]:
        return f"no extra buffer types: {bufts['reason']}{isa}"
    kernels = ", ".join(bufts.get("kernels") or []) or "extra buffer types"
    off = bufts.get("disabled") or []
    why = f" ({', '.join(off)} off: {bufts['reason']})" if off else " (probed: they ran here)"
    return f"{kernels}{why}{isa}"


def collect(root: str | Path = "/", with_runtimes: bool = True) -> dict[str, Any]:
    """The whole report as one JSON-able dict."""
    topology, cgroup, cpuinfo = read_topology(root), read_cgroup(root), read_cpuinfo(root)
    freq, thermal, mem = read_cpufreq(root), read_thermal(root), read_meminfo(root)
    allowance = cpu_allowance(root, topology, cgroup)
    used, limit = memory_view(cgroup, mem)
    readings = Readings(
        memory_available_bytes=mem.available_bytes,
        cgroup_memory_limit_bytes=cgroup.memory_limit_bytes,
    )
    report: dict[str, Any] = {
        "root": str(root),
        "cpu": {
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
        },
        "frequency": {
            "cur_mhz_mean": None if freq.cur_hz_mean is None else round(freq.cur_hz_mean / 1e6),
            "max_mhz": None if freq.max_hz is None else round(freq.max_hz / 1e6),
            "cpuinfo_mhz": cpuinfo.mhz,
            "per_cpu": [
                {"cpu": c.cpu, "cur_khz": c.cur_khz, "max_khz": c.max_khz} for c in freq.cores
            ],
            "throttle_count": freq.throttle_count,
            "throttle_flags": list(freq.throttle_flags),
            "throttled_now": freq.throttled_now,
        },
        "thermal": {
            "cpu_temp_c": None if thermal.cpu_temp_c is None else round(thermal.cpu_temp_c, 1),
            "source": thermal.source,
            "zones": [
                {"name": z.name, "type": z.type, "temp_c": round(z.temp_c, 1)}
                for z in thermal.zones
            ],
        },
        "memory": {
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
        },
        "runtimes": runtimes() if with_runtimes else {},
    }
    report["recommendations"] = recommend(report, cpuinfo, topology, allowance.threads)
    return report


# ---- recommend ------------------------------------------------------------------------------
def _quantization(cpu: CpuInfo) -> list[str]:
    simd = set(cpu.simd)
    notes: list[str] = []
    if cpu.arch == "x86":
        if "amx_int8" in simd:
            notes.append(
                "AMX-INT8: INT8 MatMul/Conv run on the tile units, far faster than FP32: "
                "static INT8 QDQ U8S8 per-channel for CNNs; dynamic INT8 per-channel "
                "for transformers."
            )
        elif simd & {"avx512_vnni", "avx_vnni"}:
            which = "AVX-512 VNNI" if "avx512_vnni" in simd else "AVX-VNNI"
            notes.append(
                f"{which}: INT8 is fast here (typically 2-4x FP32): static INT8 QDQ "
                "U8S8 per-channel for CNNs; dynamic INT8 per-channel for transformers."
            )
        elif "avx2" in simd:
            notes.append(
                "AVX2 without VNNI: INT8 gains are smaller (~1.5-2x, some models none) "
                "and U8S8 can saturate: quantize with reduce_range=True or U8U8; "
                "measure before switching."
            )
        else:
            notes.append(
                "No AVX2: INT8 kernels fall back to SSE; expect little speed-up from "
                "INT8 (the 4x smaller weights still help memory)."
            )
    elif cpu.arch == "arm":
        if simd & {"i8mm", "dotprod"}:
            which = " and ".join(n for n in ("dotprod", "i8mm") if n in simd)
            notes.append(
                f"ARM {which}: INT8 is fast here (typically 2-4x FP32): static INT8 "
                "QDQ per-channel for CNNs; dynamic INT8 per-channel for transformers."
            )
            notes.append(
                "GGUF (llama.cpp): Q4_0 is repacked at load for dotprod/i8mm and is "
                "usually the fastest 4-bit format here."
            )
        elif "neon" in simd:
            notes.append(
                "NEON without dotprod (e.g. Cortex-A72, Raspberry Pi 4): INT8 gains "
                "are modest (~1.3-2x); still worth it for the 4x smaller weights."
            )
        else:
            notes.append("No NEON reported: expect slow INT8 and FP32 alike.")
    else:
        notes.append(
            "CPU features unknown (no /proc/cpuinfo flags): cannot say which formats "
            "are fast; measure with `edgeinfer bench`."
        )
    notes.append(
        "Transformer MatMuls: INT4 weight-only (MatMulNBits, block 32) cuts weights 8x "
        "vs FP32; decoding is memory-bound, so tokens/s grows with the cut"
        + ("; use accuracy_level=4 to compute in INT8." if cpu.int8_dot else ".")
    )
    return notes


def recommend(
    report: dict[str, Any], cpu: CpuInfo, topology: Topology, threads: int
) -> dict[str, Any]:
    c, mem, th = report["cpu"], report["memory"], report["thermal"]
    notes: list[str] = []
    usable = c["usable_cpus"]
    if c["online"] and usable < c["online"]:
        notes.append(
            f"Only {usable} of {c['online']} CPUs are usable (affinity/cgroup): size "
            "thread pools to that, not to os.cpu_count()."
        )
    if topology.heterogeneous:
        notes.append(
            f"big.LITTLE: keep inference threads on the big cores "
            f"({_cpu_list(topology.big)}), e.g. `taskset -c {_cpu_list(topology.big)}`;"
            " a parallel op waits for its slowest thread."
        )
    if threads > 1:
        notes.append(
            f"With N models busy at once give each intra_op_threads = {threads} // N; "
            "more threads than cores only adds contention."
        )
    soft = GovernorConfig().temp_soft_c
    if th["cpu_temp_c"] is None:
        notes.append(
            "No temperature sensor visible (VM or container): the thermal governor "
            "will stay at full capacity."
        )
    elif th["cpu_temp_c"] >= soft:
        notes.append(
            f"CPU at {th['cpu_temp_c']} °C, above the governor's soft limit "
            f"({soft:g} °C): add cooling or expect smaller batches."
        )
    flags = report["frequency"]["throttle_flags"]
    if any(f.startswith("under-voltage") for f in flags):
        notes.append(
            "Under-voltage reported: use a stronger power supply; the firmware caps "
            "the clock while it lasts."
        )
    if mem["oom_kills"]:
        notes.append(
            f"The cgroup has had {mem['oom_kills']} OOM kill(s): keep models within "
            "the memory budget."
        )
    return {
        "intra_op_threads": threads,
        "inter_op_threads": 1,
        "model_budget_bytes": mem["model_budget_bytes"],
        "quantization": _quantization(cpu),
        "notes": notes,
    }


# ---- render ---------------------------------------------------------------------------------
def _bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GB"
    return f"{n / (1 << 20):.0f} MB"


def _cores_line(c: dict[str, Any]) -> str:
    if not c["online"]:
        return "unknown"
    text = f"{c['online']} online"
    if c["physical_cores"] and c["physical_cores"] != c["online"]:
        text += f", {c['physical_cores']} physical"
    if c["heterogeneous"]:
        caps = c["capacity"]
        big, little = c["big_cpus"], c["little_cpus"]
        text += (
            f"; big {_cpu_list(big)} (capacity {caps.get(str(big[0]), '?')}), LITTLE "
            f"{_cpu_list(little)} (capacity {caps.get(str(little[0]), '?')})"
        )
    else:
        text += ", all of one type"
    return text


def _usable_line(c: dict[str, Any]) -> str:
    why = [
        f"affinity {c['affinity']}" if c["affinity"] else "",
        f"cgroup quota {c['cgroup_cpu_quota']:g} CPUs"
        if c["cgroup_cpu_quota"]
        else "no cgroup CPU quota",
        f"cpuset {c['cpuset']}" if c["cpuset"] else "",
    ]
    return f"{c['usable_cpus']} ({', '.join(w for w in why if w)})"


def _sections(r: dict[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    c, f, t, m, rt, rec = (
        r["cpu"],
        r["frequency"],
        r["thermal"],
        r["memory"],
        r["runtimes"],
        r["recommendations"],
    )
    if f["cur_mhz_mean"] is not None:
        freq = f"{f['cur_mhz_mean']} MHz now (mean), max {f['max_mhz'] or '?'} MHz"
    else:
        freq = "unknown (no cpufreq)"
        freq += f"; /proc/cpuinfo says {f['cpuinfo_mhz']:.0f} MHz" if f["cpuinfo_mhz"] else ""
    throttle = ", ".join(f["throttle_flags"]) or "none reported"
    if f["throttle_count"]:
        throttle += f"; {f['throttle_count']} thermal throttle events (x86)"
    temp = "unknown (no thermal sensor)"
    if t["cpu_temp_c"] is not None:
        temp = f"{t['cpu_temp_c']:.1f} °C ({t['source'] or 'sensor'})"
    cg = "none visible"
    if m["cgroup_version"]:
        cg = f"v{m['cgroup_version']} {m['cgroup_path']}: "
        cg += f"limit {_bytes(m['cgroup_limit_bytes'])}" if m["cgroup_limit_bytes"] else "no limit"
        cg += f", {_bytes(m['cgroup_working_set_bytes'] or m['cgroup_usage_bytes'])} in use"
        if m["oom_events"] is not None:
            cg += f", OOM events {m['oom_events']}"
        if m["oom_kills"] is not None:
            cg += f", OOM kills {m['oom_kills']}"
    ort = rt.get("onnxruntime")
    llama = rt.get("llama_cpp")
    runtime_rows = [("python", rt.get("python", "")), ("numpy", rt.get("numpy") or "not installed")]
    for b in rt.get("backends", []):
        state = b["version"] if b["installed"] else f"not installed: {b['install']}"
        if b["name"] == "onnxruntime" and ort:
            state += f" ({', '.join(ort['providers'])})"
        runtime_rows.append(
            (
                b["name"],
                f"{state}; serves {', '.join(b['files'])}; suits this CPU: {b['suits_cpu']}",
            )
        )
    bufts = (llama or {}).get("extra_buffer_types")
    if bufts:
        runtime_rows.append(("GGUF kernels", _kernels_line(bufts)))
    return [
        (
            "CPU",
            [
                ("model", c["model"] or "unknown"),
                ("board", c["board"] or "-"),
                (
                    "architecture",
                    (c["arch"] or "unknown")
                    + (
                        " (user-mode emulation: features from HWCAP, /proc/cpuinfo is the host's)"
                        if c["emulated"]
                        else ""
                    ),
                ),
                ("cores", _cores_line(c)),
                ("usable CPUs", _usable_line(c)),
                ("SIMD", " ".join(c["simd"]) or "unknown"),
                ("INT8 dot", c["int8_dot"] or "none"),
            ],
        ),
        (
            "Clock and temperature",
            [("frequency", freq), ("temperature", temp), ("throttling", throttle)],
        ),
        (
            "Memory",
            [
                ("total", _bytes(m["total_bytes"])),
                ("available", _bytes(m["available_bytes"])),
                ("cgroup", cg),
                (
                    "model budget",
                    _bytes(m["model_budget_bytes"])
                    + " (tighter of cgroup limit and available, minus max(10%, 256 MB))",
                ),
            ],
        ),
        ("Runtimes" + ("" if rt else " (skipped)"), runtime_rows if rt else []),
        (
            "Recommendations",
            [
                (
                    "threads",
                    f"intra_op_threads = {rec['intra_op_threads']}, "
                    "inter_op_threads = 1 (one model busy at a time)",
                )
            ],
        ),
    ]


def render(report: dict[str, Any]) -> str:
    lines = [f"edgeinfer doctor — root {report['root']}"]
    for title, rows in _sections(report):
        lines += ["", title]
        lines += [f"  {key:<{_KEY}}{value}" for key, value in rows]
    rec = report["recommendations"]
    for label, items in (("quantization", rec["quantization"]), ("notes", rec["notes"])):
        for i, item in enumerate(items):
            wrapped = textwrap.wrap(item, 100 - 2 - _KEY - 2, break_on_hyphens=False) or [""]
            key = label if i == 0 else ""
            lines.append(f"  {key:<{_KEY}}- {wrapped[0]}")
            lines += [f"  {'':<{_KEY}}  {more}" for more in wrapped[1:]]
    return "\n".join(lines)


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

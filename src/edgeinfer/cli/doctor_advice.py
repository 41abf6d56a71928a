"""`edgeinfer doctor`'s recommendations: threads, quantization formats and warnings drawn
from the collected report."""

from __future__ import annotations

from typing import Any

from edgeinfer.cli.doctor_render import cpu_list
from edgeinfer.hardware.governor import GovernorConfig
from edgeinfer.hardware.procfs import CpuInfo
from edgeinfer.hardware.sysfs import Topology


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
            f"({cpu_list(topology.big)}), e.g. `taskset -c {cpu_list(topology.big)}`;"
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

"""`edgeinfer doctor`'s text report: the collected dict as aligned sections."""

from __future__ import annotations

import json
import textwrap
from typing import Any

_KEY = 16  # width of the key column


def cpu_list(cpus: tuple[int, ...] | list[int]) -> str:
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


def _kernels_line(bufts: dict[str, Any]) -> str:
    """llama.cpp's extra buffer types in use, the ones turned off and why; the build's ISA."""
    isa = f"; CPU backend built for {' '.join(bufts.get('cpu_backend') or ['?'])}"
    if not bufts["enabled"]:
        return f"no extra buffer types: {bufts['reason']}{isa}"
    kernels = ", ".join(bufts.get("kernels") or []) or "extra buffer types"
    off = bufts.get("disabled") or []
    why = f" ({', '.join(off)} off: {bufts['reason']})" if off else " (probed: they ran here)"
    return f"{kernels}{why}{isa}"


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
            f"; big {cpu_list(big)} (capacity {caps.get(str(big[0]), '?')}), LITTLE "
            f"{cpu_list(little)} (capacity {caps.get(str(little[0]), '?')})"
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
    c, m, rt, rec = r["cpu"], r["memory"], r["runtimes"], r["recommendations"]
    f = r["frequency"]
    clock = [
        ("frequency", _frequency_text(f)),
        ("temperature", _temperature_text(r["thermal"])),
        ("throttling", _throttle_text(f)),
    ]
    memory = [
        ("total", _bytes(m["total_bytes"])),
        ("available", _bytes(m["available_bytes"])),
        ("cgroup", _cgroup_text(m)),
        (
            "model budget",
            _bytes(m["model_budget_bytes"])
            + " (tighter of cgroup limit and available, minus max(10%, 256 MB))",
        ),
    ]
    threads = (
        f"intra_op_threads = {rec['intra_op_threads']}, "
        "inter_op_threads = 1 (one model busy at a time)"
    )
    return [
        ("CPU", _cpu_rows(c)),
        ("Clock and temperature", clock),
        ("Memory", memory),
        ("Runtimes" + ("" if rt else " (skipped)"), _runtime_rows(rt) if rt else []),
        ("Recommendations", [("threads", threads)]),
    ]


def _cpu_rows(c: dict[str, Any]) -> list[tuple[str, str]]:
    emulated = (
        " (user-mode emulation: features from HWCAP, /proc/cpuinfo is the host's)"
        if c["emulated"]
        else ""
    )
    return [
        ("model", c["model"] or "unknown"),
        ("board", c["board"] or "-"),
        ("architecture", (c["arch"] or "unknown") + emulated),
        ("cores", _cores_line(c)),
        ("usable CPUs", _usable_line(c)),
        ("SIMD", " ".join(c["simd"]) or "unknown"),
        ("INT8 dot", c["int8_dot"] or "none"),
    ]


def _frequency_text(f: dict[str, Any]) -> str:
    if f["cur_mhz_mean"] is not None:
        return f"{f['cur_mhz_mean']} MHz now (mean), max {f['max_mhz'] or '?'} MHz"
    freq = "unknown (no cpufreq)"
    freq += f"; /proc/cpuinfo says {f['cpuinfo_mhz']:.0f} MHz" if f["cpuinfo_mhz"] else ""
    return freq


def _throttle_text(f: dict[str, Any]) -> str:
    throttle = ", ".join(f["throttle_flags"]) or "none reported"
    if f["throttle_count"]:
        throttle += f"; {f['throttle_count']} thermal throttle events (x86)"
    return throttle


def _temperature_text(t: dict[str, Any]) -> str:
    if t["cpu_temp_c"] is None:
        return "unknown (no thermal sensor)"
    return f"{t['cpu_temp_c']:.1f} °C ({t['source'] or 'sensor'})"


def _cgroup_text(m: dict[str, Any]) -> str:
    if not m["cgroup_version"]:
        return "none visible"
    cg = f"v{m['cgroup_version']} {m['cgroup_path']}: "
    cg += f"limit {_bytes(m['cgroup_limit_bytes'])}" if m["cgroup_limit_bytes"] else "no limit"
    cg += f", {_bytes(m['cgroup_working_set_bytes'] or m['cgroup_usage_bytes'])} in use"
    if m["oom_events"] is not None:
        cg += f", OOM events {m['oom_events']}"
    if m["oom_kills"] is not None:
        cg += f", OOM kills {m['oom_kills']}"
    return cg


def _runtime_rows(rt: dict[str, Any]) -> list[tuple[str, str]]:
    ort = rt.get("onnxruntime")
    llama = rt.get("llama_cpp")
    rows = [("python", rt.get("python", "")), ("numpy", rt.get("numpy") or "not installed")]
    for b in rt.get("backends", []):
        state = b["version"] if b["installed"] else f"not installed: {b['install']}"
        if b["name"] == "onnxruntime" and ort:
            state += f" ({', '.join(ort['providers'])})"
        rows.append(
            (
                b["name"],
                f"{state}; serves {', '.join(b['files'])}; suits this CPU: {b['suits_cpu']}",
            )
        )
    variant = (llama or {}).get("cpu_variant")
    if variant and variant != "built in":  # a portable build: which variant this CPU got
        rows.append(("llama.cpp CPU", variant))
    bufts = (llama or {}).get("extra_buffer_types")
    if bufts:
        rows.append(("GGUF kernels", _kernels_line(bufts)))
    att = (llama or {}).get("attention")
    if att:
        flash = "on" if att["flash"] else "off"
        rows.append(
            (
                "GGUF attention",
                f"flash attention {flash}, {att['kv_cache_type']} KV "
                f"cache (flash_attn = {json.dumps(att['flash_attn'])}: off with an exact f32 cache)",
            )
        )
    return rows


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

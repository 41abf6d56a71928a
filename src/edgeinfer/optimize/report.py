"""The optimizer's report: `report.json` (read by the server's loader: `status` and `gate`) and
`report.md` for people."""

from __future__ import annotations

import time
from importlib import metadata
from typing import Any

ACCEPTED, REJECTED = "accepted", "rejected"


def versions() -> dict[str, str]:
    out = {}
    for name in ("edgeinfer", "onnxruntime", "onnx"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def build(
    *,
    tool: str,
    source: str,
    target: str,
    settings: dict[str, Any],
    gate: dict[str, Any],
    accuracy: dict[str, Any] | None,
    size: dict[str, int],
    speed: dict[str, dict[str, float]],
    speed_inputs: str,
    data: dict[str, Any],
    auto: dict[str, Any] | None,
    peak_rss_mb: float,
    seconds: float,
) -> dict[str, Any]:
    fp32, opt = speed["fp32"], speed["optimized"]
    tput_key = next(k for k in fp32 if k.startswith("throughput_b"))
    return {
        "status": ACCEPTED if gate["passed"] else REJECTED,
        "gate": gate,
        "tool": tool,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": source,
        "target": target,
        "settings": settings,
        "data": data,
        "accuracy": accuracy,
        "size": {**size, "ratio": _ratio(size["fp32_bytes"], size["optimized_bytes"])},
        "speed": {
            "inputs": speed_inputs,
            "fp32": fp32,
            "optimized": opt,
            "latency_speedup": _ratio(fp32["latency_b1_ms"], opt["latency_b1_ms"]),
            "throughput_speedup": _ratio(opt[tput_key], fp32[tput_key]),
        },
        "auto": auto,
        "peak_rss_mb": peak_rss_mb,
        "seconds": round(seconds, 1),
        "versions": versions(),
    }


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def markdown(r: dict[str, Any]) -> str:
    size, speed, gate = r["size"], r["speed"], r["gate"]
    fp32, opt = speed["fp32"], speed["optimized"]
    tput_key = next(k for k in fp32 if k.startswith("throughput_b"))
    batch = tput_key.removeprefix("throughput_b")
    lines = [
        f"# {r['tool']}: {r['status'].upper()}",
        "",
        f"- source: `{r['source']}`",
        f"- target: `{r['target']}`",
        f"- gate: {'passed' if gate['passed'] else 'FAILED'} ({gate['reason']})",
        "- settings: " + ", ".join(f"{k}={v}" for k, v in r["settings"].items() if k != "advice"),
        *(f"- advice: {a}" for a in r["settings"].get("advice", [])),
        "",
        "| | FP32 | optimized | ratio |",
        "|---|---:|---:|---:|",
        f"| size on disk | {_mb(size['fp32_bytes'])} | {_mb(size['optimized_bytes'])} "
        f"| {size['ratio']}x smaller |",
        f"| latency, batch 1 (p50) | {fp32['latency_b1_ms']:.3f} ms | "
        f"{opt['latency_b1_ms']:.3f} ms | {speed['latency_speedup']}x faster |",
        f"| throughput, batch {batch} | {fp32[tput_key]:,.1f}/s | {opt[tput_key]:,.1f}/s "
        f"| {speed['throughput_speedup']}x |",
        "",
        f"Speed measured on {speed['inputs']} inputs, same session options, alternating rounds. "
        f"Peak RSS of the process: {r['peak_rss_mb']} MB. Took {r['seconds']} s.",
    ]
    if r["accuracy"]:
        lines += ["", "## Accuracy against FP32", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in r["accuracy"].items()]
    auto = r.get("auto")
    if auto:
        lines += ["", "## Automatic mixed precision", "", auto["summary"]]
        if auto["kept_fp32"]:
            lines += ["", "| node kept in FP32 | op | rank | why |", "|---|---|---:|---|"]
            lines += [
                f"| `{n['node']}` | {n['op_type']} | {n['rank']} | {n['why']} |"
                for n in auto["kept_fp32"]
            ]
    return "\n".join(lines) + "\n"

"""Ratios, target checks and the README markdown table, all computed from the results JSON."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"

LABELS = {"mlp": "MLP, JSON", "resnet18": "ResNet-18, binary"}


def point(side: dict[str, Any], model: str, concurrency: int) -> dict[str, Any]:
    for p in side["points"]:
        if p["model"] == model and p["concurrency"] == concurrency:
            return p
    raise KeyError(f"no point {model} c={concurrency}")


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def ratios(res: dict[str, Any]) -> dict[str, float | None]:
    ours, peer, raw = res["edgeinfer"], res["fastapi"], res["raw_ort"]
    out: dict[str, float | None] = {}
    for p in ours["points"]:
        m, c = p["model"], p["concurrency"]
        q = point(peer, m, c)
        out[f"{m}_c{c}_rps_ours_over_fastapi"] = _ratio(p["rps"], q["rps"])
        out[f"{m}_c{c}_p50_ours_over_fastapi"] = _ratio(p["p50_ms"], q["p50_ms"])
    for m in LABELS:
        out[f"{m}_c1_rps_ours_over_raw_ort"] = _ratio(point(ours, m, 1)["rps"], raw[m]["rps"])
        out[f"{m}_c1_rps_fastapi_over_raw_ort"] = _ratio(point(peer, m, 1)["rps"], raw[m]["rps"])
    out["cold_start_ours_over_fastapi"] = _ratio(ours["cold_start_s"], peer["cold_start_s"])
    out["rss_ours_over_fastapi"] = _ratio(ours["rss_mb"], peer["rss_mb"])
    return out


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its value and whether a point behind it was noisy (busy neighbours)."""
    ours, peer = res["edgeinfer"], res["fastapi"]
    ours_mlp, peer_mlp = point(ours, "mlp", 1), point(peer, "mlp", 1)
    ours_cnn, raw_cnn = point(ours, "resnet18", 1), res["raw_ort"]["resnet18"]
    limit = res["settings"].get("noisy_other_cpu", 0.3)

    def noisy(*points: dict[str, Any]) -> bool:
        return any(p.get("other_cpu", 0.0) > limit for p in points)

    p50, peer_p50 = ours_mlp["p50_ms"], peer_mlp["p50_ms"]
    cnn_share = res["ratios"]["resnet18_c1_rps_ours_over_raw_ort"] or 0.0
    cold, rss, idle = ours["cold_start_s"], ours["rss_mb"], ours["idle_cpu"]
    rows = [
        ("MLP c=1 p50 <= FastAPI p50", p50, f"<= {peer_p50} ms", p50 <= peer_p50,
         noisy(ours_mlp, peer_mlp)),
        ("MLP c=1 p50 <= 0.6 ms", p50, "<= 0.6 ms", p50 <= 0.6, noisy(ours_mlp)),
        ("ResNet-18 c=1 >= 90% of raw ORT batch-1 req/s", cnn_share, ">= 0.90", cnn_share >= 0.90,
         noisy(ours_cnn, raw_cnn)),
        ("cold start <= 1.5 s", cold, "<= 1.5 s", cold <= 1.5,
         ours.get("cold_start_other_cpu", 0.0) > limit),
        ("idle CPU < 1% of a core", idle, "< 0.01", idle < 0.01, False),
        ("RSS after load <= 250 MB", rss, "<= 250 MB", rss <= 250, False),
    ]  # fmt: skip
    cost = res.get("metrics_cost", {})
    if cost.get("status") == "ok":  # results from before the comparison existed have none
        ratio = cost["rps_on_over_off"]
        rows.append(("MLP c=32 req/s with metrics on >= 97% of off", ratio, ">= 0.97",
                     ratio >= 0.97, any(r["other_cpu"] > 1.0 + limit
                                        for r in cost["rounds"]["on_off"])))  # fmt: skip
    return [{"target": t, "value": v, "limit": lim, "met": bool(ok), "noisy": n}
            for t, v, lim, ok, n in rows]  # fmt: skip


def _cell(p: dict[str, Any], noisy: float) -> str:
    mark = " †" if p.get("other_cpu", 0.0) > noisy else ""
    return f"{p['rps']:,.0f}{mark} | {p['p50_ms']:.2f} / {p['p99_ms']:.2f}"


def _cold(side: dict[str, Any], noisy: float) -> str:
    mark = " †" if side.get("cold_start_other_cpu", 0.0) > noisy else ""
    return f"{side['cold_start_s']:.2f} s{mark}"


def table(res: dict[str, Any]) -> str:
    """The README benchmark section, in markdown."""
    ours, peer, raw, m = res["edgeinfer"], res["fastapi"], res["raw_ort"], res["machine"]
    noisy = res["settings"].get("noisy_other_cpu", 0.3)
    lines = [
        "| Model, payload | Concurrency | edgeinfer req/s | p50 / p99 ms | FastAPI+ORT req/s "
        "| p50 / p99 ms | edgeinfer / FastAPI req/s | client CPU (ours / FastAPI) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, label in LABELS.items():
        r = raw[model]
        lines.append(f"| {label} | raw ORT `session.run`, batch 1 | {_cell(r, noisy)} | | | | |")
        for c in res["settings"]["concurrency"]:
            p, q = point(ours, model, c), point(peer, model, c)
            lines.append(
                f"| {label} | {c} | {_cell(p, noisy)} | {_cell(q, noisy)} | {p['rps'] / q['rps']:.2f}x "
                f"| {p['client_cpu']:.0%} / {q['client_cpu']:.0%} |"
            )
    lines += [
        "",
        "| | edgeinfer | FastAPI+ORT |",
        "|---|---:|---:|",
        f"| cold start to first inference on every model | {_cold(ours, noisy)} "
        f"| {_cold(peer, noisy)} |",
        f"| RSS after the load runs | {ours['rss_mb']:.0f} MB | {peer['rss_mb']:.0f} MB |",
        f"| idle CPU | {ours['idle_cpu']:.2%} of a core | {peer['idle_cpu']:.2%} of a core |",
        "",
    ]
    wrk = res.get("wrk", {})
    if wrk.get("status") == "ok":
        mark = " †" if wrk.get("other_cpu", 0.0) > noisy else ""
        cpu = (f" (wrk CPU {wrk['client_cpu']:.0%}, server CPU {wrk['server_cpu']:.0%} of a core)"
               if "server_cpu" in wrk else "")  # fmt: skip
        lines.append(f"wrk, MLP at concurrency 32 against edgeinfer: {wrk['rps']:,.0f} req/s{mark}, "
                     f"p50 {wrk['p50_ms']:.2f} ms, p99 {wrk['p99_ms']:.2f} ms{cpu}.")  # fmt: skip
    else:
        lines.append(f"wrk: {wrk.get('status', 'not run')}.")
    cost = res.get("metrics_cost", {})
    if cost.get("status") == "ok":
        us = {k: float(np.median([r[k]["server_cpu_us_per_request"]
                                   for r in cost["rounds"]["on_off"]]))
               for k in ("on", "off")}  # fmt: skip
        lo, hi = cost["rps_on_over_off_range"]
        aa_lo, aa_hi = cost["aa_rps_ratio_range"]
        lines.append(
            f"Metrics on vs `--no-metrics` (MLP, wrk at concurrency {cost['concurrency']} on each, "
            f"both servers at once on one core, {len(cost['rounds']['on_off'])} rounds): req/s "
            f"on/off {cost['rps_on_over_off']:.3f} (median; rounds {lo:.3f}-{hi:.3f}), server "
            f"CPU {us['on']:.0f} vs {us['off']:.0f} µs per request; two servers both with "
            f"metrics on, paired the same way: {cost['aa_rps_ratio_median']:.3f} "
            f"({aa_lo:.3f}-{aa_hi:.3f}), the noise floor."
        )
    elif cost:
        lines.append(f"Metrics on vs off: {cost['status']}.")
    flagged = [p for side in (ours, peer) for p in side["points"]] + [*raw.values(), wrk]
    cold_noisy = any(s.get("cold_start_other_cpu", 0.0) > noisy for s in (ours, peer))
    if cold_noisy or any(p.get("other_cpu", 0.0) > noisy for p in flagged):
        lines.append(f"† other processes on the machine used more than {noisy:.0%} of a core "
                     "during this measurement (load points: even after a retry); treat it as "
                     "noisy.")  # fmt: skip
    if res.get("edgeinfer_source_changed_during_run"):
        lines.append(
            "Warning: the edgeinfer sources changed during this run (see edgeinfer_source)."
        )
    probe = res["cnn_threads"]
    tried = ", ".join(
        f"{t} thread(s): {v['c1']['rps']:.1f} req/s served, {raw['resnet18_t' + t]['rps']:.1f} raw"
        for t, v in probe["runs"].items()
    )
    lines.append(
        f"ResNet-18 `intra_op_threads` at concurrency 1 — {tried}; kept {probe['chosen']}."
    )
    met = sum(t["met"] for t in res["targets"])
    lines.append(f"Targets met: {met}/{len(res['targets'])} — " + "; ".join(
        f"{'✓' if t['met'] else '✗'} {t['target']} ({t['value']}{', noisy' if t.get('noisy') else ''})"
        for t in res["targets"]
    ))  # fmt: skip
    lines.append(
        f"{m['cpu']}, {m['nproc']} cores, Python {m['python']}, onnxruntime {m['onnxruntime']}, "
        f"{m['date'][:10]}; {res['settings']['duration_s']:g} s per point after "
        f"{res['settings']['warmup_s']:g} s warm-up; closed-loop Python client in its own process "
        "(one keep-alive connection per slot). Client CPU near 100% means the client, not the "
        "server, is the limit. `python bench/serving.py` reproduces it."
    )
    return "\n".join(lines)


def add_output_args(p: argparse.ArgumentParser, name: str) -> None:
    """--output and --table for a benchmark whose results go to bench/results/<name>.json."""
    p.add_argument("--output", type=Path, help=f"JSON path (default bench/results/{name}.json, "
                   f"quick: {name}-quick.json)")  # fmt: skip
    p.add_argument("--table", type=Path, metavar="JSON", help="print the markdown table of a "
                   "results file and exit")  # fmt: skip


def run_and_write(name: str, opts: argparse.Namespace,
                  run: Callable[[argparse.Namespace, Path], dict[str, Any]],
                  table: Callable[[dict[str, Any]], str]) -> int:  # fmt: skip
    """Run the benchmark in a temp dir, write its JSON and print its table (or only print the
    table of `--table FILE`)."""
    if opts.table:
        print(table(json.loads(opts.table.read_text())))
        return 0
    output = opts.output or RESULTS / (f"{name}-quick.json" if opts.quick else f"{name}.json")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"edgeinfer-{name}-bench-") as tmp:
        res = run(opts, Path(tmp))
    res["wall_s"] = round(time.perf_counter() - started, 1)
    res["patience_left_s"] = round(opts.patience.left, 1)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))
    print(f"\nwrote {output} in {res['wall_s']} s")
    return 0

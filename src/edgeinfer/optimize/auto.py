"""`--auto`: when the gate fails, keep the most sensitive nodes in FP32, fewest first.

1. Rank: in the switch model (sensitivity.py), keep one node at a time in FP32 on the first
   `auto_samples` eval samples; a node's score is how much that lowers the error to FP32.
2. Search: keep the top k in FP32 for k = 1, 2, 4, ... on the whole eval set (simulated, no
   re-quantization) until the gate passes, then bisect to the smallest passing k.
3. Confirm: quantize for real with `nodes_to_exclude` = the top k and evaluate; if that misses
   the gate, add the next node (a few times at most). The first real model that passes wins.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeinfer.optimize.metrics import compare
from edgeinfer.optimize.quantize import QuantSettings, quantize
from edgeinfer.optimize.sensitivity import Ranked, quantized_nodes, rank, run_switched, switch_model
from edgeinfer.optimize.source import new_session

if TYPE_CHECKING:
    from edgeinfer.optimize.pipeline import Evaluator, RunOptions

REAL_TRIES = 3
Best = tuple[Path, dict[str, Any], dict[str, Any]]


def repair(
    src: Path,
    settings: QuantSettings,
    calibration: Path | None,
    ev: Evaluator,
    run: RunOptions,
    tmp: Path,
) -> tuple[dict[str, Any], Best | None]:
    """`src` is the FP32 model with named nodes; `ev` holds the FP32 reference outputs."""
    started = time.perf_counter()
    session, nodes = _switch_session(src, settings, calibration, ev, tmp)
    n_sub = min(run.auto_samples, len(ev.data))
    proxy_metric = "mse" if ev.gate.metric == "top1" else ev.gate.metric
    ref_sub = ev.ref[:n_sub]

    def proxy(out: np.ndarray) -> float:
        return float(compare(proxy_metric, ref_sub, out)["drop"])

    base = proxy(run_switched(session, lambda: ev.batches(n_sub), len(nodes), set()))
    ranked = rank(session, nodes, lambda: ev.batches(n_sub), proxy)
    index = {n.name: k for k, n in enumerate(nodes)}
    limit = max(1, int(len(nodes) * run.auto_max_share))
    simulated: dict[int, dict[str, Any]] = {}

    def passes(k: int) -> bool:
        if k not in simulated:
            keep = {index[r.name] for r in ranked[:k]}
            _, gate = ev.judge(run_switched(session, ev.batches, len(nodes), keep))
            simulated[k] = {"kept_fp32": k, "drop": gate["drop"], "passed": gate["passed"]}
        return bool(simulated[k]["passed"])

    k = _smallest_passing(passes, limit)
    session = None  # free the switch model before quantizing again
    steps, best = _confirm(src, settings, calibration, ev, ranked, k, limit, tmp)
    kept = ranked[: steps[-1]["kept_fp32"]] if best else []
    section = {
        "passed": best is not None,
        "summary": _summary(len(nodes), n_sub, proxy_metric, limit, steps, best),
        "quantized_nodes": len(nodes),
        "ranking_metric": proxy_metric,
        "ranking_samples": n_sub,
        "error_all_quantized": base,
        "kept_fp32": [_why(r, i + 1, base, proxy_metric) for i, r in enumerate(kept)],
        "ranking": [_why(r, i + 1, base, proxy_metric) for i, r in enumerate(ranked[:10])],
        "simulated": [simulated[key] for key in sorted(simulated)],
        "steps": steps,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return section, best


def _switch_session(
    src: Path, settings: QuantSettings, calibration: Path | None, ev: Evaluator, tmp: Path
) -> tuple[Any, list[Any]]:
    """A session on the switch model (each quantized node switchable to FP32) and its nodes."""
    import onnx

    # Static QOperator graphs rename tensors; QDQ keeps them, with the same quantization params.
    analysis = tmp / "analysis.onnx"
    quantize(src, analysis, replace(settings, format="qdq"), calibration)
    fp32 = onnx.load(str(src))
    quantized = onnx.load(str(analysis))
    nodes = quantized_nodes(fp32, quantized)
    session = new_session(
        switch_model(fp32, quantized, nodes).SerializeToString(), ev.source.config.onnxruntime
    )
    return session, nodes


def _confirm(
    src: Path,
    settings: QuantSettings,
    calibration: Path | None,
    ev: Evaluator,
    ranked: list[Ranked],
    k: int | None,
    limit: int,
    tmp: Path,
) -> tuple[list[dict[str, Any]], Best | None]:
    """Quantize for real keeping the top k (then k+1, ...) in FP32; the first that passes wins.
    With no simulated k, tries nothing."""
    steps: list[dict[str, Any]] = []
    for k_real in range(k or limit + 1, min(limit, (k or limit) + REAL_TRIES - 1) + 1):
        path = tmp / f"auto-{k_real}.onnx"
        quantize(src, path, settings, calibration, [r.name for r in ranked[:k_real]])
        accuracy, gate = ev.judge(ev.outputs(path))
        steps.append(
            {
                "kept_fp32": k_real,
                "drop": gate["drop"],
                "passed": gate["passed"],
                "reason": gate["reason"],
            }
        )
        if gate["passed"]:
            return steps, (path, accuracy, gate)
    return steps, None


def _smallest_passing(passes: Any, limit: int) -> int | None:
    """Smallest k in 1..limit with passes(k), assuming more FP32 nodes never hurt: double,
    then bisect. None if even `limit` fails."""
    lo, k = 0, 1
    while k < limit and not passes(k):
        lo, k = k, k * 2
    if k >= limit:
        k = limit
        if not passes(k):
            return None
    while k - lo > 1:
        mid = (lo + k) // 2
        if passes(mid):
            k = mid
        else:
            lo = mid
    return k


def _why(r: Ranked, rank_: int, base: float, metric: str) -> dict[str, Any]:
    share = r.score / base if base > 0 else 0.0
    return {
        "node": r.name,
        "op_type": r.op_type,
        "rank": rank_,
        "score": r.score,
        "why": f"alone in FP32 it removes {share:.0%} of the quantization error "
        f"({metric} {base:.3g} -> {base - r.score:.3g})",
    }


def _summary(
    n: int, n_sub: int, metric: str, limit: int, steps: list[dict[str, Any]], best: Best | None
) -> str:
    head = (
        f"Ranked {n} quantized nodes by how much keeping each alone in FP32 lowers the "
        f"{metric} to FP32 on {n_sub} eval samples."
    )
    if best is not None:
        k = steps[-1]["kept_fp32"]
        return f"{head} Keeping the top {k} in FP32 passes the gate: {best[2]['reason']}."
    if not steps:
        return (
            f"{head} Even keeping the top {limit} (the most --auto allows) in FP32 "
            "did not pass the gate in simulation; nothing was published."
        )
    return (
        f"{head} Keeping up to {steps[-1]['kept_fp32']} in FP32 still failed the gate: "
        f"{steps[-1]['reason']}."
    )

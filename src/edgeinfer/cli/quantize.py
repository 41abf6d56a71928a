"""`edgeinfer quantize` and `edgeinfer optimize`. The main CLI registers them with
`add_quantize(sub)` and `add_optimize(sub)`; `python -m edgeinfer.cli.quantize` runs them alone.

Exit codes: 0 accepted (published), 1 rejected by the accuracy gate (not published unless
--keep-rejected), 2 bad input (one line on stderr, nothing left behind).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# What add_argument_group returns; argparse names the class privately.
_Group = argparse._ArgumentGroup
_MODEL_HELP = "a .onnx file, or a repository version REPO/MODEL/N (published as a new version)"


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL_OR_REPO_VERSION", help=_MODEL_HELP)
    _add_gate_args(p.add_argument_group("accuracy gate"))
    _add_output_args(p.add_argument_group("output and measurement"))


def _add_gate_args(g: _Group) -> None:
    g.add_argument(
        "--eval",
        type=Path,
        metavar="DATA",
        help="evaluation data: .npz of input arrays (+ optional 'labels'), a folder "
        "of images, or a .txt of sentences ([text] models)",
    )
    g.add_argument(
        "--metric",
        choices=("top1", "cosine", "mse"),
        help="top1 (classifiers), cosine (embedders), mse; default: from the model and data",
    )
    g.add_argument(
        "--max-drop",
        type=float,
        default=0.01,
        help="largest allowed drop: accuracy fraction for top1 (0.005 = 0.5 pp), "
        "1 - mean cosine, or MSE (default: %(default)s)",
    )
    g.add_argument(
        "--min-agreement",
        type=float,
        metavar="X",
        help="also require top-1 agreement (top1) or nearest-neighbour agreement "
        "(cosine) with FP32 >= X",
    )
    g.add_argument(
        "--keep-rejected",
        action="store_true",
        help="publish a model that fails the gate anyway, marked rejected in "
        "report.json (the server refuses to load it)",
    )


def _add_output_args(o: _Group) -> None:
    o.add_argument(
        "--output",
        type=Path,
        metavar="DIR",
        help="write to this folder (or .onnx file) instead of publishing a new "
        "version; default for a file source: <name>-<kind>/ beside it",
    )
    o.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="batch size for calibration and evaluation (default: %(default)s)",
    )
    o.add_argument(
        "--bench-batch",
        type=int,
        default=8,
        help="batch size of the throughput measurement (default: %(default)s)",
    )
    o.add_argument(
        "--bench-seconds",
        type=float,
        default=2.0,
        help="timing budget per model and batch size (default: %(default)s)",
    )
    o.add_argument("--json", action="store_true", help="print the report as JSON")


def add_quantize(sub: Any) -> None:
    p = sub.add_parser(
        "quantize",
        help="INT8/INT4 quantization with an accuracy gate and a report",
        description="Quantize with ONNX Runtime, check accuracy against FP32, measure size and "
        "speed, and publish the result as a new version (or a file).",
    )
    _add_common(p)
    q = p.add_argument_group("quantization")
    q.add_argument(
        "--mode",
        required=True,
        choices=("dynamic", "static", "int4"),
        help="dynamic: int8 weights, activations at run time (transformers); "
        "static: int8 with calibrated activations (CNNs); int4: 4-bit MatMul "
        "weights",
    )
    _add_calibration_args(q)
    _add_weight_args(q)
    q.add_argument(
        "--auto",
        action="store_true",
        help="if the gate fails, keep the most sensitive nodes in FP32 until it "
        "passes (needs --eval)",
    )
    q.add_argument(
        "--auto-samples",
        type=int,
        default=64,
        help="eval samples used to rank node sensitivity (default: %(default)s)",
    )
    p.set_defaults(func=cmd_quantize)


def _add_calibration_args(q: _Group) -> None:
    q.add_argument(
        "--calibration",
        type=Path,
        metavar="DATA",
        help="calibration data for --mode static (same formats as --eval)",
    )
    q.add_argument(
        "--calibration-samples",
        type=int,
        metavar="N",
        help="use only the first N calibration samples",
    )
    q.add_argument(
        "--calibration-batch",
        type=int,
        default=1,
        metavar="N",
        help="calibration batch size; memory grows with it, as every activation of a batch "
        "is held (default: %(default)s)",
    )
    q.add_argument(
        "--method",
        choices=("minmax", "entropy", "percentile"),
        default="minmax",
        help="calibration method (default: %(default)s)",
    )


def _add_weight_args(q: _Group) -> None:
    q.add_argument(
        "--per-channel",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="per-channel weight scales (default: on; per-tensor loses accuracy)",
    )
    q.add_argument("--reduce-range", action="store_true", help="7-bit weights (older CPUs)")
    q.add_argument(
        "--format",
        choices=("qdq", "qoperator"),
        default="qdq",
        help="static graph format (default: %(default)s)",
    )
    q.add_argument(
        "--block-size", type=int, default=32, help="int4 block size (default: %(default)s)"
    )


def add_optimize(sub: Any) -> None:
    p = sub.add_parser(
        "optimize",
        help="offline ONNX Runtime graph optimization with a gate and a report",
        description="Apply ONNX Runtime's graph optimizations once and save the result, "
        "checked against the original like quantize.",
    )
    _add_common(p)
    p.add_argument(
        "--level",
        choices=("basic", "extended", "all"),
        default="extended",
        help="optimization level (default: %(default)s; 'all' adds layout changes "
        "tied to this CPU)",
    )
    p.set_defaults(func=cmd_optimize)


def _options(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from edgeinfer.optimize.pipeline import DataOptions, GateOptions, RunOptions
    from edgeinfer.optimize.source import OptimizeError

    for flag in ("batch_size", "bench_batch", "calibration_batch"):
        if getattr(args, flag, 1) < 1:
            raise OptimizeError(f"--{flag.replace('_', '-')} must be >= 1")
    if args.bench_seconds <= 0:
        raise OptimizeError("--bench-seconds must be > 0")
    data = DataOptions(
        calibration=getattr(args, "calibration", None),
        eval=args.eval,
        batch_size=args.batch_size,
        calibration_samples=getattr(args, "calibration_samples", None),
        calibration_batch=getattr(args, "calibration_batch", 1),
    )
    gate = GateOptions(metric=args.metric, max_drop=args.max_drop, min_agreement=args.min_agreement)
    run = RunOptions(
        output=args.output,
        keep_rejected=args.keep_rejected,
        auto=getattr(args, "auto", False),
        auto_samples=getattr(args, "auto_samples", 64),
        bench_seconds=args.bench_seconds,
        bench_batch=args.bench_batch,
    )
    return data, gate, run


def cmd_quantize(args: argparse.Namespace) -> int:
    from edgeinfer.optimize.pipeline import run_quantize
    from edgeinfer.optimize.quantize import QuantSettings

    settings = QuantSettings(
        mode=args.mode,
        method=args.method,
        per_channel=args.per_channel,
        format=args.format,
        reduce_range=args.reduce_range,
        block_size=args.block_size,
    )
    return _show(run_quantize(args.model, settings, *_options(args)), args.json)


def cmd_optimize(args: argparse.Namespace) -> int:
    from edgeinfer.optimize.pipeline import run_optimize

    return _show(run_optimize(args.model, args.level, *_options(args)), args.json)


def _show(outcome: Any, as_json: bool) -> int:
    from edgeinfer.optimize.report import markdown

    r = outcome.report
    print(json.dumps(r, indent=2) if as_json else markdown(r), end="" if not as_json else "\n")
    if outcome.published is not None:
        print(f"{r['status']}: published {outcome.published}", file=sys.stderr)
    else:
        print(f"rejected: {r['gate']['reason']}; nothing published", file=sys.stderr)
    return int(outcome.exit_code)

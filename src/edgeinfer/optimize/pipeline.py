"""`quantize` and `optimize` end to end: check the inputs, produce a candidate in a staging
folder, evaluate it against FP32, (optionally) repair it, measure, report, publish or not."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.optimize import measure, report
from edgeinfer.optimize.data import Dataset, open_dataset
from edgeinfer.optimize.metrics import DEFAULT_MAX_DROP, Gate, compare, default_metric
from edgeinfer.optimize.quantize import QuantSettings, calibrate, quantize, weighted_nodes
from edgeinfer.optimize.sensitivity import ensure_names, quantized_nodes
from edgeinfer.optimize.source import (
    REPORT_JSON,
    REPORT_MD,
    ModelSource,
    OptimizeError,
    Target,
    choose_target,
    first_line,
    model_io,
    new_session,
    publish,
    resolve_source,
    staging,
)
from edgeinfer.types import TensorSpec


@dataclass(frozen=True)
class DataOptions:
    calibration: Path | None = None
    eval: Path | None = None
    batch_size: int = 16
    calibration_samples: int | None = None  # use only the first N calibration samples
    # The calibrator holds every activation of a batch (MobileNetV2 at 224: ~110 MB a sample).
    calibration_batch: int = 1


@dataclass(frozen=True)
class GateOptions:
    metric: str | None = None  # None: chosen from the model and data
    max_drop: float = DEFAULT_MAX_DROP
    min_agreement: float | None = None


@dataclass(frozen=True)
class RunOptions:
    output: Path | None = None
    keep_rejected: bool = False
    auto: bool = False
    auto_samples: int = 64  # eval samples used to rank node sensitivity
    auto_max_share: float = 0.5  # never keep more than this share of quantized nodes in FP32
    bench_seconds: float = 2.0  # per model and batch size
    bench_batch: int = 8


@dataclass
class Outcome:
    report: dict[str, Any]
    published: Path | None

    @property
    def exit_code(self) -> int:
        return 0 if self.report["status"] == report.ACCEPTED else 1


class Evaluator:
    """The FP32 reference outputs on the eval set, computed once; candidates compared to them."""

    def __init__(
        self, source: ModelSource, data: Dataset, gate: Gate, batch_size: int, output: str
    ) -> None:
        self.source, self.data, self.gate, self.batch_size = source, data, gate, batch_size
        self.output = output
        self.labels = data.labels()
        self.ref = self.outputs(source.path)

    def batches(self, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        return self.data.batches(self.batch_size, limit)

    def outputs(self, model: Path | bytes) -> np.ndarray:
        session = new_session(model, self.source.config.onnxruntime)
        try:
            return np.concatenate([session.run([self.output], f)[0] for f in self.batches()])
        except Exception as e:  # ORT rejects data the declared shapes allowed
            raise OptimizeError(
                f"{self.data.path}: the model failed on this data: {first_line(e)}"
            ) from e

    def judge(self, out: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]]:
        accuracy = compare(self.gate.metric, self.ref, out, self.labels)
        return accuracy, self.gate.check(accuracy)


@dataclass
class _Prepared:
    source: ModelSource
    inputs: tuple[TensorSpec, ...]
    evaluator: Evaluator | None
    gate: Gate | None
    target: Target
    data_info: dict[str, Any]


def _prepare(
    source: ModelSource,
    data: DataOptions,
    gate_opts: GateOptions,
    run: RunOptions,
    tag: str,
    calibration: Dataset | None = None,
) -> _Prepared:
    inputs, outputs = model_io(source.path)
    target = choose_target(source, run.output, tag)
    info: dict[str, Any] = {}
    if calibration is not None:
        info["calibration"] = {"path": str(data.calibration), "samples": len(calibration)}
    evaluator = gate = None
    if data.eval is not None:
        evalset = open_dataset(data.eval, inputs, source)
        out = outputs[0]
        metric = gate_opts.metric or default_metric(
            out.shape, out.name, evalset.labels() is not None, source.config.text is not None
        )
        try:
            gate = Gate(metric, gate_opts.max_drop, gate_opts.min_agreement)
        except ValueError as e:
            raise OptimizeError(str(e)) from e
        evaluator = Evaluator(source, evalset, gate, data.batch_size, out.name)
        info["eval"] = {
            "path": str(data.eval),
            "samples": len(evalset),
            "output": out.name,
            "labels": evaluator.labels is not None,
        }
    elif run.auto:
        raise OptimizeError("--auto needs --eval DATA to measure what each node costs")
    return _Prepared(source, inputs, evaluator, gate, target, info)


@dataclass
class _Candidate:
    """The model that may be published, how it was made, and how it fared against FP32."""

    path: Path
    settings: dict[str, Any]  # for the report
    accuracy: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None  # None: not evaluated
    auto: dict[str, Any] | None = None  # what --auto kept in FP32


def run_quantize(
    source_arg: str | Path,
    settings: QuantSettings,
    data: DataOptions,
    gate_opts: GateOptions,
    run: RunOptions,
) -> Outcome:
    started = time.perf_counter()
    source = resolve_source(source_arg)
    advice = _check_quantizable(source, settings)
    inputs, _ = model_io(source.path)
    calib = None
    if data.calibration is not None:
        calib = open_dataset(data.calibration, inputs, source)
    elif settings.mode == "static":
        raise OptimizeError("--mode static needs --calibration DATA (samples like the real inputs)")
    p = _prepare(source, data, gate_opts, run, settings.tag, calib)
    with staging(p.target) as tmp:
        src = ensure_names(source.path, tmp)  # the FP32 baseline stays the original file
        cache = None
        if settings.mode == "static":
            assert calib is not None
            cache = calibrate(
                src,
                _Limited(calib, data.calibration_samples),
                settings.method,
                data.calibration_batch,
                tmp,
            )
        c = _Candidate(tmp / "candidate.onnx", {**settings.describe(), "advice": advice})
        quantize(src, c.path, settings, cache)
        _check_changed(src, c.path, settings.mode)
        if p.evaluator is not None:
            c.accuracy, c.gate = p.evaluator.judge(p.evaluator.outputs(c.path))
            if not c.gate["passed"] and run.auto:
                from edgeinfer.optimize.auto import repair

                c.auto, best = repair(src, settings, cache, p.evaluator, run, tmp)
                if best is not None:
                    c.path, c.accuracy, c.gate = best
        return _finish(p, c, tmp, run, "edgeinfer quantize", started)


def _check_quantizable(source: ModelSource, settings: QuantSettings) -> list[str]:
    """The advice for these settings; OptimizeError when the mode finds nothing to quantize.
    Only the graph is read: ONNX Runtime loads its own copies of the weights."""
    import onnx

    fp32 = onnx.load(str(source.path), load_external_data=False)
    advice = _advice(fp32, settings)
    if not weighted_nodes(fp32, settings.mode):
        raise OptimizeError(
            f"{source.path}: nothing to quantize: --mode {settings.mode} needs "
            "MatMul/Conv/Gemm/Gather nodes with constant weights"
        )
    return advice


def run_optimize(
    source_arg: str | Path, level: str, data: DataOptions, gate_opts: GateOptions, run: RunOptions
) -> Outcome:
    from edgeinfer.optimize.graph import optimize_graph

    started = time.perf_counter()
    p = _prepare(resolve_source(source_arg), data, gate_opts, run, f"opt-{level}")
    with staging(p.target) as tmp:
        settings = {
            "level": level,
            "note": "the saved graph may hold CPU-specific fused ops; "
            "optimize on the machine that serves it",
        }
        c = _Candidate(tmp / "candidate.onnx", settings)
        optimize_graph(p.source.path, c.path, level, p.source.config.onnxruntime)
        if p.evaluator is not None:
            c.accuracy, c.gate = p.evaluator.judge(p.evaluator.outputs(c.path))
        return _finish(p, c, tmp, run, "edgeinfer optimize", started)


def _advice(model: Any, settings: QuantSettings) -> list[str]:
    """Measured pitfalls (shared/FACTS.md) that apply to this model and these settings."""
    ops = {n.op_type for n in model.graph.node}
    out = []
    if settings.mode == "dynamic" and "Conv" in ops:
        out.append(
            "dynamic INT8 runs Conv as ConvInteger, several times slower than FP32 on "
            "x86: use --mode static for CNNs"
        )
    if settings.mode != "int4" and not settings.per_channel:
        out.append("per-tensor weight scales lose accuracy on transformers and depthwise convs")
    if settings.reduce_range:
        out.append("--reduce-range only helps CPUs without VNNI and costs accuracy")
    return out


class _Limited(Dataset):
    """The first `limit` samples of a dataset (all of them when `limit` is None)."""

    def __init__(self, inner: Dataset, limit: int | None) -> None:
        self.inner, self.limit = inner, limit
        self.path, self.fixed_batch = inner.path, inner.fixed_batch

    def __len__(self) -> int:
        return len(self.inner) if self.limit is None else min(self.limit, len(self.inner))

    def _batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        return self.inner.batches(batch_size, len(self))


def _check_changed(src: Path, candidate: Path, mode: str) -> None:
    import onnx

    before = onnx.load(str(src), load_external_data=False)
    after = onnx.load(str(candidate), load_external_data=False)
    if not quantized_nodes(before, after):
        raise OptimizeError(
            f"{src}: --mode {mode} quantized no node of this model "
            "(no supported op with constant weights)"
        )


def _finish(
    p: _Prepared, c: _Candidate, tmp: Path, run: RunOptions, tool: str, started: float
) -> Outcome:
    """Measure, write the report beside the candidate, and publish if accepted (or kept)."""
    opts = p.source.config.onnxruntime
    data = p.evaluator.data if p.evaluator else None
    feeds_1, kind = measure.sample_feeds(p.inputs, data, 1)
    feeds_n, _ = measure.sample_feeds(p.inputs, data, run.bench_batch)
    speed = measure.benchmark(
        {"fp32": p.source.path, "optimized": c.path}, opts, feeds_1, feeds_n, run.bench_seconds
    )
    gate_result = c.gate
    if gate_result is None:
        gate_result = {
            "passed": True,
            "evaluated": False,
            "reason": "not evaluated (no --eval data given)",
        }
    settings = {
        **c.settings,
        "onnxruntime": {
            "intra_op_threads": opts.intra_op_threads,
            "graph_optimization_level": opts.graph_optimization_level,
        },
    }
    body = report.build(
        tool=tool,
        source=str(p.source.version_dir or p.source.path),
        target=p.target.describe(),
        settings=settings,
        gate=gate_result,
        accuracy=c.accuracy,
        size={
            "fp32_bytes": measure.file_size(p.source.path),
            "optimized_bytes": measure.file_size(c.path),
        },
        speed=speed,
        speed_inputs=kind,
        data=p.data_info,
        auto=c.auto,
        peak_rss_mb=measure.peak_rss_mb(),
        seconds=time.perf_counter() - started,
    )
    (tmp / REPORT_JSON).write_text(json.dumps(body, indent=2) + "\n")
    (tmp / REPORT_MD).write_text(report.markdown(body))
    return _publish(p, c.path, tmp, run, body)


def _publish(
    p: _Prepared, candidate: Path, tmp: Path, run: RunOptions, body: dict[str, Any]
) -> Outcome:
    published = None
    if body["status"] == report.ACCEPTED or run.keep_rejected:
        files = {
            **p.source.extra_files(),
            "model.onnx": candidate,
            REPORT_JSON: tmp / REPORT_JSON,
            REPORT_MD: tmp / REPORT_MD,
        }
        published = publish(p.target, files)
        body = {**body, "published": str(published)}
    return Outcome(body, published)

"""Per-layer profiles: where a model's time goes, node by node and op type by op type.

ONNX Runtime's profiler runs on a SEPARATE session built from the model's own options plus
`enable_profiling`, never on the live one (profiling a serving session would slow every request
and its trace file grows without bound). The session runs warm-up + K runs at batch N on example
inputs; `end_profiling()` writes a JSON trace whose `cat == "Node"` events named `*_kernel_time`
carry each kernel's duration (`dur`, µs) and type (`args.op_name`). Warm-up runs are dropped;
the rest is averaged per run.

ONNX Runtime renames what it fuses (`/layers/layers.1/Relu_output_0_nchwc` is layers.0's Conv
with layers.1's Relu folded in), so each kernel is mapped back to the nodes of the original
graph it came from, by name, by auto-generated `<Op>_<index>` names, or by the original tensor
its name is built on.

Running a session makes this the one part of `telemetry` that executes a model: it imports
onnxruntime and the runtime's session options lazily, only when a profile is asked for.
"""

from __future__ import annotations

import bisect
import json
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.config import ModelConfig
from edgeinfer.errors import InvalidInput, LoadError, Unavailable
from edgeinfer.runtime import Backend, resolve

MAX_RUNS = 1000
WARMUP_RUNS = 1
SAMPLE_TEXT = "The quick brown fox jumps over the lazy dog."
_KERNEL_SUFFIX = "_kernel_time"
_LOCK = threading.Lock()  # one profile at a time: each one keeps the CPU busy

_NUMPY_OF_ORT = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


# ---- running the profiler -------------------------------------------------------------------
def profile_model(
    version_dir: Path, config: ModelConfig, batch: int = 1, runs: int = 10
) -> dict[str, Any]:
    """Profile `version_dir/model.onnx` with `config`'s session options: warm-up, then `runs`
    runs at batch `batch`. Returns a JSON-able dict (see `summarize`). Blocking: call it from a
    worker thread. Raises InvalidInput for bad arguments, Unavailable if a profile is running."""
    if not 1 <= runs <= MAX_RUNS:
        raise InvalidInput(f"runs must be between 1 and {MAX_RUNS}, got {runs}")
    limit = max(1, config.max_batch_size)
    if not 1 <= batch <= limit:
        raise InvalidInput(
            f"batch must be between 1 and {limit} (the model's max_batch_size), got {batch}"
        )
    backend, path = resolve(Path(version_dir), config)
    if backend.name != "onnxruntime":
        return _profile_other(backend, path, config, batch, runs)
    if not _LOCK.acquire(blocking=False):
        raise Unavailable("another profile is running; try again when it has finished")
    try:
        with tempfile.TemporaryDirectory(prefix="edgeinfer-profile-") as tmp:
            events, feeds, wall = _run_profiled(path, config, batch, runs, Path(tmp))
    finally:
        _LOCK.release()
    doc = summarize(events, _graph_nodes(path), warmup_runs=WARMUP_RUNS)
    doc.update(
        batch=batch,
        inputs={name: list(a.shape) for name, a in feeds.items()},
        wall_seconds=round(wall, 3),
        graph_optimization_level=config.onnxruntime.graph_optimization_level,
        intra_op_threads=config.onnxruntime.intra_op_threads,
    )
    return doc


def _profile_other(
    backend: Backend, path: Path, config: ModelConfig, batch: int, runs: int
) -> dict[str, Any]:
    """A backend module's own `profile(path, config, feeds, runs)`, which returns per-node µs of
    each measured run, each run's µs and a note on what its profiler can see."""
    import importlib

    if not backend.installed():
        raise LoadError(
            f"backend {backend.name} is not installed; pip install 'edgeinfer[{backend.extra}]'"
        )
    run_profile = getattr(importlib.import_module(backend.module), "profile", None)
    if run_profile is None:
        raise InvalidInput(f"backend {backend.name} has no per-layer profiler")
    if not _LOCK.acquire(blocking=False):
        raise Unavailable("another profile is running; try again when it has finished")
    try:
        start = time.perf_counter()
        nodes, run_us, feeds, note = run_profile(path, config, batch, WARMUP_RUNS, runs)
        wall = time.perf_counter() - start
    finally:
        _LOCK.release()
    doc = summarize_runs(nodes, run_us, backend.name)
    doc.update(
        batch=batch,
        inputs={k: list(a.shape) for k, a in feeds.items()},
        wall_seconds=round(wall, 3),
        backend=backend.name,
        note=note,
    )
    return doc


def summarize_runs(
    nodes: Mapping[str, tuple[str, list[float]]], run_us: list[float], provider: str
) -> dict[str, Any]:
    """The `summarize` document from per-node µs of each run (node -> (op type, µs per run))."""
    n = len(run_us)
    total = sum(sum(d) for _, d in nodes.values()) / n if nodes else 0.0
    rows: list[dict[str, Any]] = [
        {
            "node": name,
            "op_type": op,
            "layer": name,
            "original_nodes": [name],
            "mean_us": round(sum(d) / n, 2),
            "p50_us": round(statistics.median(d), 2),
            "share": round(sum(d) / n / total, 4) if total else 0.0,
            "calls_per_run": 1.0,
            "provider": provider,
            "order": i,
        }
        for i, (name, (op, d)) in enumerate(nodes.items())
    ]
    rows.sort(key=lambda r: (-r["mean_us"], r["order"]))
    return {
        "runs": n,
        "warmup_runs": WARMUP_RUNS,
        "run_us": _run_stats(run_us),
        "kernel_us": round(total, 2),
        "nodes": rows,
        "op_types": _op_types(rows, total),
    }


def _run_stats(run_us: list[float]) -> dict[str, float]:
    return {
        "mean": round(statistics.fmean(run_us), 2),
        "p50": round(statistics.median(run_us), 2),
        "min": min(run_us),
        "max": max(run_us),
    }


def _op_types(rows: list[dict[str, Any]], total: float) -> list[dict[str, Any]]:
    op_us: dict[str, float] = defaultdict(float)
    op_nodes: dict[str, int] = defaultdict(int)
    for r in rows:
        op_us[r["op_type"]] += r["mean_us"]
        op_nodes[r["op_type"]] += 1
    return [
        {
            "op_type": op,
            "mean_us": round(us, 2),
            "share": round(us / total, 4) if total else 0.0,
            "nodes": op_nodes[op],
        }
        for op, us in sorted(op_us.items(), key=lambda kv: -kv[1])
    ]


def _run_profiled(
    path: Path, config: ModelConfig, batch: int, runs: int, tmp: Path
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], float]:
    from edgeinfer.runtime.onnx import new_session  # the live sessions' exact options

    def profiling(so: Any) -> None:
        so.enable_profiling = True
        so.profile_file_prefix = str(tmp / "profile")

    start = time.perf_counter()
    session = new_session(path, config.onnxruntime, profiling)
    feeds = example_feeds(session.get_inputs(), batch, config, path.parent)
    try:
        for _ in range(WARMUP_RUNS + runs):
            session.run(None, feeds)
    except Exception as e:
        raise InvalidInput(f"{path}: the model failed on example inputs: {e}") from e
    finally:
        trace_file = session.end_profiling()
    wall = time.perf_counter() - start
    events = json.loads(Path(trace_file).read_text())
    return events, feeds, wall


def example_feeds(
    inputs: Iterable[Any], batch: int, config: ModelConfig, version_dir: Path
) -> dict[str, np.ndarray]:
    """Inputs of the declared shapes: the leading variable dimension is `batch`, other variable
    dimensions 1; floats uniform in [0, 1), integers and booleans zero, strings empty. Text
    models ([text] in the config) get the token ids of a short sentence instead."""
    inputs = list(inputs)
    if config.text is not None:
        return _token_feeds(inputs, batch, config, version_dir)
    rng = np.random.default_rng(0)
    feeds = {}
    for node in inputs:
        shape = [
            d if isinstance(d, int) and d >= 0 else (batch if i == 0 else 1)
            for i, d in enumerate(node.shape)
        ]
        if config.max_batch_size and shape and shape[0] != batch:
            raise InvalidInput(f"input '{node.name}' has a fixed batch dimension of {shape[0]}")
        if node.type == "tensor(string)":
            feeds[node.name] = np.full(shape, "", dtype=object)
            continue
        dtype = _NUMPY_OF_ORT.get(node.type)
        if dtype is None:
            raise InvalidInput(
                f"input '{node.name}' has type {node.type}, which cannot be profiled"
            )
        if np.issubdtype(dtype, np.floating):
            feeds[node.name] = rng.random(shape).astype(dtype)
        else:
            feeds[node.name] = np.zeros(shape, dtype=dtype)
    return feeds


def _token_feeds(
    inputs: list[Any], batch: int, config: ModelConfig, version_dir: Path
) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    assert config.text is not None
    tok = Tokenizer.from_file(str(version_dir / config.text.tokenizer))
    tok.enable_truncation(config.text.max_length)
    enc = tok.encode(SAMPLE_TEXT)
    rows: dict[str, list[int]] = {
        "input_ids": enc.ids,
        "attention_mask": enc.attention_mask,
        "token_type_ids": enc.type_ids,
    }
    feeds = {}
    for node in inputs:
        if node.name not in rows:
            raise InvalidInput(f"text model input '{node.name}' is not a tokenizer output")
        row: np.ndarray = np.asarray(rows[node.name], dtype=_NUMPY_OF_ORT.get(node.type, np.int64))
        feeds[node.name] = np.repeat(row[None, :], batch, axis=0)
    return feeds


# ---- the original graph ---------------------------------------------------------------------
@dataclass(frozen=True)
class GraphNode:
    index: int
    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    label: str  # what a person calls it: its name, or doc_string/metadata, or op(output)


def _graph_nodes(path: Path) -> list[GraphNode]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return [_node(i, n) for i, n in enumerate(model.graph.node)]


def _node(index: int, node: Any) -> GraphNode:
    meta = {p.key: p.value for p in node.metadata_props}
    # Exporters that keep the source module put it in metadata (torch dynamo's name scopes).
    scope = meta.get("pkg.torch.onnx.name_scopes") or meta.get("namespace")
    label = node.name.lstrip("/") or scope or (node.doc_string.strip().splitlines() or [""])[0]
    if not label:
        label = f"{node.op_type}({node.output[0] if node.output else index})"
    return GraphNode(index, node.name, node.op_type, tuple(node.input), tuple(node.output), label)


class _Origins:
    """Maps an executed kernel's node name to the original graph nodes it came from."""

    def __init__(self, nodes: list[GraphNode]) -> None:
        self.nodes = nodes
        self.by_name = {n.name: n for n in nodes if n.name}
        # ORT names unnamed nodes "<OpType>_<index in the graph>".
        self.by_auto = {f"{n.op_type}_{n.index}": n for n in nodes if not n.name}
        self.producer = {t: n for n in nodes for t in n.outputs if t}
        self._prefixes = sorted({*self.by_name, *self.producer}, key=len, reverse=True)

    def of(self, name: str, op: str) -> list[GraphNode]:
        clean = name.removeprefix("fused ")
        found = self.by_name.get(clean) or self.by_auto.get(clean)
        if found is None:
            # ORT builds new names from old ones plus a suffix: "<tensor>_nchwc", "<node>_1".
            prefix = next(
                (
                    p
                    for p in self._prefixes
                    if clean.startswith(p) and clean[len(p) : len(p) + 1] in ("", "_")
                ),
                None,
            )
            if prefix is None:
                return []
            found = self.by_name.get(prefix) or self.producer[prefix]
        chain = [found]
        # A fused kernel is often named after the last node it absorbed (Conv+Relu is named
        # after the Relu): walk up single producers to the node of the kernel's own op type.
        node = found
        for _ in range(3):
            if _same_op(node.op_type, op):
                return chain
            parents = [self.producer[t] for t in node.inputs if t in self.producer]
            if len(parents) != 1:
                break
            node = parents[0]
            chain.insert(0, node)
        return chain if _same_op(node.op_type, op) else [found]


def _same_op(original: str, executed: str) -> bool:
    return original == executed or executed.endswith(original)  # Conv ~ FusedConv


# ---- summarizing ----------------------------------------------------------------------------
def summarize(
    events: list[dict[str, Any]],
    nodes: list[GraphNode] | None = None,
    warmup_runs: int = WARMUP_RUNS,
) -> dict[str, Any]:
    """Aggregate a profile trace: per node, mean and median µs per measured run and share of
    the kernel time; per op type, mean µs and share. `run_us` is the whole `model_run` (kernels
    plus executor overhead)."""
    runs = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
        key=lambda e: e["ts"],
    )
    measured = runs[warmup_runs:]
    if not measured:
        raise ValueError(f"profile has {len(runs)} runs; nothing left after {warmup_runs} warm-up")
    n = len(measured)
    times = _node_times(events, measured)
    total = sum(sum(t.durs) for t in times.values()) / n
    origins = _Origins(nodes or [])
    rows = [_node_row(name, t, n, total, origins) for name, t in times.items()]
    rows.sort(key=lambda r: (-r["mean_us"], r["order"]))
    return {
        "runs": n,
        "warmup_runs": min(warmup_runs, len(runs)),
        "run_us": _run_stats([float(r["dur"]) for r in measured]),
        "kernel_us": round(total, 2),
        "nodes": rows,
        "op_types": _op_types(rows, total),
    }


@dataclass
class _NodeTimes:
    durs: list[float]  # µs in each measured run
    order: int  # when the node first ran, among the others
    calls: int = 0
    op: str = "?"
    provider: str = ""


def _node_times(
    events: list[dict[str, Any]], measured: list[dict[str, Any]]
) -> dict[str, _NodeTimes]:
    """Each node's kernel time in every measured run; kernels of warm-up runs are left out."""
    n = len(measured)
    starts = [r["ts"] for r in measured]
    ends = [r["ts"] + r["dur"] for r in measured]
    out: dict[str, _NodeTimes] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith(_KERNEL_SUFFIX):
            continue
        run = bisect.bisect_right(starts, e["ts"]) - 1
        if run < 0 or e["ts"] > ends[run]:
            continue  # a warm-up run
        name = e["name"][: -len(_KERNEL_SUFFIX)]
        args = e.get("args", {})
        if name not in out:
            out[name] = _NodeTimes([0.0] * n, len(out))
        t = out[name]
        t.durs[run] += float(e["dur"])
        t.calls += 1
        t.op = args.get("op_name", "?")
        t.provider = args.get("provider", "")
    return out


def _node_row(name: str, t: _NodeTimes, n: int, total: float, origins: _Origins) -> dict[str, Any]:
    mean = sum(t.durs) / n
    from_nodes = origins.of(name, t.op)
    return {
        "node": name,
        "op_type": t.op,
        "layer": " + ".join(o.label for o in from_nodes) or name,
        "original_nodes": [o.name or o.label for o in from_nodes],
        "mean_us": round(mean, 2),
        # The median resists the outliers a busy machine adds to the mean.
        "p50_us": round(statistics.median(t.durs), 2),
        "share": round(mean / total, 4) if total else 0.0,
        "calls_per_run": round(t.calls / n, 2),
        "provider": t.provider,
        "order": t.order,
    }


# ---- rendering ------------------------------------------------------------------------------
def render(profile: Mapping[str, Any], top: int = 15, markdown: bool = False) -> str:
    """The top `top` nodes and the per-op-type shares as a text (or Markdown) table."""
    head = (
        f"{profile.get('model', '?')} v{profile.get('version', '?')}: batch "
        f"{profile.get('batch', '?')}, {profile['runs']} runs; model_run mean "
        f"{profile['run_us']['mean']:.1f} µs (p50 {profile['run_us']['p50']:.1f}), "
        f"kernels {profile['kernel_us']:.1f} µs"
    )
    if profile.get("note"):
        head += f"\n{profile['note']}"
    nodes = [
        (r["layer"], r["op_type"], f"{r['mean_us']:.1f}", f"{r['p50_us']:.1f}", f"{r['share']:.1%}")
        for r in profile["nodes"][:top]
    ]
    ops = [
        (r["op_type"], str(r["nodes"]), f"{r['mean_us']:.1f}", f"{r['share']:.1%}")
        for r in profile["op_types"]
    ]
    more = len(profile["nodes"]) - top
    parts = [head, "", _table(("layer", "op", "mean µs", "p50 µs", "share"), nodes, markdown)]
    if more > 0:
        parts.append(f"... and {more} more nodes")
    parts += ["", _table(("op type", "nodes", "mean µs", "share"), ops, markdown)]
    return "\n".join(parts)


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]], markdown: bool) -> str:
    numeric = [i > 0 for i in range(len(header))]  # first column text, the rest numbers
    if markdown:
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---:" if num else "---" for num in numeric) + "|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    out = []
    for r in (header, *rows):
        cells = [
            c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric, strict=True)
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)

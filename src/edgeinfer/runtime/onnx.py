"""ONNX Runtime backend: one InferenceSession per loaded version."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.config import ModelConfig, OrtOptions
from edgeinfer.errors import BackendError, InvalidInput, LoadError
from edgeinfer.hardware import default_threads, read_topology
from edgeinfer.hardware.sched import in_niced_thread, set_thread_nice
from edgeinfer.runtime import example_feeds, repeat, warm_up
from edgeinfer.runtime.memory import release_free_memory
from edgeinfer.types import TensorSpec

_ORT_TYPES = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}


def _spec(node: Any) -> TensorSpec:
    dtype = _ORT_TYPES.get(node.type)
    if dtype is None:
        raise LoadError(f"tensor {node.name} has unsupported type {node.type}")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
    return TensorSpec(node.name, dtype, shape)


def placement(opts: OrtOptions, root: str = "/") -> tuple[int, tuple[int, ...]]:
    """(intra-op threads, CPUs to pin to). Thread count 0 means: what the device allows (the
    cgroup CPU quota, big cores only on big.LITTLE), never os.cpu_count() of a big host."""
    cpus = opts.cpus
    if not cpus:
        topo = read_topology(root)
        cpus = topo.big if topo.heterogeneous else ()
    threads = opts.intra_op_threads or (len(cpus) if cpus else default_threads(root))
    return threads, cpus


def session_options(opts: OrtOptions, root: str = "/") -> Any:
    import onnxruntime as ort

    threads, cpus = placement(opts, root)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if cpus and threads > 1:
        # One entry per extra thread (the caller's thread is the first): each may use the set.
        so.add_session_config_entry(
            "session.intra_op_thread_affinities",
            ";".join(",".join(str(c + 1) for c in cpus) for _ in range(threads - 1)),
        )
    so.inter_op_num_threads = opts.inter_op_threads
    so.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL
        if opts.execution_mode == "parallel"
        else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[opts.graph_optimization_level]
    so.enable_cpu_mem_arena = opts.enable_cpu_mem_arena
    so.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if opts.allow_spinning else "0"
    )
    so.add_session_config_entry(
        "session.inter_op.allow_spinning", "1" if opts.allow_spinning else "0"
    )
    so.log_severity_level = 3
    return so


def new_session(model: Path | bytes, opts: OrtOptions, configure: Any = None) -> Any:
    """The one ONNX Runtime session factory: the serving options, the CPU provider.
    `configure(so)` may adjust the options first (profiling, saving the optimized graph).
    A path lets ORT mmap external data instead of copying bytes."""
    import onnxruntime as ort

    so = session_options(opts)
    if configure is not None:
        configure(so)
    where = "model" if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(
            model if isinstance(model, bytes) else str(model),
            so,
            providers=["CPUExecutionProvider"],
        )
    except Exception as e:  # ORT raises several unrelated exception types
        raise LoadError(f"{where}: ONNX Runtime could not load the model: {e}") from e


def load_instances(path: Path, config: ModelConfig) -> list[Any]:
    """The backend entry point (runtime.BACKENDS): one session per instance; a LoRA-ready graph
    (`lora.json` beside it, written by `edgeinfer adapters convert`) takes adapters per run."""
    version_dir = path.parent
    if path.name != "model.onnx":
        raise LoadError(f"{path}: ONNX Runtime serves model.onnx")
    if not (version_dir / "lora.json").is_file():
        return repeat(lambda: OnnxModel.load(version_dir, config), config.instance_count)
    from edgeinfer.runtime.lora_onnx import LoraOnnxModel, LoraSpec

    spec = LoraSpec.read(version_dir)
    assert spec is not None
    return repeat(
        lambda: LoraOnnxModel(OnnxModel.load(version_dir, config), spec), config.instance_count
    )


_pinned = threading.local()
_ALL_CPUS = frozenset(os.sched_getaffinity(0))


def _pin_thread(cpus: frozenset[int]) -> None:
    """Pin the calling worker thread, which runs the model's first intra-op thread. Worker
    threads are shared by models: an unpinned model unpins a thread a pinned one left behind."""
    current = getattr(_pinned, "cpus", _ALL_CPUS)
    wanted = cpus or _ALL_CPUS
    if current != wanted:
        with contextlib.suppress(OSError):  # CPUs outside this container's set: stay as is
            os.sched_setaffinity(0, wanted)
        _pinned.cpus = wanted


def _on_event_loop() -> bool:
    """True on a thread running an asyncio loop (a tiny model runs inline there: never nice it)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _to_str(name: str, arr: np.ndarray) -> np.ndarray:
    """ORT string tensors take Python str; KServe BYTES arrive as bytes."""
    try:
        return np.vectorize(
            lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v), otypes=[object]
        )(arr)
    except UnicodeDecodeError as e:
        raise InvalidInput(f"input '{name}': string tensor holds invalid UTF-8: {e}") from e


def _to_bytes(arr: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda v: v.encode("utf-8") if isinstance(v, str) else v, otypes=[object])(
        arr
    )


class OnnxModel:
    platform = "onnxruntime_onnx"

    def __init__(self, session: Any, path: Path, cpus: tuple[int, ...] = (), nice: int = 0) -> None:
        self._session = session
        self.path = path
        self._cpus = frozenset(cpus)
        self._nice = nice
        self.inputs = tuple(_spec(i) for i in session.get_inputs())
        self.outputs = tuple(_spec(o) for o in session.get_outputs())
        self._output_names = [o.name for o in self.outputs]
        self._string_inputs = {s.name for s in self.inputs if s.datatype == "BYTES"}
        self._string_outputs = {s.name for s in self.outputs if s.datatype == "BYTES"}

    @classmethod
    def load(cls, version_dir: Path, config: ModelConfig) -> OnnxModel:
        path = version_dir / "model.onnx"
        if not path.is_file():
            raise LoadError(f"{version_dir}: no model.onnx")
        opts = config.onnxruntime
        if opts.intra_op_threads == 0 and config.instance_count > 1:
            # Instances run batches at once: share the usable CPUs instead of oversubscribing.
            share = max(1, placement(opts)[0] // config.instance_count)
            opts = replace(opts, intra_op_threads=share)
        # ORT starts the session's intra-op threads now; they inherit the creating thread's nice.
        session = in_niced_thread(opts.nice, lambda: new_session(path, opts))
        return cls(session, path, placement(opts)[1], opts.nice)

    def run(
        self,
        feeds: dict[str, np.ndarray],
        output_names: list[str] | None = None,
        run_options: Any = None,
    ) -> dict[str, np.ndarray]:
        """`run_options`: an ort.RunOptions (e.g. with an active LoRA adapter)."""
        names = output_names or self._output_names
        if self._cpus or getattr(_pinned, "cpus", None) is not None:
            _pin_thread(self._cpus)
        if self._nice != getattr(_pinned, "nice", 0) and not _on_event_loop():
            set_thread_nice(self._nice)  # the worker thread runs the first intra-op thread
            _pinned.nice = self._nice
        if self._string_inputs:
            feeds = {k: _to_str(k, v) if k in self._string_inputs else v for k, v in feeds.items()}
        try:
            results = self._session.run(names, feeds, run_options)
        except Exception as e:
            raise BackendError(f"ONNX Runtime failed: {e}") from e
        out = dict(zip(names, results, strict=True))
        for name in self._string_outputs.intersection(out):
            out[name] = _to_bytes(out[name])
        return out

    def example_feeds(self, batch: int = 1) -> dict[str, np.ndarray]:
        return example_feeds(self.inputs, batch)

    def warmup(self) -> None:
        warm_up(self, self.path)

    def close(self) -> None:
        self._session = None  # the last reference: ORT frees the session here
        release_free_memory()

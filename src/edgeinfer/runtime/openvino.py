"""OpenVINO backend: one compiled model per loaded version; each instance is one of its infer
requests, so instances share the weights and run on the compiled model's streams.

Reads OpenVINO IR (`model.xml` + `model.bin`, mmapped) or ONNX (`model.onnx` with `backend =
"openvino"`). The compiled-model cache (`[openvino] cache_dir`, default `$EDGEINFER_HOME/openvino`)
lets a second start of the same version skip compilation.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.config import ModelConfig, OpenVinoOptions, edgeinfer_home
from edgeinfer.errors import BackendError, LoadError
from edgeinfer.hardware import threads_per_instance
from edgeinfer.runtime import example_feeds, warm_up
from edgeinfer.runtime.memory import release_free_memory
from edgeinfer.types import TensorSpec

log = logging.getLogger("edgeinfer.runtime.openvino")

_TYPES = {
    "f32": "FP32",
    "f16": "FP16",
    "f64": "FP64",
    "i8": "INT8",
    "i16": "INT16",
    "i32": "INT32",
    "i64": "INT64",
    "u8": "UINT8",
    "u16": "UINT16",
    "u32": "UINT32",
    "u64": "UINT64",
    "boolean": "BOOL",
    "string": "BYTES",
}
_core: Any = None
_core_lock = threading.Lock()


def core() -> Any:
    """The process's one ov.Core (it owns the plugins and their thread pools)."""
    global _core
    with _core_lock:
        if _core is None:
            import openvino as ov

            _core = ov.Core()
        return _core


def _spec(port: Any) -> TensorSpec:
    kind = port.get_element_type().get_type_name()
    dtype = _TYPES.get(kind)
    name = port.get_any_name()
    if dtype is None:
        raise LoadError(f"tensor {name} has unsupported type {kind}")
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic:
        raise LoadError(f"tensor {name} has a dynamic rank, which a served model cannot have")
    return TensorSpec(name, dtype, tuple(d.get_length() if d.is_static else -1 for d in shape))


def cache_dir(opts: OpenVinoOptions) -> Path | None:
    if opts.cache_dir == "off":
        return None
    return Path(opts.cache_dir) if opts.cache_dir else edgeinfer_home() / "openvino"


def compile_properties(opts: OpenVinoOptions, instances: int) -> dict[str, str]:
    """Properties for compile_model. Under the latency hint each instance gets a stream of its
    own (else two infer requests would take turns on one); threads count per stream, 0: the
    usable cores shared among the streams."""
    streams = opts.num_streams or (instances if opts.hint == "latency" else 0)
    threads = opts.intra_op_threads or threads_per_instance(streams)
    props = {"PERFORMANCE_HINT": opts.hint.upper()}
    if streams:
        props["NUM_STREAMS"] = str(streams)
        props["INFERENCE_NUM_THREADS"] = str(threads * streams)
    if opts.inference_precision:
        props["INFERENCE_PRECISION_HINT"] = opts.inference_precision
    cache = cache_dir(opts)
    if cache is not None:
        props["CACHE_DIR"] = str(cache)
    return props


def compile_model(path: Path, config: ModelConfig, extra: dict[str, str] | None = None) -> Any:
    """Compile `path` for the CPU. A path (not a read model) lets a cached blob skip reading
    and compiling; a model whose batch axis is fixed is read and given a dynamic one first."""
    props = {**compile_properties(config.openvino, config.instance_count), **(extra or {})}
    try:
        compiled = core().compile_model(str(path), "CPU", props)
        if config.max_batch_size > 0 and any(_fixed_batch(p) for p in compiled.inputs):
            model = core().read_model(str(path))
            model.reshape({p.get_any_name(): _batch_dynamic(p) for p in model.inputs})
            compiled = core().compile_model(model, "CPU", props)
    except Exception as e:  # OpenVINO raises RuntimeError and its own exception types
        raise LoadError(f"{path}: OpenVINO could not compile the model: {e}") from e
    return compiled


def _fixed_batch(port: Any) -> bool:
    shape = port.get_partial_shape()
    return shape.rank.is_static and len(shape) > 0 and shape[0].is_static


def _batch_dynamic(port: Any) -> Any:
    import openvino as ov

    shape = port.get_partial_shape()
    return ov.PartialShape([ov.Dimension(), *list(shape)[1:]])


@dataclass
class _Compiled:
    """The compiled model its instances share (released with the last of them)."""

    compiled: Any
    path: Path


class OpenVinoModel:
    platform = "openvino"

    def __init__(self, shared: _Compiled) -> None:
        self._shared = shared
        self.path = shared.path
        self._request = shared.compiled.create_infer_request()
        self.inputs = tuple(_spec(p) for p in shared.compiled.inputs)
        self.outputs = tuple(_spec(p) for p in shared.compiled.outputs)
        self._output_names = [s.name for s in self.outputs]
        self._strings = {s.name for s in self.outputs if s.datatype == "BYTES"}

    def run(
        self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = output_names or self._output_names
        try:
            # share_inputs: no copy of contiguous numpy inputs; outputs are copied out.
            result = self._request.infer(feeds, share_inputs=True, decode_strings=False)
            out = {name: result[name] for name in names}
        except Exception as e:
            raise BackendError(f"OpenVINO failed: {e}") from e
        for name in self._strings.intersection(out):
            out[name] = out[name].astype(object)
        return out

    def profile(self) -> list[Any]:
        """Per-layer counters of the last run (needs PERF_COUNT at compile time)."""
        return list(self._request.get_profiling_info())

    def warmup(self) -> None:
        warm_up(self, self.path)

    def close(self) -> None:
        self._request = None
        self._shared = None  # type: ignore[assignment]  # the last instance frees the model
        release_free_memory()


def load_instances(path: Path, config: ModelConfig) -> list[OpenVinoModel]:
    """The backend entry point (runtime.BACKENDS): one compiled model, `instance_count` infer
    requests on it."""
    shared = _Compiled(compile_model(path, config), path)
    return [OpenVinoModel(shared) for _ in range(config.instance_count)]


def profile(
    path: Path, config: ModelConfig, batch: int, warmup: int, runs: int
) -> tuple[dict[str, tuple[str, list[float]]], list[float], dict[str, np.ndarray], str]:
    """Per-layer µs of each measured run from the CPU plugin's performance counters, on a
    compiled model of its own (the serving one is not touched)."""
    compiled = compile_model(path, replace(config, instance_count=1), {"PERF_COUNT": "YES"})
    request = compiled.create_infer_request()
    feeds = example_feeds(tuple(_spec(p) for p in compiled.inputs), batch)
    nodes: dict[str, tuple[str, list[float]]] = {}
    run_us: list[float] = []
    try:
        for i in range(warmup + runs):
            start = time.perf_counter()
            request.infer(feeds, share_inputs=True)
            if i < warmup:
                continue
            run_us.append((time.perf_counter() - start) * 1e6)
            for info in request.get_profiling_info():
                if info.status == info.Status.EXECUTED:
                    kind = f"{info.node_type} ({info.exec_type})"
                    nodes.setdefault(info.node_name, (kind, []))[1].append(
                        info.real_time.total_seconds() * 1e6
                    )
    except Exception as e:
        raise BackendError(f"OpenVINO failed while profiling: {e}") from e
    return nodes, run_us, feeds, "OpenVINO CPU plugin performance counters (real time per layer)"

"""LiteRT backend (`ai-edge-litert`, the successor of tflite-runtime): `.tflite` models, one
Interpreter per instance (an Interpreter is not thread-safe; `invoke` releases the GIL).

- The file is checked before LiteRT sees it (flatbuffer identifier `TFL3`, root offset and size):
  a truncated file can crash the native loader instead of raising. LiteRT mmaps the file.
- `num_threads` is always passed: LiteRT's default is 1 whatever its docstring says.
- Batching: with `max_batch_size > 0` the batch axis is resized per run when the model allows
  it (probed at load); a model that refuses (a hard-coded Reshape) runs one row at a time.
- Quantized int8/uint8 inputs and outputs are served as such; their scale and zero point are
  in the model config's parameters (`<tensor>.scale`, `<tensor>.zero_point`), and
  `[litert] dequantize_outputs = true` returns FP32 instead.
- Models with signatures are run through a signature runner: inputs and outputs by the
  signature's names (`[litert] signature` picks one; default the first).
"""

from __future__ import annotations

import logging
import mmap
import struct
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.config import ModelConfig
from edgeinfer.errors import BackendError, LoadError
from edgeinfer.hardware import threads_per_instance
from edgeinfer.runtime import Model, example_feeds, repeat, warm_up
from edgeinfer.runtime.memory import release_free_memory
from edgeinfer.types import NUMPY_TO_DTYPE, TensorSpec

log = logging.getLogger("edgeinfer.runtime.litert")

IDENTIFIER = b"TFL3"
_MIN_SIZE = 16  # root offset, identifier, and at least a vtable


def check_file(path: Path) -> None:
    """Refuse what is not a whole TFLite flatbuffer before the native loader reads it: the
    identifier, then every subgraph and buffer read with bounds checks (through an mmap, so a
    large model is not copied)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if size < _MIN_SIZE or head[4:8] != IDENTIFIER:
                raise LoadError(f"{path}: not a TFLite model (no {IDENTIFIER.decode()} identifier)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                _walk(buf, size)
    except OSError as e:
        raise LoadError(f"{path}: cannot read: {e.strerror}") from e
    except (struct.error, IndexError, ValueError, TypeError) as e:
        raise LoadError(f"{path}: truncated or corrupt TFLite model ({size} bytes): {e}") from e


def _walk(buf: Any, size: int) -> None:
    from ai_edge_litert import schema_py_generated as fb

    model = fb.Model.GetRootAs(buf, 0)
    if model.SubgraphsLength() < 1:
        raise ValueError("no subgraphs")
    model.Description()
    for i in range(model.OperatorCodesLength()):
        model.OperatorCodes(i).BuiltinCode()
    for i in range(model.SignatureDefsLength()):
        sig = model.SignatureDefs(i)
        sig.SignatureKey()
        for j in range(sig.InputsLength()):
            sig.Inputs(j).Name()
        for j in range(sig.OutputsLength()):
            sig.Outputs(j).Name()
    for i in range(model.SubgraphsLength()):
        sg = model.Subgraphs(i)
        sg.Name()
        for t in range(sg.TensorsLength()):
            sg.Tensors(t).Name()
            sg.Tensors(t).ShapeAsNumpy()
        for o in range(sg.OperatorsLength()):
            sg.Operators(o).InputsAsNumpy()
    for i in range(model.BuffersLength()):
        b = model.Buffers(i)
        if b.DataLength():
            b.DataAsNumpy()  # a view: raises ValueError past the end of the file
        if b.Offset() > 1 and b.Offset() + b.Size() > size:  # data stored after the flatbuffer
            raise ValueError(f"buffer {i} ends past the end of the file")


def _quant(detail: dict[str, Any]) -> tuple[float, int] | None:
    scale, zero = detail.get("quantization", (0.0, 0))
    if detail["dtype"] not in (np.int8, np.uint8) or not scale:
        return None
    return float(scale), int(zero)


class LiteRtModel:
    platform = "litert_tflite"

    def __init__(self, path: Path, config: ModelConfig) -> None:
        self.path = path
        self._config = config
        self._threads = config.litert.intra_op_threads or threads_per_instance(
            config.instance_count
        )
        self._interp = self._open()
        self._batch = config.max_batch_size > 0 and self._resizable()
        if config.max_batch_size > 0 and not self._batch:
            log.info("%s: the batch axis cannot be resized; runs of one row", path)
            self._interp = self._open()  # a refused resize can leave it unprepared
        self._setup()

    def _open(self) -> Any:
        from ai_edge_litert.interpreter import Interpreter

        try:
            interp = Interpreter(model_path=str(self.path), num_threads=self._threads)
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise LoadError(f"{self.path}: LiteRT could not load the model: {e}") from e
        return interp

    def _signature(self) -> str | None:
        signatures = list(self._interp.get_signature_list())
        wanted = self._config.litert.signature
        if wanted and wanted not in signatures:
            raise LoadError(f"{self.path}: no signature {wanted!r}; it has {signatures}")
        return wanted or (signatures[0] if signatures else None)

    def _io(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(inputs, outputs): name -> tensor details, by signature names when there is one."""
        key = self._signature()
        if key is None:
            ins = {d["name"]: d for d in self._interp.get_input_details()}
            return ins, {d["name"]: d for d in self._interp.get_output_details()}
        runner = self._interp.get_signature_runner(key)
        return runner.get_input_details(), runner.get_output_details()

    def _resizable(self) -> bool:
        """Whether every input takes a batch of 2 (then any batch): probe it once."""
        ins, _ = self._io()
        try:
            for d in ins.values():
                if len(d["shape"]) == 0:
                    return False
                self._interp.resize_tensor_input(d["index"], [2, *d["shape"][1:]])
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError):
            return False
        return True

    def _setup(self) -> None:
        key = self._signature()
        self._runner = self._interp.get_signature_runner(key) if key is not None else None
        ins, outs = self._io()
        self._in = ins
        self._out = outs
        dequant = self._config.litert.dequantize_outputs
        self.parameters: dict[str, str] = {}
        self._dequant: dict[str, tuple[float, int]] = {}
        for name, d in (*ins.items(), *outs.items()):
            q = _quant(d)
            if q is not None:
                self.parameters[f"{name}.scale"] = repr(q[0])
                self.parameters[f"{name}.zero_point"] = str(q[1])
                if dequant and name in outs:
                    self._dequant[name] = q
        self.inputs = tuple(self._spec(n, d) for n, d in ins.items())
        self.outputs = tuple(self._spec(n, d, n in self._dequant) for n, d in outs.items())
        first = next(iter(ins.values()), None)  # the batch the interpreter is sized for now
        self._rows = int(first["shape"][0]) if first is not None and len(first["shape"]) else 1

    def _spec(self, name: str, d: dict[str, Any], fp32: bool = False) -> TensorSpec:
        dtype = "FP32" if fp32 else NUMPY_TO_DTYPE.get(np.dtype(d["dtype"]))
        if dtype is None or dtype == "BYTES":
            raise LoadError(f"{self.path}: tensor {name} has unsupported type {d['dtype']}")
        shape = [int(x) for x in d.get("shape_signature", d["shape"])]
        if self._batch and shape:
            shape[0] = -1
        return TensorSpec(name, dtype, tuple(shape))

    def run(
        self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = output_names or list(self._out)
        rows = next(iter(feeds.values())).shape[0] if feeds and self.inputs[0].shape else 1
        fixed = self._config.max_batch_size > 0 and not self._batch and rows > 1
        try:
            if fixed:  # the model takes one row: run each row, stack the results
                parts = [
                    self._invoke({k: v[i : i + 1] for k, v in feeds.items()}) for i in range(rows)
                ]
                out = {n: np.concatenate([p[n] for p in parts]) for n in names}
            else:
                result = self._invoke(feeds)
                out = {n: result[n] for n in names}
        except (ValueError, RuntimeError) as e:
            raise BackendError(f"LiteRT failed: {e}") from e
        for name in self._dequant.keys() & out.keys():
            scale, zero = self._dequant[name]
            out[name] = (out[name].astype(np.float32) - zero) * np.float32(scale)
        return out

    def _invoke(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._runner is not None:  # resizes and allocates when a shape changes
            result: dict[str, np.ndarray] = self._runner(**feeds)
            return result
        interp = self._interp
        rows = next(iter(feeds.values())).shape[0] if self._batch else self._rows
        if rows != self._rows:
            for name, d in self._in.items():
                interp.resize_tensor_input(d["index"], list(feeds[name].shape))
            interp.allocate_tensors()
            self._rows = rows
        for name, d in self._in.items():
            interp.set_tensor(d["index"], feeds[name])
        interp.invoke()
        return {name: interp.get_tensor(d["index"]) for name, d in self._out.items()}

    def warmup(self) -> None:
        warm_up(self, self.path)

    def close(self) -> None:
        self._runner = None
        self._interp = None
        release_free_memory()


def load_instances(path: Path, config: ModelConfig) -> list[Model]:
    """The backend entry point (runtime.BACKENDS): one Interpreter per instance."""
    check_file(path)
    return repeat(lambda: LiteRtModel(path, config), config.instance_count)


def profile(
    path: Path, config: ModelConfig, batch: int, warmup: int, runs: int
) -> tuple[dict[str, tuple[str, list[float]]], list[float], dict[str, np.ndarray], str]:
    """Whole-run µs only: LiteRT's Python API exposes no per-op profiler."""
    check_file(path)
    model = LiteRtModel(path, replace(config, instance_count=1))
    feeds = example_feeds(model.inputs, batch)
    run_us: list[float] = []
    try:
        for i in range(warmup + runs):
            start = time.perf_counter()
            model.run(feeds)
            if i >= warmup:
                run_us.append((time.perf_counter() - start) * 1e6)
    finally:
        model.close()
    return {}, run_us, feeds, "LiteRT's Python API exposes no per-op profiler: whole runs only"

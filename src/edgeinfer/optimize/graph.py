"""Offline graph optimization: ONNX Runtime applies its graph transformations once and saves
the result (`SessionOptions.optimized_model_filepath`), so serving skips that work at load."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from edgeinfer.config import OrtOptions
from edgeinfer.optimize.source import OptimizeError

LEVELS = ("basic", "extended", "all")


def optimize_graph(src: Path, dst: Path, level: str, opts: OrtOptions) -> None:
    import onnxruntime as ort

    from edgeinfer.runtime.onnx import session_options

    if level not in LEVELS:
        raise OptimizeError(f"--level must be one of {', '.join(LEVELS)}, not {level!r}")
    so = session_options(replace(opts, graph_optimization_level=level))
    so.optimized_model_filepath = str(dst)
    try:
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise OptimizeError(f"{src}: ONNX Runtime cannot load it: {e}") from e
    if not dst.is_file():
        raise OptimizeError(f"{src}: ONNX Runtime wrote no optimized model")

"""Offline graph optimization: ONNX Runtime applies its graph transformations once and saves
the result (`SessionOptions.optimized_model_filepath`), so serving skips that work at load."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeinfer.config import OrtOptions
from edgeinfer.optimize.source import OptimizeError

LEVELS = ("basic", "extended", "all")


def optimize_graph(src: Path, dst: Path, level: str, opts: OrtOptions) -> None:
    from edgeinfer.errors import LoadError
    from edgeinfer.runtime.onnx import new_session

    if level not in LEVELS:
        raise OptimizeError(f"--level must be one of {', '.join(LEVELS)}, not {level!r}")

    def save_optimized(so: Any) -> None:
        so.optimized_model_filepath = str(dst)

    try:
        new_session(src, replace(opts, graph_optimization_level=level), save_optimized)
    except LoadError as e:
        raise OptimizeError(e.message) from e
    if not dst.is_file():
        raise OptimizeError(f"{src}: ONNX Runtime wrote no optimized model")

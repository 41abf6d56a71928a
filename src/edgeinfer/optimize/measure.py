"""Size, latency and throughput of the FP32 and optimized models, measured in the same run with
the same session options, in alternating rounds so a busy neighbour hits both alike."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.config import OrtOptions
from edgeinfer.optimize.data import Dataset
from edgeinfer.optimize.source import new_session
from edgeinfer.types import DTYPE_TO_NUMPY, TensorSpec

ROUNDS = 3


def peak_rss_mb() -> float:
    """This process's peak resident set size so far. Linux's VmHWM, because ru_maxrss keeps
    the parent's peak across fork+exec (a CLI started by a big process would report that)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)


def sample_feeds(
    inputs: tuple[TensorSpec, ...], data: Dataset | None, batch: int
) -> tuple[dict[str, np.ndarray], str]:
    """Feeds of `batch` samples: from `data` (rows repeated if it has fewer), else synthetic
    (normal floats, ones for integers) of the declared shapes, whose fixed dimensions win."""
    if data is not None and data.fixed_batch in (None, batch):
        feeds = next(data.batches(batch))
        n = len(next(iter(feeds.values())))
        return {
            k: np.resize(v, (batch, *v.shape[1:])) if n < batch else v for k, v in feeds.items()
        }, "data"
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in inputs:
        # a fixed first dimension (a model exported for batch 1) is kept: it accepts no other
        shape = [d if d > 0 else (batch if i == 0 else 1) for i, d in enumerate(spec.shape)]
        dtype = DTYPE_TO_NUMPY[spec.datatype]
        if dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[spec.name] = np.ones(shape, dtype)
    return feeds, "synthetic"


def _time(session: Any, feeds: dict[str, np.ndarray], seconds: float) -> list[float]:
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return times


def benchmark(
    models: dict[str, Path],
    opts: OrtOptions,
    feeds_1: dict[str, np.ndarray],
    feeds_n: dict[str, np.ndarray],
    seconds: float,
) -> dict[str, dict[str, float]]:
    """Per model: p50 latency at batch 1 (ms) and throughput at batch n (samples/s, the median
    of the rounds). `seconds` is the time budget per model and batch size."""
    batch = len(next(iter(feeds_n.values())))
    sessions = {name: new_session(path, opts) for name, path in models.items()}
    for s in sessions.values():  # warm-up: first runs allocate and pick kernels
        s.run(None, feeds_1)
        s.run(None, feeds_n)
    lat: dict[str, list[float]] = {name: [] for name in models}
    tput: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(ROUNDS):
        for name, s in sessions.items():
            lat[name] += _time(s, feeds_1, seconds / ROUNDS)
            t = _time(s, feeds_n, seconds / ROUNDS)
            tput[name].append(batch * len(t) / sum(t))
    return {
        name: {
            "latency_b1_ms": round(statistics.median(lat[name]) * 1e3, 3),
            f"throughput_b{batch}": round(statistics.median(tput[name]), 1),
        }
        for name in models
    }


def file_size(path: Path) -> int:
    """The model file plus any external-data files beside it that it names."""
    import onnx

    size = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    seen = set()
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location" and entry.value not in seen:
                seen.add(entry.value)
                ext = path.parent / entry.value
                if ext.is_file():
                    size += ext.stat().st_size
    return size

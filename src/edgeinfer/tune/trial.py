"""One tuning trial, run in a child process: load a candidate through the server's own loading,
scheduler and backend code, drive it at each client concurrency and print the measurements.

A child per trial keeps trials apart (memory, threads, a backend that crashes or hangs) and lets
the parent abandon one that overruns its time limit. Input (stdin, JSON): see `TrialSpec`.
Output (stdout, one JSON line): {"levels": [...], "rss_peak_bytes": N, "load_s": S}.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.config import ModelConfig
from edgeinfer.lifecycle.models import LoadedVersion, load_version
from edgeinfer.optimize.data import open_dataset
from edgeinfer.optimize.source import resolve_source
from edgeinfer.repository import VersionEntry
from edgeinfer.serving.runner import Runner
from edgeinfer.tune.served import kill_with_parent, read_requests, write_requests
from edgeinfer.tune.space import apply_overrides
from edgeinfer.types import DTYPE_TO_NUMPY, TensorSpec


@dataclass(frozen=True)
class TrialSpec:
    model: str
    version: int
    version_dir: str
    config_path: str
    overrides: dict[str, Any]
    source_dir: str  # the version being tuned (for --eval data and its preprocessing)
    eval_path: str | None  # requests are made from this data; else synthetic ones
    samples: int  # distinct requests, the same in every trial
    outputs_path: str  # where the outputs on the samples are written (pickle)
    concurrency: list[int]
    seconds: float
    repetitions: int
    warmup_s: float
    requests_dir: str | None = None  # the samples as HTTP requests go here, once per run


async def _drive(
    lv: LoadedVersion, samples: list[dict[str, np.ndarray]], clients: int, seconds: float
) -> tuple[int, float, list[float]]:
    """`clients` closed-loop clients for `seconds`: (completed, elapsed, latencies in s)."""
    assert lv.scheduler is not None
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def client(k: int) -> None:
        i = k
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            await lv.scheduler.submit(samples[i % len(samples)])  # type: ignore[union-attr]
            latencies.append(time.perf_counter() - t0)
            i += clients

    start = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    return len(latencies), time.perf_counter() - start, latencies


def level(concurrency: int, rates: list[float], seconds: list[float]) -> dict[str, Any]:
    """One concurrency's result: the median rate over repetitions and their spread, and the
    p50/p99 of the latencies (request latency, or time to first token for an LLM)."""
    ms = np.asarray(seconds or [float("nan")]) * 1e3
    mid = float(np.median(rates))
    return {
        "concurrency": concurrency,
        "throughput": mid,
        "spread": float((max(rates) - min(rates)) / max(mid, 1e-9)),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "requests": len(seconds),
    }


async def _measure(
    spec: TrialSpec, lv: LoadedVersion, samples: list[dict[str, np.ndarray]]
) -> list[dict[str, Any]]:
    lv.start(Runner())
    levels = []
    try:
        for clients in spec.concurrency:
            await _drive(lv, samples, clients, spec.warmup_s)
            rates, lat = [], []
            for _ in range(spec.repetitions):
                n, elapsed, got = await _drive(lv, samples, clients, spec.seconds)
                rates.append(n / elapsed)
                lat += got
            levels.append(level(clients, rates, lat))
    finally:
        await lv.close(drain=False)
    return levels


async def _measure_llm(
    spec: TrialSpec, lv: LoadedVersion
) -> tuple[list[dict[str, Any]], list[dict[str, np.ndarray]]]:
    """Tokens/s and time to first token (as p50/p99) per stream count; the greedy tokens of a
    fixed prompt are the outputs compared between trials."""
    from edgeinfer.serving.sampling import SamplingParams
    from edgeinfer.tune.llm import NEW_TOKENS, drive_llm

    lv.start(Runner())
    loop = lv.llm
    assert loop is not None
    levels = []
    try:
        prompt = np.random.default_rng(0).integers(3, loop.backend.n_vocab, 64).tolist()
        greedy = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
        tokens = [
            t async for c in loop.submit(prompt, greedy, cache_prompt=False) for t in c.token_ids
        ]
        rng = np.random.default_rng(1)
        for streams in spec.concurrency:
            await drive_llm(loop, streams, spec.warmup_s, rng)
            rates, firsts = [], []
            for _ in range(spec.repetitions):
                n, elapsed, got = await drive_llm(loop, streams, spec.seconds, rng)
                rates.append(n / elapsed)
                firsts += got
            levels.append(level(streams, rates, firsts))
    finally:
        await lv.close(drain=False)
    return levels, [{"tokens": np.asarray(tokens, np.int64)}]


def _rss_peak() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Sensor 4 reports a temperature of 71 degrees and rising.",
    "Open the valve on line two when the pressure drops.",
    "edge devices run models close to where the data is made",
)


def make_samples(spec: TrialSpec, inputs: tuple[TensorSpec, ...]) -> list[dict[str, np.ndarray]]:
    """Single-request feeds in the form clients send them (strings for a text model)."""
    if spec.eval_path:
        path = Path(spec.eval_path)
        if path.suffix == ".txt" and any(s.datatype == "BYTES" for s in inputs):
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()][: spec.samples]
            name = next(s.name for s in inputs if s.datatype == "BYTES")
            return [{name: np.array([ln.encode()], dtype=object)} for ln in lines]
        data = open_dataset(path, inputs, resolve_source(spec.source_dir))
        return list(data.batches(1, limit=spec.samples))
    rng = np.random.default_rng(0)
    out = []
    for k in range(spec.samples):
        feeds = {}
        for s in inputs:
            shape = [d if d > 0 else 1 for d in s.shape]
            if s.datatype == "BYTES":
                feeds[s.name] = np.full(shape, TEXTS[k % len(TEXTS)].encode(), dtype=object)
            elif DTYPE_TO_NUMPY[s.datatype].kind == "f":
                feeds[s.name] = rng.standard_normal(shape).astype(DTYPE_TO_NUMPY[s.datatype])
            else:
                feeds[s.name] = np.ones(shape, DTYPE_TO_NUMPY[s.datatype])
        out.append(feeds)
    return out


def run(spec: TrialSpec) -> dict[str, Any]:
    path = Path(spec.config_path)
    raw = apply_overrides(tomllib.loads(path.read_text()), spec.overrides)
    config = ModelConfig.from_dict(raw, spec.model, str(path))
    started = time.perf_counter()
    lv = load_version(VersionEntry(spec.model, spec.version, Path(spec.version_dir)), config)
    load_s = time.perf_counter() - started
    if lv.generates:
        levels, outputs = asyncio.run(_measure_llm(spec, lv))
    else:
        samples = make_samples(spec, lv.model.inputs)
        if spec.requests_dir and read_requests(Path(spec.requests_dir)) is None:
            write_requests(Path(spec.requests_dir), samples)
        outputs = [lv.model.run(s) for s in samples]
        levels = asyncio.run(_measure(spec, lv, samples))
    with open(spec.outputs_path, "wb") as f:
        pickle.dump(outputs, f)
    return {"levels": levels, "rss_peak_bytes": _rss_peak(), "load_s": load_s}


PARENT_ENV = "EDGEINFER_TUNE_PARENT"  # the pid of the `edgeinfer tune` that started the trial


def _die_with_parent() -> None:
    """A trial never outlives `edgeinfer tune`: killed (even with SIGKILL) or interrupted, its
    trial goes too."""
    kill_with_parent()
    parent = os.environ.get(PARENT_ENV, "")
    if parent.isdigit() and os.getppid() != int(parent):  # it died before prctl took effect
        os._exit(1)


def main() -> int:
    _die_with_parent()
    spec = TrialSpec(**json.loads(sys.stdin.read()))
    try:
        result = run(spec)
    except Exception as e:  # any failure is this trial's result, reported to the parent
        result = {"error": f"{type(e).__name__}: {e}"}
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

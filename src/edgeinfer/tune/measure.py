"""Measuring candidates: each trial runs in a child process (`edgeinfer.tune.trial`) through the
server's loading and scheduling code; the best are measured again through a real server over
HTTP (`edgeinfer.tune.served`); INT8 variants are made once with `edgeinfer quantize` and its
accuracy gate; every trial's outputs are compared with the default configuration's."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.errors import EdgeInferError
from edgeinfer.repository.manifest import write_manifest
from edgeinfer.tune.apply import config_text
from edgeinfer.tune.llm import LlmCandidate
from edgeinfer.tune.search import DEFAULT_KEY, Trial
from edgeinfer.tune.served import ServedError, ServePlan, publish, read_requests, serve_levels
from edgeinfer.tune.space import Candidate
from edgeinfer.tune.trial import PARENT_ENV, TrialSpec


@dataclass(frozen=True)
class Plan:
    model: str
    version: int
    version_dir: Path
    config_path: Path
    base_max_batch: int
    work: Path  # <model>/tune/work: INT8 variants, outputs
    concurrency: tuple[int, ...]
    seconds: float = 2.0
    repetitions: int = 3
    warmup_s: float = 0.5
    trial_timeout_s: float = 120.0
    eval_path: Path | None = None
    calibration_path: Path | None = None
    metric: str = "auto"  # top1 | cosine | auto (top1 for class scores, else cosine)
    max_drop: float = 0.005
    samples: int = 32


@dataclass
class Measurer:
    plan: Plan
    variants: dict[str, Path | str] = field(default_factory=dict)  # precision -> dir or error

    def __call__(self, candidate: Candidate | LlmCandidate | None) -> Trial:
        """Measure `candidate` in a trial process (None: the model's current configuration)."""
        started = time.monotonic()
        setup = self._setup(candidate)
        trial = self._run(*setup) if isinstance(setup, tuple) else setup
        trial.seconds = time.monotonic() - started
        return trial

    def served(self, candidate: Candidate | None) -> Trial:
        """Measure `candidate` through `edgeinfer serve` over HTTP, the client in a process of
        its own (edgeinfer.tune.served), with the requests the trials used."""
        started = time.monotonic()
        setup = self._setup(candidate)
        if not isinstance(setup, tuple):
            return setup
        key, as_dict, version_dir, overrides = setup
        folder = self.plan.work / "requests"
        if read_requests(folder) is None:  # a resumed run whose work folder went: make them
            self._run(key, as_dict, version_dir, overrides, concurrency=[])
        requests = read_requests(folder)
        if requests is None:
            return Trial(key, as_dict, "error", error="could not make the HTTP requests")
        p = self.plan
        config = config_text(p.config_path.read_text(), overrides)
        try:
            repo = publish(p.work / "served", self.serve_plan, version_dir, config)
            levels, rss = serve_levels(self.serve_plan, repo, requests)
        except (ServedError, OSError, EdgeInferError) as e:
            return Trial(key, as_dict, "error", error=f"over HTTP: {e}")
        return Trial(
            key, as_dict, "ok", levels, rss, seconds=time.monotonic() - started, served=True
        )

    @property
    def serve_plan(self) -> ServePlan:
        p = self.plan
        return ServePlan(
            p.model,
            p.version,
            p.concurrency,
            p.seconds,
            p.repetitions,
            p.warmup_s,
            p.trial_timeout_s,
        )

    def _setup(
        self, candidate: Candidate | LlmCandidate | None
    ) -> tuple[str, dict[str, Any] | None, Path, dict[str, Any]] | Trial:
        """(key, candidate as a dict, the model folder, config overrides), or the Trial of a
        candidate that cannot run (its INT8 model was refused)."""
        key = DEFAULT_KEY if candidate is None else candidate.key
        as_dict = None if candidate is None else candidate.as_dict()
        version_dir = self.plan.version_dir
        if candidate is not None and candidate.precision.startswith("int8"):
            variant = self.variant(candidate.precision)
            if isinstance(variant, str):
                return Trial(key, as_dict, "rejected", error=variant)
            version_dir = variant
        overrides = {} if candidate is None else candidate.overrides(self.plan.base_max_batch)
        return key, as_dict, version_dir, overrides

    def _outputs_path(self, key: str) -> Path:
        safe = "".join(ch if ch.isalnum() else "_" for ch in key)
        return self.plan.work / "outputs" / f"{safe}.pkl"

    def _run(
        self,
        key: str,
        candidate: dict[str, Any] | None,
        version_dir: Path,
        overrides: dict[str, Any],
        concurrency: list[int] | None = None,
    ) -> Trial:
        p = self.plan
        out_path = self._outputs_path(key)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        spec = TrialSpec(
            p.model,
            p.version,
            str(version_dir),
            str(p.config_path),
            overrides,
            str(p.version_dir),
            str(p.eval_path) if p.eval_path else None,
            p.samples,
            str(out_path),
            list(p.concurrency) if concurrency is None else concurrency,
            p.seconds,
            p.repetitions,
            p.warmup_s,
            str(p.work / "requests"),
        )
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "edgeinfer.tune.trial"],
                input=json.dumps(asdict(spec)),
                env={**os.environ, PARENT_ENV: str(os.getpid())},
                capture_output=True,
                text=True,
                timeout=p.trial_timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Trial(
                key,
                candidate,
                "abandoned",
                error=f"exceeded its time limit of {p.trial_timeout_s:.0f} s",
            )
        try:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return Trial(key, candidate, "error", error=f"exit {proc.returncode}: {tail}")
        if "error" in result:
            return Trial(key, candidate, "error", error=result["error"])
        trial = Trial(
            key, candidate, "ok", result["levels"], result["rss_peak_bytes"], result["load_s"]
        )
        trial.accuracy = self.accuracy(key, out_path)
        if trial.accuracy is not None and not trial.accuracy["passed"]:
            trial.status = "rejected"
        return trial

    def accuracy(self, key: str, out_path: Path) -> dict[str, Any] | None:
        """Agreement of this trial's outputs with the default configuration's on the same
        requests; None for the default itself."""
        ref_path = self._outputs_path(DEFAULT_KEY)
        if key == DEFAULT_KEY or not ref_path.is_file():
            return None
        with open(ref_path, "rb") as f:
            ref = pickle.load(f)
        with open(out_path, "rb") as f:
            got = pickle.load(f)
        value, metric = agreement(ref, got, self.plan.metric)
        drop = 1.0 - value
        return {
            "metric": metric,
            "value": value,
            "drop": drop,
            "passed": drop <= self.plan.max_drop,
            "max_drop": self.plan.max_drop,
        }

    def variant(self, precision: str) -> Path | str:
        """The INT8 model for `precision`, made once per run with `edgeinfer quantize`; a str
        says why there is none (its gate refused it, or quantizing failed)."""
        if precision not in self.variants:
            self.variants[precision] = self._quantize(precision)
        return self.variants[precision]

    def _quantize(self, precision: str) -> Path | str:
        from edgeinfer.optimize.pipeline import DataOptions, GateOptions, RunOptions, run_quantize
        from edgeinfer.optimize.quantize import QuantSettings

        p = self.plan
        target = p.work / precision
        shutil.rmtree(target, ignore_errors=True)
        mode = precision.removeprefix("int8-")
        calibration = p.calibration_path or p.eval_path
        data = DataOptions(
            calibration=calibration if mode == "static" else None,
            eval=p.eval_path,
            calibration_samples=128,
        )
        metric = None if p.metric == "auto" else p.metric
        try:
            outcome = run_quantize(
                p.version_dir,
                QuantSettings(mode),
                data,
                GateOptions(metric=metric),
                RunOptions(output=target),
            )
        except EdgeInferError as e:
            return f"quantize failed: {e.message}"
        except Exception as e:  # a model the quantizer cannot handle: that trial only
            return (
                f"quantize failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            )
        if outcome.published is None:
            gate = outcome.report.get("gate", {})
            return f"quantize gate refused it: {gate.get('reason', 'accuracy dropped')}"
        write_manifest(target)
        return target


def agreement(
    ref: list[dict[str, np.ndarray]], got: list[dict[str, np.ndarray]], metric: str
) -> tuple[float, str]:
    """(agreement in [0, 1], metric used) over every float output of every request."""
    scores: list[float] = []
    used = metric
    for a_out, b_out in zip(ref, got, strict=True):
        for name, a in a_out.items():
            b = got_array(b_out, name)
            if b is None or a.dtype.kind not in "fiu":
                continue
            if a.dtype.kind in "iu":  # token ids: the share of positions that agree
                n = max(a.size, b.size, 1)
                m = min(a.size, b.size)
                scores.append(float(np.sum(a.ravel()[:m] == b.ravel()[:m])) / n)
                used = "tokens"
                continue
            kind = (
                metric
                if metric != "auto"
                else ("top1" if a.ndim >= 2 and a.shape[-1] > 1 else "cosine")
            )
            used = kind
            if kind == "top1":
                scores.append(float(np.mean(a.argmax(-1) == b.argmax(-1))))
            else:
                x, y = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
                denom = float(np.linalg.norm(x) * np.linalg.norm(y)) or 1.0
                scores.append(float(x @ y) / denom)
    return (float(np.mean(scores)) if scores else 1.0), used


def got_array(outputs: dict[str, np.ndarray], name: str) -> np.ndarray | None:
    value = outputs.get(name)
    return None if value is None else np.asarray(value)

"""The tuning run behind `edgeinfer tune REPO MODEL`: search backends x precision x threads x instances x batching on
this device through the serving path, gated on accuracy; report, and apply with --apply."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeinfer.errors import EdgeInferError
from edgeinfer.repository import Repository
from edgeinfer.repository.layout import ModelEntry, VersionEntry
from edgeinfer.runtime import backend_of
from edgeinfer.tune import report
from edgeinfer.tune.apply import apply, config_text
from edgeinfer.tune.llm import LlmCandidate, llm_stages
from edgeinfer.tune.measure import Measurer, Plan
from edgeinfer.tune.search import (
    CONFIRM_ROUNDS,
    CONFIRM_TOP,
    DEFAULT_KEY,
    Checkpoint,
    Objective,
    Search,
    Stage,
    Trial,
)
from edgeinfer.tune.served import budget_s
from edgeinfer.tune.space import (
    PRECISIONS,
    Candidate,
    Device,
    ModelFacts,
    Pruned,
    engines,
    everything,
    refine,
    serving_grid,
    tensor_backends,
)


class TuneError(EdgeInferError):
    """A user error: one line on stderr, exit code 2."""

    code = 2


@dataclass(frozen=True)
class TuneArgs:
    repo: Path
    model: str
    version: int | None = None
    objective: str = "throughput"
    latency_budget_ms: float | None = None
    concurrency: tuple[int, ...] = (1, 4, 8)
    eval: Path | None = None
    calibration: Path | None = None
    metric: str = "auto"
    max_drop: float = 0.005
    budget_minutes: float = 15.0
    seconds: float = 2.0
    repetitions: int = 3
    precisions: tuple[str, ...] | None = None  # None: fp32, int8-dynamic (+ static with data)
    backends: tuple[str, ...] | None = None  # None: every backend that can load the model
    apply: bool = False
    trial_timeout_s: float = 120.0


MAX_CONCURRENCY = 1024  # client tasks of one trial
MAX_SECONDS = 600.0  # one measurement
MAX_REPETITIONS = 100
MAX_BUDGET_MINUTES = 7 * 24 * 60.0


def _in(value: float, low: float, high: float) -> bool:
    return math.isfinite(value) and low < value <= high


def check(args: TuneArgs, generates: bool) -> None:
    """Every argument bounded and every name known before the first trial (one-line errors)."""
    problems = [
        f"{flag} must be in {bound}"
        for flag, ok, bound in (
            ("--budget-minutes", _in(args.budget_minutes, 0, MAX_BUDGET_MINUTES), "(0, 10080]"),
            ("--seconds", _in(args.seconds, 0, MAX_SECONDS), "(0, 600]"),
            ("--repetitions", 1 <= args.repetitions <= MAX_REPETITIONS, "1..100"),
            ("--concurrency", all(1 <= c <= MAX_CONCURRENCY for c in args.concurrency), "1..1024"),
            ("--max-drop", math.isfinite(args.max_drop) and 0 <= args.max_drop <= 1, "[0, 1]"),
            (
                "--latency-budget-ms",
                args.latency_budget_ms is None or _in(args.latency_budget_ms, 0, math.inf),
                "(0, inf)",
            ),
        )
        if not ok
    ]
    known_backends = ["llama.cpp"] if generates else tensor_backends()
    known_precisions = ["gguf"] if generates else list(PRECISIONS)
    for flag, given, known in (
        ("--backend", args.backends, known_backends),
        ("--precision", args.precisions, known_precisions),
    ):
        unknown = [name for name in given or () if name not in known]
        if unknown:
            problems.append(f"{flag}: unknown {', '.join(unknown)}; use {', '.join(known)}")
    if problems:
        raise TuneError("; ".join(problems))


def facts_of(version_dir: Path, can_calibrate: bool) -> ModelFacts:
    files = frozenset(p.name for p in version_dir.iterdir() if p.is_file())
    batch_axis, size, quantizable = False, 0, False
    onnx_path = version_dir / "model.onnx"
    if onnx_path.is_file():
        from edgeinfer.hardware.budget import estimate_onnx_bytes
        from edgeinfer.optimize.source import model_io

        inputs, _ = model_io(onnx_path)
        batch_axis = all(s.shape and s.shape[0] < 0 for s in inputs)
        size = estimate_onnx_bytes(onnx_path)
        quantizable = True
    return ModelFacts(files, batch_axis, size, quantizable, can_calibrate)


def device_now() -> Device:
    from edgeinfer.hardware.budget import default_budget_bytes
    from edgeinfer.hardware.device import read_readings, usable_cpus

    return Device(usable_cpus(), default_budget_bytes(read_readings()))


def _progress(
    done: int, total: int, key: str, trial: Trial, best: Trial | None, left: float
) -> None:
    top = trial.levels[-1] if trial.levels else None
    got = (
        f"{top['throughput']:.1f}/s p99 {top['p99_ms']:.1f} ms"
        if top
        else f"{trial.status}: {trial.error}"
    )
    lead = best.key if best else "-"
    sys.stderr.write(f"[{done}/{total}] {key}: {got} | best: {lead} | {left / 60:.1f} min left\n")
    sys.stderr.flush()


def _confirming(served: Callable[[Candidate | None], Trial]) -> Callable[[Candidate | None], Trial]:
    """`served` with a line on stderr per confirmation."""

    def measure(candidate: Candidate | None) -> Trial:
        key = DEFAULT_KEY if candidate is None else candidate.key
        trial = served(candidate)
        top = trial.levels[-1] if trial.levels else None
        got = (
            f"{top['throughput']:.1f}/s p99 {top['p99_ms']:.1f} ms at c={top['concurrency']}"
            if top
            else f"{trial.status}: {trial.error}"
        )
        sys.stderr.write(f"[confirm over HTTP] {key}: {got}\n")
        sys.stderr.flush()
        return trial

    return measure


def stages(
    kept: list[Candidate], objective: Objective, device: Device, facts: ModelFacts
) -> list[Stage]:
    """Engines first (backend x precision at full threads), then the serving settings of the
    two best engines, then refinement of batching around the best trial."""

    def best_combos(trials: dict[str, Trial]) -> list[Candidate]:
        scored = sorted(
            (
                (s, t.candidate["backend"], t.candidate["precision"])
                for t in trials.values()
                if t.candidate and (s := objective.score(t)) is not None
            ),
            reverse=True,
        )
        combos = list(dict.fromkeys((b, p) for _, b, p in scored))[:2]
        return serving_grid(kept, combos)

    def around_best(trials: dict[str, Trial]) -> list[Candidate]:
        scored = [
            (s, t) for t in trials.values() if t.candidate and (s := objective.score(t)) is not None
        ]
        if not scored:
            return []
        best = max(scored, key=lambda st: st[0])[1]
        assert best.candidate is not None
        return refine(Candidate(**best.candidate), device, facts)

    return [lambda _: engines(kept, device), best_combos, around_best]


def _candidate(fields: dict[str, Any]) -> Candidate:
    return Candidate(**fields)


def _llm_candidate(fields: dict[str, Any]) -> LlmCandidate:
    return LlmCandidate(**fields)


@dataclass
class _Space:
    """What one run searches: its backends, precisions, stages and what was pruned."""

    backends: list[str]
    precisions: list[str]
    stages: list[Stage]
    pruned: list[Pruned]
    revive: Callable[[dict[str, Any]], Any]
    generates: bool


def _version(args: TuneArgs) -> tuple[ModelEntry, VersionEntry]:
    entry = Repository(args.repo).model(args.model)
    if not entry.versions:
        raise TuneError(f"model {args.model} has no published version")
    chosen = {v.version: v for v in entry.versions}.get(args.version or entry.versions[-1].version)
    if chosen is None:
        raise TuneError(f"model {args.model} has no version {args.version}")
    return entry, chosen


def _space(
    args: TuneArgs, entry: ModelEntry, chosen: VersionEntry, device: Device, objective: Objective
) -> _Space:
    if backend_of(chosen.path, entry.config).kind == "llm":
        # llama.cpp: its own settings, one backend, the GGUF's own precision.
        return _Space(
            ["llama.cpp"],
            ["gguf"],
            llm_stages(device, max(args.concurrency)),
            [],
            _llm_candidate,
            generates=True,
        )
    can_calibrate = args.calibration is not None or args.eval is not None
    facts = facts_of(chosen.path, can_calibrate)
    backends = list(args.backends or tensor_backends())
    precisions = list(
        args.precisions or (["fp32", "int8-dynamic"] + (["int8-static"] if can_calibrate else []))
    )
    kept, pruned = everything(device, facts, backends, precisions)
    return _Space(
        backends,
        precisions,
        stages(kept, objective, device, facts),
        pruned,
        _candidate,
        generates=False,
    )


def _plan(args: TuneArgs, entry: ModelEntry, chosen: VersionEntry) -> Plan:
    return Plan(
        args.model,
        chosen.version,
        chosen.path,
        entry.path / "config.toml",
        entry.config.max_batch_size,
        entry.path / "tune" / "work",
        args.concurrency,
        args.seconds,
        args.repetitions,
        trial_timeout_s=args.trial_timeout_s,
        eval_path=args.eval,
        calibration_path=args.calibration,
        metric=args.metric,
        max_drop=args.max_drop,
    )


def _checkpoint(
    args: TuneArgs,
    folder: Path,
    chosen: VersionEntry,
    space: _Space,
    objective: Objective,
    device: Device,
) -> Checkpoint:
    """A checkpoint is reused only by a run with the same settings."""
    settings = {
        "version": chosen.version,
        "objective": objective.__dict__,
        "backends": space.backends,
        "precisions": space.precisions,
        "seconds": args.seconds,
        "repetitions": args.repetitions,
        "eval": str(args.eval or ""),
        "usable_cpus": device.usable_cpus,
    }
    return Checkpoint(folder / "checkpoint.json", json.loads(json.dumps(settings)), space.revive)


def _winner(
    args: TuneArgs, entry: ModelEntry, chosen: VersionEntry, measurer: Measurer, winner: Any
) -> dict[str, Any]:
    """Apply the winner, or say what to set. Always a new version: the server swaps it in
    through the verified hot-reload path (a changed config.toml alone does not reload the
    version it serves)."""
    overrides = winner.overrides(entry.config.max_batch_size)
    made_int8 = winner.precision.startswith("int8")
    variant = measurer.variant(winner.precision) if made_int8 else chosen.path
    assert not isinstance(variant, str)  # a refused INT8 model never wins
    if args.apply:
        published = apply(entry.path, overrides, variant)
        return {
            "applied": {
                "config": str(entry.path / "config.toml"),
                "version": str(published) if published else None,
            }
        }
    current = (entry.path / "config.toml").read_text()
    return {"config": config_text(current, overrides), "variant": str(variant)}


def run(args: TuneArgs, device: Device | None = None) -> dict[str, Any]:
    entry, chosen = _version(args)
    device = device or device_now()
    objective = Objective(args.objective, args.latency_budget_ms, args.concurrency)
    check(args, backend_of(chosen.path, entry.config).kind == "llm")
    space = _space(args, entry, chosen, device, objective)
    folder = entry.path / "tune"
    measurer = Measurer(_plan(args, entry, chosen))
    started = time.monotonic()
    # Tensor models: the best are confirmed through a real server over HTTP. LLM trials already
    # measure the serving loop, whose decode dwarfs what HTTP adds.
    serve = None if space.generates else _confirming(measurer.served)
    budget = args.budget_minutes * 60
    search = Search(
        measurer,
        objective,
        _checkpoint(args, folder, chosen, space, objective, device),
        budget,
        space.stages,
        _progress,
        revive=space.revive,
        serve=serve,
        reserve_s=0.0
        if serve is None
        else min(budget / 2, budget_s(measurer.serve_plan, 1 + CONFIRM_TOP, CONFIRM_ROUNDS)),
    )
    trials = search.run()
    decision = report.decide(trials, objective)
    meta = {
        "model": args.model,
        "version": chosen.version,
        "device": device.__dict__,
        "seconds": time.monotonic() - started,
        "skipped_for_budget": search.skipped,
        "unit": "tok/s" if space.generates else "req/s",
        "latency": "time to first token" if space.generates else "request latency",
    }
    pruned = [(p.candidate.key, p.reason) for p in space.pruned]
    md = report.write(folder, trials, pruned, objective, decision, meta)
    result: dict[str, Any] = {
        "report": str(md),
        "decision": decision,
        "summary": report.summary_line(decision, objective),
    }
    if decision["changed"]:
        result.update(_winner(args, entry, chosen, measurer, space.revive(decision["candidate"])))
    return result

"""The search: the default configuration first, a coarse pass over the space, then a refinement
around the best; every trial checkpointed so a killed run resumes where it stopped."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgeinfer.tune.space import Candidate

DEFAULT_KEY = "default"  # the model's current configuration, measured in the same run
CONFIRM_TOP, CONFIRM_ROUNDS = 2, 2  # the confirmation: the default and the 2 best, twice each


@dataclass
class Trial:
    key: str
    candidate: dict[str, Any] | None  # None for the default configuration
    status: str  # ok | error | abandoned | rejected (accuracy gate)
    levels: list[dict[str, Any]] = field(default_factory=list)
    rss_peak_bytes: int = 0
    load_s: float = 0.0
    accuracy: dict[str, Any] | None = None
    error: str = ""
    seconds: float = 0.0
    runs: list[list[dict[str, Any]]] = field(default_factory=list)  # levels of every run
    confirmed: bool = False
    served: bool = False  # `levels` measured through a real server over HTTP
    in_process: list[dict[str, Any]] = field(default_factory=list)  # the search's, once served

    def add_run(self, levels: list[dict[str, Any]]) -> None:
        """Fold another measurement of the same configuration into `levels`: the median
        throughput and p99 per concurrency, and the spread between runs."""
        if not self.runs:
            self.runs.append(self.levels)
        self.runs.append(levels)
        merged = []
        for lv in self.runs[0]:
            same = [x for run in self.runs for x in run if x["concurrency"] == lv["concurrency"]]
            tput = sorted(x["throughput"] for x in same)
            mid = float(np.median(tput))
            merged.append(
                {
                    **lv,
                    "throughput": mid,
                    "p50_ms": float(np.median([x["p50_ms"] for x in same])),
                    "p99_ms": float(np.median([x["p99_ms"] for x in same])),
                    "spread": max(
                        max(x["spread"] for x in same), (tput[-1] - tput[0]) / max(mid, 1e-9)
                    ),
                    "requests": sum(x["requests"] for x in same),
                }
            )
        self.levels = merged

    def level(self, concurrency: int) -> dict[str, Any] | None:
        return next((lv for lv in self.levels if lv["concurrency"] == concurrency), None)


class Measurer(Protocol):
    def __call__(self, candidate: Candidate | None) -> Trial:
        """Measure `candidate` (None: the model's current configuration)."""
        ...


@dataclass(frozen=True)
class Objective:
    kind: str = "throughput"  # or "latency"
    latency_budget_ms: float | None = None
    concurrency: tuple[int, ...] = (1, 4, 8)

    def score(self, t: Trial) -> float | None:
        """Higher is better; None when the trial does not qualify."""
        if t.status != "ok" or not t.levels:
            return None
        if self.kind == "latency":
            lv = t.level(min(self.concurrency))
            return None if lv is None else -lv["p99_ms"]
        best = None
        for lv in t.levels:  # the highest throughput among levels within the latency budget
            if self.latency_budget_ms is not None and lv["p99_ms"] > self.latency_budget_ms:
                continue
            best = max(best or 0.0, lv["throughput"])
        return best


class Checkpoint:
    """Trials so far, rewritten atomically after each one (`kill -9` loses at most one trial)."""

    def __init__(
        self,
        path: Path,
        settings: dict[str, Any],
        revive: Callable[[dict[str, Any]], Any] = lambda d: Candidate(**d),
    ) -> None:
        self.path = path
        self.settings = settings
        self.trials: dict[str, Trial] = {}
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
                if saved.get("settings") == settings:  # other settings: start over
                    self.trials = {t.key: t for t in map(_trial_of, saved["trials"])}
                    for t in self.trials.values():
                        if t.candidate is not None:
                            revive(t.candidate)
            except (OSError, ValueError, TypeError, KeyError, AttributeError):
                self.trials = {}  # not a checkpoint this version wrote: start over

    def add(self, trial: Trial) -> None:
        self.trials[trial.key] = trial
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        body = {"settings": self.settings, "trials": [t.__dict__ for t in self.trials.values()]}
        tmp.write_text(json.dumps(body, indent=1))
        os.replace(tmp, self.path)


def _trial_of(saved: dict[str, Any]) -> Trial:
    """A checkpointed trial, its fields checked as far as the search and the report read them."""
    trial = Trial(**saved)
    for levels in [trial.levels, trial.in_process, *trial.runs]:
        for lv in levels:
            for name in ("concurrency", "throughput", "spread", "p50_ms", "p99_ms", "requests"):
                if not isinstance(lv[name], int | float):
                    raise TypeError(name)
    if not isinstance(trial.key, str) or not isinstance(trial.status, str):
        raise TypeError("key")
    return trial


Progress = Callable[[int, int, str, Trial, Trial | None, float], None]


Stage = Callable[[dict[str, Trial]], list[Candidate]]


@dataclass
class Search:
    """Runs `stages` in order, each given the trials so far; the last stage repeats while it
    proposes candidates not yet measured (hill climbing). The default configuration is measured
    first. Stops starting trials once `budget_s` less `reserve_s` (what confirming the best
    takes) is spent. With `serve`, the confirmation measures through a real server."""

    measure: Measurer
    objective: Objective
    checkpoint: Checkpoint
    budget_s: float
    stages: list[Stage]
    progress: Progress | None = None
    clock: Callable[[], float] = time.monotonic
    skipped: list[str] = field(default_factory=list)  # keys left out when the budget ran out
    revive: Callable[[dict[str, Any]], Any] = field(default=lambda d: Candidate(**d))
    serve: Callable[[Candidate | None], Trial] | None = None
    reserve_s: float = 0.0

    def run(self) -> dict[str, Trial]:
        start = self.clock()
        plan: list[Candidate | None] = [None]
        stage, done = 0, 0
        while plan:
            c = plan.pop(0)
            key = DEFAULT_KEY if c is None else c.key
            if key not in self.checkpoint.trials:
                if self.clock() - start > self.budget_s - self.reserve_s:
                    self.skipped += [key] + [DEFAULT_KEY if p is None else p.key for p in plan]
                    break
                self.checkpoint.add(self.measure(c))
            done += 1
            trial = self.checkpoint.trials[key]
            if self.progress is not None:
                left = max(0.0, self.budget_s - self.reserve_s - (self.clock() - start))
                self.progress(done, done + len(plan), key, trial, self.best(), left)
            while not plan and stage < len(self.stages):
                fresh = self.stages[stage](self.checkpoint.trials)
                plan = list(dict.fromkeys(f for f in fresh if f.key not in self.checkpoint.trials))
                if stage < len(self.stages) - 1 or not plan:
                    stage += 1
        self.confirm()
        return self.checkpoint.trials

    def confirm(self, top: int = CONFIRM_TOP, rounds: int = CONFIRM_ROUNDS) -> None:
        """Measure the default and the `top` best again, interleaved, `rounds` times each, and
        keep the medians: one lucky or unlucky trial on a busy device does not pick the winner.
        With `serve` these measurements go through a real server and replace the in-process
        ones (kept in `in_process`): the winner is picked, and its figure reported, as served.
        Runs in the time the search left for it (`reserve_s`)."""
        scored = sorted(
            (
                (s, t.key)
                for t in self.checkpoint.trials.values()
                if t.key != DEFAULT_KEY and (s := self.objective.score(t)) is not None
            ),
            reverse=True,
        )
        keys = [DEFAULT_KEY, *(k for _, k in scored[:top])]
        chosen = [self.checkpoint.trials[k] for k in keys if k in self.checkpoint.trials]
        if len(chosen) < 2 or all(t.confirmed for t in chosen):
            return
        measure = self.serve or self.measure
        for _ in range(rounds):
            for t in chosen:
                if t.confirmed or t.status != "ok":
                    continue
                again = measure(None if t.candidate is None else self.revive(t.candidate))
                if self.serve is not None and not t.served:
                    t.in_process, t.runs, t.served = t.levels, [], True
                    t.levels, t.rss_peak_bytes = again.levels, again.rss_peak_bytes
                    if again.status != "ok":  # what cannot be served cannot win
                        t.status, t.error = again.status, again.error
                elif again.status == "ok":
                    t.add_run(again.levels)
        for t in chosen:
            t.confirmed = True
            self.checkpoint.add(t)

    def best(self) -> Trial | None:
        scored = [
            (s, t)
            for t in self.checkpoint.trials.values()
            if (s := self.objective.score(t)) is not None
        ]
        return max(scored, key=lambda st: st[0])[1] if scored else None

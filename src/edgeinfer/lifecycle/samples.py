"""What /metrics and the dashboard read from the resident model versions at scrape time."""

from __future__ import annotations

from collections.abc import Sequence

from edgeinfer.adapters.metrics import LoraLoopSample
from edgeinfer.hardware import Governor
from edgeinfer.lifecycle.budget import BudgetGate
from edgeinfer.lifecycle.manager import ModelManager
from edgeinfer.telemetry.metrics import DeviceSample, LifecycleSample, LlmSample, VersionSample


def versions(models: Sequence[ModelManager]) -> list[VersionSample]:
    """Stats, queue depth and running batches of every resident version."""
    return [
        VersionSample(
            h.stats,
            h.scheduler.pending if h.scheduler else 0,
            h.scheduler.running if h.scheduler else 0,
        )
        for m in models
        for h in m.versions.values()
    ]


def device(
    models: Sequence[ModelManager], governor: Governor, gate: BudgetGate | None
) -> DeviceSample:
    snap = governor.snapshot()
    rejections: dict[str, int] = {}
    for m in models:
        for h in m.versions.values():
            for reason, n in (h.scheduler.rejections if h.scheduler else {}).items():
                rejections[reason] = rejections.get(reason, 0) + n
    budget = gate.budget if gate else None
    return DeviceSample(
        factor=snap.factor,
        reason=snap.reason,
        temp_c=snap.temp_c,
        freq_hz=snap.freq_cur_hz,
        rejections=rejections,
        budget_limit=budget.limit_bytes if budget else None,
        budget_used=budget.used_bytes if budget else None,
    )


def lifecycle(
    models: Sequence[ModelManager], load_failures: dict[tuple[str, int, str], int]
) -> LifecycleSample:
    return LifecycleSample(
        live={m.name: m.route.live for m in models if m.route},
        canary={
            (m.name, m.route.canary): m.route.weight
            for m in models
            if m.route and m.route.canary is not None
        },
        loads={(m.name, v): n for m in models for v, n in m.loads.items()},
        load_failures=dict(load_failures),
        rollbacks={(m.name, kind): n for m in models for kind, n in m.rollbacks.items()},
    )


def loras(models: Sequence[ModelManager]) -> list[LoraLoopSample]:
    out = []
    for m in models:
        for h in m.versions.values():
            if h.llm is not None:
                running, waiting = (
                    [k.replace(":adapter:", ":").partition("@")[0] for k in keys]
                    for keys in h.llm.adapters()
                )
                out.append(
                    LoraLoopSample(h.llm.limits.max_loras or h.llm.limits.slots, running, waiting)
                )
    return out


def llms(models: Sequence[ModelManager]) -> list[LlmSample]:
    """Counters of every loaded LLM version (for the dashboard)."""
    return [
        LlmSample(h.llm.stats, len(h.llm.running), len(h.llm.waiting), h.llm.kv_usage)
        for m in models
        for h in m.versions.values()
        if h.llm is not None
    ]

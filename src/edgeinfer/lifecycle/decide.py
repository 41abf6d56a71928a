"""What a model should serve: pure decisions on plain values, separate from loading and swapping
(lifecycle/manager.py does those), so each rule has a unit test without a model or a clock."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from edgeinfer.config import ModelConfig
from edgeinfer.repository.state import Canary, ModelState


@dataclass(frozen=True)
class Plan:
    """`selected`: what the version policy chose; `target`: the version that should go live;
    `wanted`: every version to keep resident."""

    selected: tuple[int, ...]
    target: int | None
    wanted: frozenset[int]
    canary: Canary | None


def canary_of(config: ModelConfig, state: ModelState) -> Canary | None:
    """The state file's canary once one was set by API; before that, the config's."""
    if any(e.get("event") in ("canary", "abort") for e in state.history):
        return state.canary
    if config.canary is not None:
        return Canary(config.canary.version, config.canary.weight)
    return None


def last_promoted(history: Sequence[dict[str, Any]]) -> int:
    return max((int(e.get("to", 0)) for e in history if e.get("event") == "promote"), default=0)


def previous_versions(
    state: ModelState,
    eligible: Collection[int],
    live_now: int | None,
    target: int | None,
    keep: int,
) -> list[int]:
    """Versions kept resident for instant rollback: the one live now (when it is being
    replaced), then earlier live versions from the history, `keep` at most."""
    candidates = [live_now] if live_now is not None else []
    candidates += [
        int(e["from"])
        for e in reversed(state.history)
        if e.get("event") in ("promote", "rollback") and e.get("from") is not None
    ]
    out: list[int] = []
    for v in candidates:
        if len(out) >= keep:
            break
        if v in eligible and v not in state.blocked and v != target and v not in out:
            out.append(v)
    return out


def plan(
    config: ModelConfig, state: ModelState, on_disk: Collection[int], live_now: int | None
) -> Plan:
    """The version policy chooses among versions on disk not rolled back from; a new version
    arriving goes live (a version set up as the canary does not); otherwise the live version
    stays; and the previous live versions stay resident for rollback."""
    selected = config.version_policy.select([v for v in on_disk if v not in state.blocked])
    canary = canary_of(config, state)
    newest = max((v for v in selected if canary is None or v != canary.version), default=None)
    target: int | None
    if newest is not None and newest > last_promoted(state.history):
        target = newest  # a new version arrived: it goes live once verified
    elif state.live in on_disk and state.live not in state.blocked:
        target = state.live
    else:
        target = newest
    previous = previous_versions(state, on_disk, live_now, target, config.lifecycle.keep_previous)
    extra = (target, canary.version if canary else None)
    wanted = frozenset(v for v in (*selected, *previous, *extra) if v is not None and v in on_disk)
    return Plan(tuple(selected), target, wanted, canary)


def choose_live(
    target: int | None, loaded: Collection[int], live_now: int | None, resident: Collection[int]
) -> int | None:
    """After loading: the target if it loaded; else what was live keeps serving; else the
    newest version that loaded (None: nothing can serve)."""
    if target in loaded:
        return target
    if live_now is not None and live_now in resident:
        return live_now
    return max(loaded, default=None)

"""Typed lifecycle status for internal callers (the fleet agent, the dashboard); `to_json` gives
the wire form of `GET /v2/repository/models/{name}/status`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgeinfer.types import ModelStatus

if TYPE_CHECKING:
    from edgeinfer.lifecycle.manager import ModelManager


@dataclass(frozen=True)
class CanaryStatus:
    version: int
    weight: float


@dataclass(frozen=True)
class LifecycleStatus:
    live: int | None
    canary: CanaryStatus | None = None
    resident: tuple[int, ...] = ()
    blocked: tuple[int, ...] = ()
    load_failures: list[dict[str, Any]] = field(default_factory=list)
    # version -> {"estimated_bytes": int | None, "measured_rss_bytes": int}
    memory: dict[int, dict[str, Any]] = field(default_factory=dict)
    history: tuple[dict[str, Any], ...] = ()  # the last lifecycle events, oldest first

    def to_json(self) -> dict[str, Any]:
        """Versions as strings, as in the rest of the KServe v2 protocol."""
        return {
            "live": None if self.live is None else str(self.live),
            "canary": None
            if self.canary is None
            else {"version": str(self.canary.version), "weight": self.canary.weight},
            "resident": [str(v) for v in self.resident],
            "blocked": [str(v) for v in self.blocked],
            "load_failures": self.load_failures,
            "memory": {str(v): m for v, m in self.memory.items()},
            "history": list(self.history),
        }


def status_of(
    m: ModelManager, failures: list[dict[str, Any]], estimate: Callable[[int], int | None]
) -> LifecycleStatus:
    """A model manager's status; `estimate(version)`: the memory budget's estimate, if any."""
    route = m.route
    canary = (
        CanaryStatus(route.canary, route.weight) if route and route.canary is not None else None
    )
    memory = {
        v: {"estimated_bytes": estimate(v), "measured_rss_bytes": h.measured_bytes}
        for v, h in sorted(m.versions.items())
    }
    return LifecycleStatus(
        route.live if route else None,
        canary,
        tuple(sorted(m.versions)),
        tuple(m.state.blocked),
        failures,
        memory,
        tuple(m.state.history[-10:]),
    )


def index_rows(
    names: list[str], managers: Mapping[str, ModelManager], ready_only: bool
) -> list[ModelStatus]:
    """The repository index: every resident version READY, failed versions UNAVAILABLE with
    their error, models not loaded with their state (only READY rows with `ready_only`)."""
    out: list[ModelStatus] = []
    for name in names:
        m = managers.get(name)
        if m and m.versions:
            out += [ModelStatus(name, str(v), "READY") for v in sorted(m.versions)]
            out += [
                ModelStatus(name, str(v), "UNAVAILABLE", msg)
                for v, (_, _, msg) in sorted(m.failures.items())
                if v not in m.versions
            ]
        elif not ready_only:
            state = m.status.value if m else "UNAVAILABLE"
            out.append(ModelStatus(name, "", state, m.reason if m else "not loaded"))
    return [s for s in out if s.state == "READY"] if ready_only else out

"""Typed lifecycle status for internal callers (the fleet agent, the dashboard); `to_json` gives
the wire form of `GET /v2/repository/models/{name}/status`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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

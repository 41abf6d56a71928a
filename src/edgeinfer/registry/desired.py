"""Desired state of a device group, one document per model, as stored in a registry.

{"version": 2,                                   # the live version every device should run
 "canary": {"version": 3, "weight": 0.1},        # optional: share of traffic to another one
 "artifacts": {"3": {"model.onnx": {"url": "https://… or /local/path", "sha256": "…"}}},
 "adapters": {"support-bot": ["acme", "globex"]},  # adapter grants: adapter -> tenants
 "max_error_rate": 0.05, "min_requests": 20,     # the canary halts above this error rate
 "halted": "",                                   # why the canary was halted ("" = running)
 "previous": 1,                                  # what `fleet rollback` goes back to
 "config": ""}                                   # config.toml for a model new to a device
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class DesiredError(ValueError):
    """A desired-state document is malformed; the message says which field."""


@dataclass(frozen=True)
class Canary:
    version: int
    weight: float


@dataclass(frozen=True)
class FileSource:
    url: str  # a local path or an http(s) URL
    sha256: str


@dataclass(frozen=True)
class DesiredModel:
    version: int
    canary: Canary | None = None
    artifacts: Mapping[int, Mapping[str, FileSource]] = field(default_factory=dict)
    adapters: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    max_error_rate: float = 0.05
    min_requests: int = 20
    halted: str = ""
    previous: int | None = None
    config: str = ""

    def __post_init__(self) -> None:
        if self.version < 1:
            raise DesiredError(f"version must be >= 1, got {self.version}")
        if self.canary is not None and (
            self.canary.version < 1 or not 0.0 <= self.canary.weight <= 1.0
        ):
            raise DesiredError("canary needs version >= 1 and 0 <= weight <= 1")
        if not 0.0 <= self.max_error_rate <= 1.0 or self.min_requests < 1:
            raise DesiredError("max_error_rate must be in 0..1 and min_requests >= 1")
        for version, files in self.artifacts.items():
            for name, src in files.items():
                if not name or name.startswith("/") or ".." in name.split("/"):
                    raise DesiredError(f"artifact v{version}: bad file name {name!r}")
                if not _SHA256.match(src.sha256):
                    raise DesiredError(f"artifact v{version} {name}: sha256 must be 64 hex digits")

    @property
    def active_canary(self) -> Canary | None:
        """The canary devices should route to: none once halted."""
        return None if self.halted else self.canary

    def wanted_versions(self) -> list[int]:
        canary = self.active_canary
        return sorted({self.version, *([canary.version] if canary else [])})

    def with_changes(self, **changes: Any) -> DesiredModel:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "canary": {"version": self.canary.version, "weight": self.canary.weight}
            if self.canary
            else None,
            "artifacts": {
                str(v): {n: {"url": s.url, "sha256": s.sha256} for n, s in files.items()}
                for v, files in sorted(self.artifacts.items())
            },
            "adapters": {a: list(t) for a, t in sorted(self.adapters.items())},
            "max_error_rate": self.max_error_rate,
            "min_requests": self.min_requests,
            "halted": self.halted,
            "previous": self.previous,
            "config": self.config,
        }

    @classmethod
    def from_json(cls, doc: Any) -> DesiredModel:
        if not isinstance(doc, dict):
            raise DesiredError("desired state must be a JSON object")
        try:
            canary = doc.get("canary")
            artifacts = {
                int(v): {
                    n: FileSource(str(s["url"]), str(s["sha256"]).lower()) for n, s in files.items()
                }
                for v, files in (doc.get("artifacts") or {}).items()
            }
            previous = doc.get("previous")
            return cls(
                version=int(doc["version"]),
                canary=Canary(int(canary["version"]), float(canary["weight"])) if canary else None,
                artifacts=artifacts,
                adapters={
                    str(a): tuple(map(str, t)) for a, t in (doc.get("adapters") or {}).items()
                },
                max_error_rate=float(doc.get("max_error_rate", 0.05)),
                min_requests=int(doc.get("min_requests", 20)),
                halted=str(doc.get("halted") or ""),
                previous=int(previous) if previous is not None else None,
                config=str(doc.get("config") or ""),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            if isinstance(e, DesiredError):
                raise
            raise DesiredError(f"malformed desired state: {e!r}") from e


@dataclass(frozen=True)
class Desired:
    """A model's desired state and the registry revision it was last written at (for
    compare-and-swap writes)."""

    model: DesiredModel
    mod_revision: int


@dataclass(frozen=True)
class Snapshot:
    """Everything desired for one group, read at `revision`."""

    models: Mapping[str, Desired]
    revision: int


@dataclass(frozen=True)
class Change:
    """One model's desired state changed (`desired` None: deleted) at `revision`."""

    model: str
    desired: Desired | None
    revision: int

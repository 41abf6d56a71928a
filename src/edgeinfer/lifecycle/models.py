"""The live state of each model: its loaded versions and their handles."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum

from edgeinfer.config import ModelConfig
from edgeinfer.errors import EdgeInferError, LoadError, RepositoryError
from edgeinfer.repository import VersionEntry, verify_manifest
from edgeinfer.runtime import Model, load
from edgeinfer.serving.runner import RunTimer
from edgeinfer.telemetry.stats import VersionStats

log = logging.getLogger("edgeinfer.lifecycle")


class State(StrEnum):
    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass
class LoadedVersion:
    """An immutable handle to one loaded version; in-flight requests hold a reference to it."""

    name: str
    version: int
    model: Model
    config: ModelConfig
    stats: VersionStats
    timer: RunTimer = field(default_factory=RunTimer)
    loaded_at: float = field(default_factory=time.time)


@dataclass
class ModelSlot:
    """What is live for one model name. `versions` is replaced, never mutated in place, so a
    reader that took a reference sees a consistent mapping."""

    name: str
    config: ModelConfig | None = None
    versions: dict[int, LoadedVersion] = field(default_factory=dict)
    state: State = State.UNAVAILABLE
    reason: str = "not loaded"
    # Versions present on disk and selected by policy, with their last load error if any.
    failures: dict[int, str] = field(default_factory=dict)

    def latest(self) -> LoadedVersion | None:
        versions = self.versions
        return versions[max(versions)] if versions else None


def load_version(entry: VersionEntry, config: ModelConfig) -> LoadedVersion:
    """Verify checksums, load and warm up one version (blocking; run it in a thread)."""
    start = time.perf_counter()
    try:
        verify_manifest(entry.path)
    except RepositoryError as e:
        raise LoadError(e.message) from e
    model = load(entry.path, config)
    if config.warmup:
        try:
            model.warmup()
        except EdgeInferError as e:
            model.close()
            raise LoadError(f"{entry.model} v{entry.version}: warm-up failed: {e.message}") from e
    log.info(
        "loaded %s v%d in %.0f ms", entry.model, entry.version, (time.perf_counter() - start) * 1e3
    )
    return LoadedVersion(
        name=entry.model,
        version=entry.version,
        model=model,
        config=config,
        stats=VersionStats(entry.model, str(entry.version)),
    )

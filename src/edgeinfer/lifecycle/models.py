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
from edgeinfer.serving.batcher import BatchPolicy
from edgeinfer.serving.runner import Runner
from edgeinfer.serving.scheduler import Scheduler
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
    instances: list[Model]
    config: ModelConfig
    stats: VersionStats
    scheduler: Scheduler | None = None  # created on the event loop by the engine
    loaded_at: float = field(default_factory=time.time)

    @property
    def model(self) -> Model:
        """The first instance: all instances share inputs, outputs and behaviour."""
        return self.instances[0]

    def start(self, runner: Runner) -> None:
        self.scheduler = Scheduler(
            self.instances,
            batch_policy(self.config),
            runner,
            self.stats,
            dynamic=self.config.dynamic_batching is not None,
            batch_axis=self.config.max_batch_size > 0,
        )


def batch_policy(config: ModelConfig) -> BatchPolicy:
    q, db = config.queue, config.dynamic_batching
    return BatchPolicy(
        max_batch_size=config.max_batch_size if db else 1,
        preferred_batch_sizes=db.preferred_batch_sizes if db else (),
        max_queue_delay_us=db.max_queue_delay_us if db else 0,
        max_queue_size=q.max_queue_size,
        priority_levels=q.priority_levels,
        default_priority_level=q.default_priority_level,
        default_timeout_us=q.default_timeout_us,
        timeout_action=q.timeout_action,
    )


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
    instances: list[Model] = []
    try:
        for _ in range(config.instance_count):
            model = load(entry.path, config)
            instances.append(model)
            if config.warmup:
                model.warmup()
    except EdgeInferError as e:
        for m in instances:
            m.close()
        if isinstance(e, LoadError):
            raise
        raise LoadError(f"{entry.model} v{entry.version}: warm-up failed: {e.message}") from e
    log.info(
        "loaded %s v%d in %.0f ms", entry.model, entry.version, (time.perf_counter() - start) * 1e3
    )
    return LoadedVersion(
        name=entry.model,
        version=entry.version,
        instances=instances,
        config=config,
        stats=VersionStats(entry.model, str(entry.version)),
    )

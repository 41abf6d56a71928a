"""The live state of each model: its loaded versions and their handles."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import cast

from edgeinfer.config import ModelConfig
from edgeinfer.errors import EdgeInferError, RepositoryError
from edgeinfer.lifecycle.verify import VerifyError, check_golden, check_report
from edgeinfer.repository import MANIFEST_NAME, VersionEntry, verify_manifest
from edgeinfer.runtime import Backend, Model, close_all, load_instances, resolve
from edgeinfer.runtime.memory import release_free_memory
from edgeinfer.serving.batcher import BatchPolicy
from edgeinfer.serving.classification import read_labels
from edgeinfer.serving.llm_loop import LlmBackend, LlmLoop, LoopLimits
from edgeinfer.serving.runner import Runner
from edgeinfer.serving.scheduler import Scheduler
from edgeinfer.telemetry.metrics import LlmStats
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
    backend: Backend  # from runtime.BACKENDS: its kind says what queues the requests
    model_file: Path
    digest: str = ""  # sha256 of the manifest: a changed manifest means a changed version
    measured_bytes: int = 0  # process RSS growth across the load (after malloc_trim)
    # Created on the event loop by start(): a Scheduler (tensor) or an LlmLoop (llm) by kind.
    queue: Scheduler | LlmLoop | None = None
    loaded_at: float = field(default_factory=time.time)
    labels: dict[str, list[str]] = field(default_factory=dict)  # output -> class labels

    @property
    def model(self) -> Model:
        """The first instance: all instances share inputs, outputs and behaviour."""
        return self.instances[0]

    @property
    def scheduler(self) -> Scheduler | None:
        return self.queue if isinstance(self.queue, Scheduler) else None

    @property
    def llm(self) -> LlmLoop | None:
        return self.queue if isinstance(self.queue, LlmLoop) else None

    @property
    def generates(self) -> bool:
        return self.backend.kind == "llm"

    @property
    def healthy(self) -> bool:
        """False while a worker of this version (or its LLM engine thread) is down (crashed,
        waiting for its restart)."""
        return (self.scheduler is None or self.scheduler.healthy) and (
            self.llm is None or self.llm.healthy
        )

    def start(
        self,
        runner: Runner,
        capacity: Callable[[], tuple[float, str]] | None = None,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        if self.generates:
            o = self.config.llm
            limits = LoopLimits(
                o.slots,
                o.context_length,
                o.kv_cells,
                o.prefill_chunk,
                self.config.queue.max_queue_size,
                max_loras=o.max_loras,
                max_lora_wait=o.max_lora_wait,
                steps_per_switch=o.lora_steps_per_switch,
                prefix_cache=o.prefix_cache,
            )
            backend = cast(LlmBackend, self.model)  # kind "llm": its models are LlmBackends
            self.queue = LlmLoop(backend, limits, LlmStats(self.name), self.stats)
            return
        self.queue = Scheduler(
            self.instances,
            batch_policy(self.config),
            runner,
            self.stats,
            dynamic=self.config.dynamic_batching is not None,
            batch_axis=self.config.max_batch_size > 0,
            capacity=capacity,
            on_restart=on_restart,
        )

    async def close(self, drain: bool = True) -> None:
        """Stop taking requests, finish (with `drain`) the ones in flight, release the model."""
        if self.queue is not None:
            await self.queue.close(drain=drain)


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


def manifest_digest(version_dir: Path) -> str:
    try:
        return hashlib.sha256((version_dir / MANIFEST_NAME).read_bytes()).hexdigest()
    except OSError:
        return ""


def load_version(entry: VersionEntry, config: ModelConfig) -> LoadedVersion:
    """Verify checksums, load, warm up and verify one version (blocking; run it in a thread).
    Raises VerifyError (a LoadError) with a `reason` for the load-failure metric."""
    start = time.perf_counter()
    rss_before = _rss()
    digest = manifest_digest(entry.path)
    try:
        verify_manifest(entry.path)
    except RepositoryError as e:
        raise VerifyError(e.message, "checksum") from e
    check_report(entry.path)
    try:
        labels = read_labels(entry.path, config)
    except EdgeInferError as e:
        raise VerifyError(f"{entry.model} v{entry.version}: {e.message}", "load") from e
    backend, model_file = _resolve(entry.path, config)
    try:
        instances = load_instances(entry.path, config)
    except EdgeInferError as e:
        raise VerifyError(e.message, "load") from e
    _verify(entry, config, instances)
    release_free_memory()  # loading leaves large temporaries behind in the heap
    measured = max(0, _rss() - rss_before)
    log.info(
        "loaded %s v%d in %.0f ms (RSS +%.1f MB)",
        entry.model,
        entry.version,
        (time.perf_counter() - start) * 1e3,
        measured / 2**20,
    )
    return LoadedVersion(
        name=entry.model,
        version=entry.version,
        instances=instances,
        config=config,
        digest=digest,
        measured_bytes=measured,
        stats=VersionStats(entry.model, str(entry.version)),
        backend=backend,
        model_file=model_file,
        labels=labels,
    )


def _verify(entry: VersionEntry, config: ModelConfig, instances: list[Model]) -> None:
    """Warm up every instance and check the golden cases; on failure release them all."""
    try:
        if config.warmup:
            for model in instances:
                model.warmup()
    except EdgeInferError as e:
        close_all(instances)
        raise VerifyError(
            f"{entry.model} v{entry.version}: warm-up failed: {e.message}", "warmup"
        ) from e
    try:
        check_golden(
            instances[0], entry.path, config.lifecycle.golden_rtol, config.lifecycle.golden_atol
        )
    except EdgeInferError as e:
        close_all(instances)
        if isinstance(e, VerifyError):
            raise
        raise VerifyError(e.message, "load") from e


def _resolve(version_dir: Path, config: ModelConfig) -> tuple[Backend, Path]:
    try:
        return resolve(version_dir, config)
    except EdgeInferError as e:
        raise VerifyError(e.message, "load") from e


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0

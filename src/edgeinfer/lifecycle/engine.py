"""The Engine: the one narrow interface the HTTP and gRPC handlers call."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from edgeinfer.config import ModelConfig, ServerSettings
from edgeinfer.errors import (
    BackendError,
    DeadlineExceeded,
    EdgeInferError,
    InvalidInput,
    LoadError,
    ModelNotFound,
    ModelNotReady,
    QueueFull,
    Unavailable,
)
from edgeinfer.lifecycle.models import LoadedVersion, ModelSlot, State, load_version
from edgeinfer.lifecycle.triton_config import triton_model_config
from edgeinfer.repository import Repository
from edgeinfer.serving.runner import Runner
from edgeinfer.serving.validation import validate_request
from edgeinfer.telemetry.metrics import VersionSample, build_registry, exposition
from edgeinfer.types import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelStatus,
    Tensor,
)

log = logging.getLogger("edgeinfer.engine")


class Engine:
    def __init__(self, repository: Repository, settings: ServerSettings) -> None:
        self.repository = repository
        self.settings = settings
        self.runner = Runner()
        self._slots: dict[str, ModelSlot] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._expected: set[str] = set()  # models that should be loaded for readiness
        self._closing = False
        self._retiring: set[asyncio.Task[None]] = set()
        self._metrics = build_registry(self._metric_samples)

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        names = self.repository.model_names()
        wanted = self.settings.load_models
        if self.settings.model_control == "explicit" and "*" not in wanted:
            unknown = sorted(set(wanted) - set(names))
            if unknown:
                raise ModelNotFound(f"--load-model names models not in the repository: {unknown}")
            names = [n for n in names if n in wanted]
        for name in names:
            try:
                await self.load(name, _internal=True)
            except EdgeInferError as e:
                log.warning("model %s failed to load: %s", name, e.message)

    async def close(self) -> None:
        self._closing = True
        slots, self._slots = self._slots, {}
        for slot in slots.values():
            self._retire(slot.versions.values())
        await asyncio.gather(*self._retiring, return_exceptions=True)
        self.runner.shutdown()

    def live(self) -> bool:
        return not self._closing

    def ready(self) -> bool:
        if self._closing:
            return False
        slots = self._slots
        return all(n in slots and slots[n].state == State.READY for n in self._expected)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _check_control(self) -> None:
        if self.settings.model_control == "none":
            raise Unavailable(
                "model control is 'none': start the server with --model-control explicit to load or unload models"
            )

    async def load(self, name: str, *, _internal: bool = False) -> None:
        """Load (or reload) every version the model's policy selects. Old versions keep serving
        until the new set is ready; a failure leaves what was live in place."""
        if not _internal:
            self._check_control()
        if name not in self.repository.model_names():
            raise ModelNotFound(f"model '{name}' is not in the repository")
        async with self._lock(name):
            entry = await asyncio.to_thread(self.repository.model, name)
            self._expected.add(name)
            slot = self._slots.get(name) or ModelSlot(name)
            self._slots[name] = slot
            selected = entry.selected()
            if not selected:
                slot.state, slot.reason = State.UNAVAILABLE, "no published version on disk"
                raise LoadError(f"model '{name}' has no published version in {entry.path}")
            if not slot.versions:
                slot.state, slot.reason = State.LOADING, "loading"
            loaded: dict[int, LoadedVersion] = {}
            failures: dict[int, str] = {}
            for ventry in selected:
                try:
                    h = await asyncio.to_thread(load_version, ventry, entry.config)
                    h.start(self.runner)
                    loaded[ventry.version] = h
                except EdgeInferError as e:
                    failures[ventry.version] = e.message
                    log.warning("%s v%d: %s", name, ventry.version, e.message)
            slot.failures = failures
            if not loaded:
                if not slot.versions:
                    slot.state, slot.reason = State.UNAVAILABLE, "; ".join(failures.values())
                raise LoadError(f"model '{name}' failed to load: " + "; ".join(failures.values()))
            # One reference assignment swaps the live set; in-flight requests keep their handle.
            old = slot.versions
            slot.config, slot.versions = entry.config, loaded
            slot.state, slot.reason = State.READY, ""
            self._retire(old.values())

    async def unload(self, name: str) -> None:
        self._check_control()
        async with self._lock(name):
            slot = self._slots.get(name)
            if slot is None:
                if name not in self.repository.model_names():
                    raise ModelNotFound(f"model '{name}' is not in the repository")
                return
            self._expected.discard(name)
            old, slot.versions = slot.versions, {}
            slot.state, slot.reason = State.UNAVAILABLE, "unloaded"
            self._retire(old.values())

    def _retire(self, handles: Iterable[LoadedVersion]) -> None:
        """Drain and release replaced versions in the background: requests that already hold
        them finish on them; the sessions are freed when the last one is done."""
        for h in handles:
            if h.scheduler is not None:
                task = asyncio.create_task(h.scheduler.close(drain=True))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)

    # ---- lookups ---------------------------------------------------------------------------
    def _slot(self, name: str) -> ModelSlot:
        slot = self._slots.get(name)
        if slot is None or (not slot.versions and slot.state != State.LOADING):
            if slot is None and name not in self.repository.model_names():
                raise ModelNotFound(f"model '{name}' is not in the repository")
            reason = slot.reason if slot else "not loaded"
            raise ModelNotReady(f"model '{name}' is not ready: {reason}")
        return slot

    def handle(self, name: str, version: str | None = None) -> LoadedVersion:
        slot = self._slots.get(name)
        if slot is None or not slot.versions:
            self._slot(name)  # raises the right error
            raise ModelNotReady(f"model '{name}' is loading")
        versions = slot.versions
        if not version:
            return versions[max(versions)]
        try:
            v = int(version)
        except ValueError:
            raise ModelNotFound(f"model '{name}' has no version '{version}'") from None
        if v not in versions:
            raise ModelNotFound(
                f"model '{name}' version {v} is not loaded; loaded: {sorted(versions)}"
            )
        return versions[v]

    def model_ready(self, name: str, version: str | None = None) -> bool:
        try:
            self.handle(name, version)
            return True
        except EdgeInferError:
            return False

    def metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        h = self.handle(name, version)
        versions = (
            (str(h.version),)
            if version
            else tuple(str(v) for v in sorted(self._slots[name].versions))
        )
        return ModelMetadata(
            name=name,
            versions=versions,
            platform=h.model.platform,
            inputs=h.model.inputs,
            outputs=h.model.outputs,
        )

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        h = self.handle(name, version)
        return triton_model_config(h.config, h.model)

    def statistics(
        self, name: str | None = None, version: str | None = None
    ) -> list[dict[str, Any]]:
        if name:
            handles = (
                [self.handle(name, version)]
                if version
                else list(self._slot(name).versions.values())
            )
        else:
            handles = [h for s in self._slots.values() for h in s.versions.values()]
        return [h.stats.as_dict() for h in handles]

    def index(self, ready_only: bool = False) -> list[ModelStatus]:
        out: list[ModelStatus] = []
        for name in self.repository.model_names():
            slot = self._slots.get(name)
            if slot and slot.versions:
                out += [ModelStatus(name, str(v), "READY") for v in sorted(slot.versions)]
                out += [ModelStatus(name, str(v), "UNAVAILABLE", r)
                        for v, r in sorted(slot.failures.items()) if v not in slot.versions]  # fmt: skip
            elif not ready_only:
                state = slot.state.value if slot else "UNAVAILABLE"
                out.append(ModelStatus(name, "", state, slot.reason if slot else "not loaded"))
        return [s for s in out if s.state == "READY"] if ready_only else out

    def ready_models(self) -> list[tuple[str, ModelConfig, ModelMetadata]]:
        return [(n, s.config, self.metadata(n)) for n, s in self._slots.items()
                if s.versions and s.config is not None]  # fmt: skip

    def _metric_samples(self) -> list[VersionSample]:
        return [
            VersionSample(
                h.stats,
                h.scheduler.pending if h.scheduler else 0,
                h.scheduler.running if h.scheduler else 0,
            )
            for slot in list(self._slots.values())
            for h in slot.versions.values()
        ]

    def metrics(self) -> bytes:
        """Prometheus text exposition of every metric."""
        return exposition(self._metrics)

    def count_tokens(self, name: str, texts: list[str]) -> int:
        """Tokens the model's tokenizer makes of `texts` (0 for models without one)."""
        tokenize = getattr(self.handle(name).model, "tokenize", None)
        if tokenize is None:
            return 0
        return int(tokenize(texts)["attention_mask"].sum())

    # ---- inference -------------------------------------------------------------------------
    async def infer(self, request: InferRequest) -> InferResponse:
        if self._closing:
            raise Unavailable("server is shutting down")
        start = time.perf_counter_ns()
        h = self.handle(request.model, request.version)
        assert h.scheduler is not None
        try:
            feeds, names = validate_request(
                request, h.model.inputs, h.model.outputs, h.config.max_batch_size
            )
            priority, timeout_us = _queue_params(request.parameters)
            results, t = await h.scheduler.submit(feeds, priority, timeout_us)
        except asyncio.CancelledError:
            h.stats.record_failure(time.perf_counter_ns() - start, "CANCELED")
            raise
        except EdgeInferError as e:
            h.stats.record_failure(time.perf_counter_ns() - start, _failure_reason(e))
            raise
        outputs = [Tensor(n, results[n]) for n in (names or results)]
        h.stats.record_success(
            time.perf_counter_ns() - start, t.queue_ns, t.input_ns, t.infer_ns, t.output_ns
        )
        return InferResponse(
            model=request.model, version=str(h.version), outputs=outputs, id=request.id
        )


def _queue_params(params: dict[str, Any]) -> tuple[int, int]:
    """The request's priority and timeout (µs) from KServe/Triton request parameters."""
    out = []
    for key in ("priority", "timeout"):
        value = params.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidInput(f"parameter '{key}' must be a non-negative integer, got {value!r}")
        out.append(value)
    return out[0], out[1]


def _failure_reason(e: EdgeInferError) -> str:
    """Triton's nv_inference_request_failure reasons."""
    if isinstance(e, QueueFull | Unavailable | DeadlineExceeded):
        return "REJECTED"
    if isinstance(e, BackendError):
        return "BACKEND"
    return "OTHER"

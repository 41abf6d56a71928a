"""The Engine: the one narrow interface the HTTP and gRPC handlers call."""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from edgeinfer.adapters import AdapterManager
from edgeinfer.adapters.metrics import AdapterCollector
from edgeinfer.config import ModelConfig, ServerSettings
from edgeinfer.errors import (
    EdgeInferError,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    Unavailable,
)
from edgeinfer.hardware import (
    GovernorSnapshot,
    MemoryBudget,
)
from edgeinfer.lifecycle import samples
from edgeinfer.lifecycle.budget import device_guards
from edgeinfer.lifecycle.inference import Inference
from edgeinfer.lifecycle.manager import ModelManager
from edgeinfer.lifecycle.models import LoadedVersion, State
from edgeinfer.lifecycle.status import LifecycleStatus, index_rows, status_of
from edgeinfer.lifecycle.triton_config import triton_model_config
from edgeinfer.repository import Repository
from edgeinfer.serving.llm_loop import GenerateRequest, GenerationStream
from edgeinfer.serving.runner import Runner
from edgeinfer.serving.supervisor import supervise, within
from edgeinfer.telemetry.metrics import (
    LlmCollector,
    LlmSample,
    RestartCounts,
    VersionSample,
    build_registry,
    exposition,
)
from edgeinfer.telemetry.tracing import RequestTrace, Tracer
from edgeinfer.types import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelStatus,
)

log = logging.getLogger("edgeinfer.engine")


class Engine:
    def __init__(
        self, repository: Repository, settings: ServerSettings, tracer: Tracer | None = None
    ) -> None:
        self.repository = repository
        self._user_overrides = copy.deepcopy(repository.overrides)  # --set, before any pin
        self.settings = settings
        self.tracer = tracer  # None: tracing off; handlers start request spans on it
        self.runner = Runner()
        self._models: dict[str, ModelManager] = {}
        self._expected: set[str] = set()  # models that should be loaded for readiness
        self._ready_gates: list[Callable[[], bool]] = []
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self.load_failures: dict[tuple[str, int, str], int] = {}
        self.last_failures: dict[str, list[dict[str, Any]]] = {}
        self.governor, self.gate = device_guards(settings, self._evict)
        models = self._managers
        self._metrics = build_registry(
            self.version_samples,
            lambda: samples.lifecycle(models(), self.load_failures),
            lambda: samples.device(models(), self.governor, self.gate),
        )
        self._metrics.register(LlmCollector(self.llm_samples))
        self.restarts = RestartCounts()  # crashed workers and tasks restarted
        self._metrics.register(self.restarts)
        adapter_budget = (
            MemoryBudget(settings.adapter_budget_mb * 2**20)
            if settings.adapter_budget_mb
            else self.gate.budget
            if self.gate
            else None
        )
        self.adapters = AdapterManager(repository.root, adapter_budget)
        self.adapters.stats.per_request = settings.metrics
        self._metrics.register(AdapterCollector(self.adapters, lambda: samples.loras(models())))
        self._inference = Inference(settings, self.runner, self.adapters)

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
        self.supervise("automatic rollback monitor", "monitor", self._monitor)
        if self.settings.model_control == "poll":
            from edgeinfer.lifecycle.watcher import watch_repository

            self.supervise(
                "repository watcher", "watcher", functools.partial(watch_repository, self)
            )

    def supervise(self, what: str, task: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run a server-wide loop, restarted if it crashes (counted), cancelled by close()."""
        self._tasks.append(
            asyncio.create_task(
                supervise(what, run, on_restart=functools.partial(self.restarts.add, "", task))
            )
        )

    async def close(self, timeout: float = 40.0) -> None:
        """Stop the loops, let queued requests finish (each scheduler drains for up to 30 s)
        and release the models. Nothing here waits longer than `timeout`: a stuck step is left
        behind with a warning, so the process still exits."""
        self._closing = True
        for t in self._tasks:
            t.cancel()
        await within(5.0, "stopping the engine's tasks", *self._tasks)
        managers, self._models = list(self._models.values()), {}
        for m in managers:
            await m.unload()
        drained = await within(timeout, "draining the models", *(m.drained() for m in managers))
        self.runner.shutdown(wait=drained)

    def end_generations(self) -> None:
        """The server is stopping: every text generation ends now with an error (a stream
        gets a last error event) instead of holding the shutdown until it completes."""
        for m in list(self._models.values()):
            for h in m.versions.values():
                if h.llm is not None:
                    h.llm.shutdown()

    def live(self) -> bool:
        return not self._closing

    def ready(self) -> bool:
        """Every model that should serve (loaded successfully and not unloaded since) serves:
        loaded, and none of its workers down."""
        if self._closing or not all(gate() for gate in self._ready_gates):
            return False
        models = self._models
        return all(n in models and models[n].ready for n in self._expected)

    def add_ready_gate(self, gate: Callable[[], bool]) -> None:
        """Readiness also waits for `gate()` (e.g. the fleet's first convergence)."""
        self._ready_gates.append(gate)

    def _check_control(self) -> None:
        if self.settings.model_control == "none":
            raise Unavailable(
                "model control is 'none': start the server with --model-control explicit "
                "or poll to load, unload or roll back models"
            )

    def _manager(self, name: str, create: bool = False) -> ModelManager:
        m = self._models.get(name)
        if m is None:
            if name not in self.repository.model_names():
                raise ModelNotFound(f"model '{name}' is not in the repository")
            if not create:
                raise ModelNotReady(f"model '{name}' is not ready: not loaded")
            m = self._models[name] = ModelManager(
                name,
                self.repository,
                self.runner,
                self._record_failure,
                self.gate,
                self.governor.capacity,
                record_stats=self.settings.metrics,
                restarts=self.restarts,
            )
        return m

    async def _evict(self, model: str, version: int) -> bool:
        m = self._models.get(model)
        return await m.evict(version) if m is not None else False

    def _record_failure(self, model: str, version: int, reason: str, message: str) -> None:
        key = (model, version, reason)
        self.load_failures[key] = self.load_failures.get(key, 0) + 1
        recent = self.last_failures.setdefault(model, [])
        recent.append(
            {
                "version": str(version),
                "reason": reason,
                "message": message,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
        del recent[:-10]

    async def load(self, name: str, *, _internal: bool = False, force: bool = True) -> None:
        """Load or reload a model: new or changed versions are verified in the background and
        swapped in; a failure leaves what was live in place."""
        if not _internal:
            self._check_control()
        manager = self._manager(name, create=True)  # ModelNotFound before anything changes
        try:
            await manager.reconcile(force=force)
        finally:
            # Readiness waits for a model only once it served: a failed first load of a broken
            # model leaves the server's readiness as it was (the model itself is not ready).
            if manager.status == State.READY:
                self._expected.add(name)

    async def unload(self, name: str) -> None:
        self._check_control()
        self._expected.discard(name)
        m = self._models.get(name)
        if m is None:
            self._manager(name)  # ModelNotFound for unknown names
            return
        await m.unload()

    async def rollback(self, name: str, to: int | None = None) -> int:
        self._check_control()
        return await self._manager(name).rollback(to)

    async def set_canary(self, name: str, version: int | None, weight: float = 0.0) -> None:
        self._check_control()
        await self._manager(name).set_canary(version, weight)

    async def promote(self, name: str) -> int:
        self._check_control()
        return await self._manager(name).promote()

    def lifecycle_status(self, name: str) -> LifecycleStatus:
        gate = self.gate

        def estimate(version: int) -> int | None:
            return gate.estimates.get(f"{name}:v{version}") if gate else None

        return status_of(self._manager(name), self.last_failures.get(name, []), estimate)

    def pin_version(self, name: str, version: int | None) -> None:
        """Serve exactly `version` as the version policy's choice, on top of the user's --set
        overrides (the fleet decides what goes live); None: the configured policy again."""
        base = self._user_overrides.get(name, {})
        if version is None:
            if base:
                self.repository.overrides[name] = copy.deepcopy(base)
            else:
                self.repository.overrides.pop(name, None)
            return
        self.repository.overrides[name] = {**base, "version_policy": {"specific": [version]}}

    def device_snapshot(self) -> GovernorSnapshot:
        """The latest hardware reading and the capacity factor it gives."""
        return self.governor.snapshot()

    async def _monitor(self) -> None:
        """Once a second: automatic rollback of regressed new versions; restart of dead LLM
        engine threads."""
        while True:
            await asyncio.sleep(1.0)
            for h in [h for m in list(self._models.values()) for h in m.versions.values()]:
                if h.llm is not None:
                    h.llm.revive()
            for m in list(self._models.values()):
                try:
                    await m.check_health(time.monotonic())
                except EdgeInferError as e:
                    log.warning("automatic rollback of %s failed: %s", m.name, e.message)
                except Exception:  # one model's fault must not stop the checks of the others
                    log.exception("automatic rollback check of %s crashed", m.name)

    # ---- lookups ---------------------------------------------------------------------------
    def handle(
        self,
        name: str,
        version: str | None = None,
        params: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> LoadedVersion:
        return self._manager(name).handle(version, params or {}, metadata or {})

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Loaded and serving: False also while one of its workers is down."""
        try:
            h = self.handle(name, version)
        except EdgeInferError:
            return False
        return h.healthy if version else self._models[name].ready

    def metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        h = self.handle(name, version)
        versions = (
            (str(h.version),)
            if version
            else tuple(str(v) for v in sorted(self._models[name].versions))
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
        return triton_model_config(h.config, h.model, h.backend.name)

    def statistics(
        self, name: str | None = None, version: str | None = None
    ) -> list[dict[str, Any]]:
        if name:
            handles = (
                [self.handle(name, version)]
                if version
                else list(self._manager(name).versions.values())
            )
        else:
            handles = [h for m in self._models.values() for h in m.versions.values()]
        return [h.stats.as_dict() for h in handles]

    def index(self, ready_only: bool = False) -> list[ModelStatus]:
        return index_rows(self.repository.model_names(), self._models, ready_only)

    def ready_models(self) -> list[tuple[str, ModelConfig, ModelMetadata]]:
        return [
            (n, m.config, self.metadata(n))
            for n, m in list(self._models.items())
            if m.versions and m.config is not None
        ]

    def _managers(self) -> list[ModelManager]:
        return list(self._models.values())

    def version_samples(self) -> list[VersionSample]:
        return samples.versions(self._managers())

    def llm_samples(self) -> list[LlmSample]:
        return samples.llms(self._managers())

    async def profile(
        self, name: str, version: str | None = None, batch: int = 1, runs: int = 10
    ) -> dict[str, Any]:
        """Per-layer profile of a loaded version, run on a separate ONNX Runtime session in a
        worker thread: the live session and its queue are not touched."""
        from edgeinfer.runtime.profile import profile_model

        h = self.handle(name, version)
        entry = await asyncio.to_thread(self.repository.model, name)
        path = next((v.path for v in entry.versions if v.version == h.version), None)
        if path is None:
            raise ModelNotFound(f"model '{name}' version {h.version} is no longer on disk")
        doc = await asyncio.to_thread(profile_model, path, h.config, batch, runs)
        return {"model": name, "version": str(h.version), **doc}

    def register_collector(self, collector: Any) -> None:
        """Add a Prometheus collector (e.g. the server's authentication counters)."""
        self._metrics.register(collector)

    def metrics(self) -> bytes:
        """Prometheus text exposition of every metric."""
        return exposition(self._metrics)

    async def count_tokens(self, name: str, texts: list[str]) -> int:
        """Tokens the model's tokenizer makes of `texts` (0 for models without one), counted
        in a worker thread: tokenizing is proportional to the text."""
        tokenize = getattr(self.handle(name).model, "tokenize", None)
        if tokenize is None:
            return 0
        feeds = await asyncio.to_thread(tokenize, texts)
        return int(feeds["attention_mask"].sum())

    # ---- inference -------------------------------------------------------------------------
    async def infer(
        self, request: InferRequest, trace: RequestTrace | None = None
    ) -> InferResponse:
        """Run one request. `trace` (from `self.tracer`) gets its queue and batch spans."""
        if self._closing:
            raise Unavailable("server is shutting down")
        start = time.perf_counter_ns()
        model, adapter = self.split_model(request.model, request.parameters.get("adapter"))
        h = self.handle(model, request.version, request.parameters, request.metadata)
        if h.llm is not None:
            raise InvalidInput(
                f"model '{request.model}' generates text: use /v1/completions, "
                f"/v1/chat/completions or /v2/models/{request.model}/generate"
            )
        return await self._inference.infer(h, request, model, adapter, trace, start)

    async def generate(self, request: GenerateRequest) -> GenerationStream:
        """Start a generation on a llama.cpp model. Raises before any work when it cannot be
        served (unknown model, over the context length, queue full); iterate the stream for
        chunks. Leaving the iteration early cancels the generation."""
        if self._closing:
            raise Unavailable("server is shutting down")
        model_name, adapter = self.split_model(request.model, request.parameters.get("adapter"))
        h = self.handle(model_name, request.version, request.parameters, request.metadata)
        if h.llm is None:
            raise InvalidInput(f"model '{model_name}' is not a text generation model")
        return await self._inference.generate(h, request, model_name, adapter)

    # ---- adapters --------------------------------------------------------------------------
    def split_model(self, name: str, adapter: Any = None) -> tuple[str, str | None]:
        """`base:adapter` (as vLLM) -> (base, adapter); a request parameter `adapter` also
        selects one (KServe v2)."""
        if adapter is not None and not isinstance(adapter, str):
            raise InvalidInput("parameter 'adapter' must be a string")
        if ":" in name and name not in self._models:
            base, _, named = name.partition(":")
            return base, named or adapter
        return name, adapter or None

    def adapter_listing(self, tenant: str | None) -> list[str]:
        """`base:adapter` ids of the ready models' adapters this tenant may use."""
        models = [n for n, _, _ in self.ready_models()]
        return [f"{s.model}:{s.name}" for s in self.adapters.visible(models, tenant)]

    async def load_adapter(
        self, name: str, path: str, tenants: list[str] | None = None, scale: float = 1.0
    ) -> str:
        """Register an adapter (`base:adapter`) from a GGUF LoRA / .onnx_adapter file, an
        adapter version directory or a PEFT directory (converted for the base model), found
        under the base model's own adapters or a directory allowed by --adapter-dir."""
        base, adapter = self._lora_name(name)
        self._manager(base)  # ModelNotFound for unknown bases
        h = self.handle(base)
        await self.adapters.load_path(
            base, adapter, path, h.model_file, tenants, scale, self.settings.adapter_dirs
        )
        return f"{base}:{adapter}"

    def unload_adapter(self, name: str) -> str:
        base, adapter = self._lora_name(name)
        self.adapters.unregister(base, adapter)
        return f"{base}:{adapter}"

    def _lora_name(self, name: str) -> tuple[str, str]:
        base, adapter = self.split_model(name)
        if adapter is None:
            raise InvalidInput("'lora_name' must be 'base_model:adapter_name'")
        return base, adapter

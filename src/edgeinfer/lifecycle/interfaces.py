"""The Engine as its callers see it: two narrow interfaces instead of one wide facade.

`EngineClient` is what protocol handlers need to serve requests (the data path); `EngineControl`
is what the admin routes, the CLI, the dashboard and the fleet agent need to change and observe
what is served. `lifecycle.Engine` implements both; a module that takes an `EngineClient` cannot
load, unload or roll back a model (mypy checks it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from edgeinfer.config import ModelConfig
    from edgeinfer.hardware import GovernorSnapshot
    from edgeinfer.lifecycle.status import LifecycleStatus
    from edgeinfer.serving.llm_request import GenerateRequest, GenerationStream
    from edgeinfer.telemetry.metrics import LlmSample, VersionSample
    from edgeinfer.telemetry.tracing import RequestTrace, Tracer
    from edgeinfer.types import (
        InferRequest,
        InferResponse,
        ModelMetadata,
        ModelStatus,
    )


class EngineClient(Protocol):
    """Serving requests: health, metadata, inference, generation, embeddings' token counts."""

    tracer: Tracer | None

    def live(self) -> bool: ...

    def ready(self) -> bool: ...

    def model_ready(self, name: str, version: str | None = None) -> bool: ...

    def metadata(self, name: str, version: str | None = None) -> ModelMetadata: ...

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]: ...

    def statistics(
        self, name: str | None = None, version: str | None = None
    ) -> list[dict[str, Any]]: ...

    def ready_models(self) -> list[tuple[str, ModelConfig, ModelMetadata]]: ...

    async def count_tokens(self, name: str, texts: list[str]) -> int: ...

    def adapter_listing(self, tenant: str | None) -> list[str]: ...

    async def infer(
        self, request: InferRequest, trace: RequestTrace | None = None
    ) -> InferResponse: ...

    async def generate(self, request: GenerateRequest) -> GenerationStream: ...

    def metrics(self) -> bytes: ...

    def lifecycle_status(self, name: str) -> LifecycleStatus:
        """Read-only: Triton's model statistics carry it."""
        ...


class EngineControl(Protocol):
    """Changing and observing what is served: loads, lifecycle actions, adapters, profiles,
    typed status for the fleet agent and the dashboard."""

    def ready(self) -> bool: ...

    def model_ready(self, name: str, version: str | None = None) -> bool: ...

    def index(self, ready_only: bool = False) -> list[ModelStatus]: ...

    async def load(self, name: str, *, _internal: bool = False, force: bool = True) -> None: ...

    async def unload(self, name: str) -> None: ...

    async def rollback(self, name: str, to: int | None = None) -> int: ...

    async def set_canary(self, name: str, version: int | None, weight: float = 0.0) -> None: ...

    async def promote(self, name: str) -> int: ...

    def lifecycle_status(self, name: str) -> LifecycleStatus: ...

    def pin_version(self, name: str, version: int | None) -> None: ...

    async def profile(
        self, name: str, version: str | None = None, batch: int = 1, runs: int = 10
    ) -> dict[str, Any]: ...

    async def load_adapter(
        self, name: str, path: str, tenants: list[str] | None = None, scale: float = 1.0
    ) -> str: ...

    def unload_adapter(self, name: str) -> str: ...

    def device_snapshot(self) -> GovernorSnapshot: ...

    def version_samples(self) -> list[VersionSample]: ...

    def llm_samples(self) -> list[LlmSample]: ...

"""One request on the model version the Engine chose for it: tensors through the batching
scheduler, text through the LLM loop, each holding its adapter's lease while it runs."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import numpy as np

from edgeinfer.adapters import AdapterManager, Lease
from edgeinfer.auth import TENANT_IDENTITY
from edgeinfer.config import ServerSettings
from edgeinfer.errors import EdgeInferError
from edgeinfer.lifecycle.llm_prompt import native_tools, prompt_tokens, reply_params
from edgeinfer.lifecycle.models import LoadedVersion
from edgeinfer.serving.classification import class_counts, classify
from edgeinfer.serving.constrain import Constraints
from edgeinfer.serving.inputs import prepare_feeds
from edgeinfer.serving.llm_loop import GenerateRequest, GenerationStream
from edgeinfer.serving.runner import Runner
from edgeinfer.serving.validation import queue_params
from edgeinfer.telemetry.stats import failure_reason
from edgeinfer.telemetry.tracing import RequestTrace
from edgeinfer.types import InferRequest, InferResponse, Tensor

if TYPE_CHECKING:
    from edgeinfer.serving.scheduler import Scheduler, Timing


class Inference:
    """What every request shares: the worker threads, the adapters, the compiled grammars."""

    def __init__(
        self,
        settings: ServerSettings,
        runner: Runner,
        adapters: AdapterManager,
    ) -> None:
        self._settings = settings
        self._runner = runner
        self._adapters = adapters
        self._constraints = Constraints()  # structured outputs: grammars per request

    async def infer(
        self,
        h: LoadedVersion,
        request: InferRequest,
        model: str,
        adapter: str | None,
        trace: RequestTrace | None,
        start: int,
    ) -> InferResponse:
        """Run a tensor request on `h` (`model` with `adapter`, if any); its time counts from
        `start` (perf_counter_ns), when the Engine received it."""
        tenant = request.metadata.get(TENANT_IDENTITY)
        assert h.scheduler is not None
        if trace is not None:
            trace.set("edgeinfer.model.version", str(h.version))
        try:
            counts = class_counts(request.outputs, h.model.outputs)
            feeds, names = await prepare_feeds(
                request, h.model, h.config.max_batch_size, self._runner, self._settings.limits
            )
            priority, timeout_us = queue_params(request.parameters)
            self._adapters.record(tenant, model, request=True)
            lease = (
                await self._adapters.acquire(model, adapter, tenant, h.model) if adapter else None
            )
            results, t = await _submit(
                h.scheduler, feeds, lease, priority, timeout_us, trace, request.received_ns, names
            )
        except asyncio.CancelledError:
            h.stats.record_failure(time.perf_counter_ns() - start, "CANCELED")
            raise
        except EdgeInferError as e:
            h.stats.record_failure(time.perf_counter_ns() - start, failure_reason(e))
            raise
        batched = h.config.max_batch_size > 0
        outputs = [
            Tensor(
                n,
                classify(results[n], counts[n], h.labels.get(n, []), batched)
                if n in counts
                else results[n],
            )
            for n in (names or results)
        ]
        h.stats.record_success(
            time.perf_counter_ns() - start, t.queue_ns, t.input_ns, t.infer_ns, t.output_ns
        )
        return InferResponse(
            model=request.model, version=str(h.version), outputs=outputs, id=request.id
        )

    async def generate(
        self, h: LoadedVersion, request: GenerateRequest, model_name: str, adapter: str | None
    ) -> GenerationStream:
        """Start a generation on `h`, a llama.cpp model's version."""
        from edgeinfer.runtime.llm_llamacpp import LlamaCppModel

        tenant = request.metadata.get(TENANT_IDENTITY)
        assert h.llm is not None
        model = h.model
        assert isinstance(model, LlamaCppModel)
        request, tools = await native_tools(model, request)
        tokens = await prompt_tokens(model, request, h.config.llm.context_length, tools.tools)
        constraint = None
        if request.constraint is not None:
            constraint = await self._constraints.compile(model, request.constraint)
        lease: Lease | None = None
        if adapter:
            lease = await self._adapters.acquire(model_name, adapter, tenant, model, h.llm)
        self._adapters.record(tenant, model_name, request=True)

        def done(prompt_tokens: int, completion_tokens: int) -> None:
            self._adapters.record(tenant, model_name, prompt_tokens, completion_tokens)
            if lease is not None:
                lease.release()

        try:
            stream = h.llm.submit(
                tokens,
                reply_params(model, request),
                lease.loop_adapter if lease else None,
                done,
                constraint,
                cache_prompt=request.cache_prompt,
            )
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        stream.version = str(h.version)
        stream.tool_format = tools.format
        return stream


async def _submit(
    scheduler: Scheduler,
    feeds: dict[str, np.ndarray],
    lease: Lease | None,
    priority: int,
    timeout_us: int,
    trace: RequestTrace | None,
    received_ns: int,
    names: list[str] | None,
) -> tuple[dict[str, np.ndarray], Timing]:
    """Queue the request with its adapter: a per-run adapter object, or (for a model that takes
    an `adapter_index` input) that index on every row. The lease ends when the batch has run."""
    try:
        run_adapter = None
        if lease is not None and lease.run_adapter is not None:
            run_adapter = lease.run_adapter
        elif lease is not None:
            rows = next(iter(feeds.values())).shape[0]
            feeds = {**feeds, "adapter_index": np.full(rows, lease.index, np.int64)}
        return await scheduler.submit(
            feeds,
            priority,
            timeout_us,
            trace,
            adapter=run_adapter,
            received_ns=received_ns,
            outputs=tuple(names) if names else None,
        )
    finally:
        if lease is not None:
            lease.release()

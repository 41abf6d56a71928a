"""The LLM loop's types: limits, requests and the stream of chunks (the backend protocol and
the batch item are in runtime/llm_types.py)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgeinfer.serving.constrain import JsonConstraint, TokenConstraint
from edgeinfer.serving.sampling import Sampler, SamplingParams, TextStream, TokenLogprob

if TYPE_CHECKING:
    from edgeinfer.serving.llm_loop import LlmLoop


@dataclass(frozen=True)
class LoopLimits:
    slots: int
    context_length: int  # prompt + completion tokens of one request
    kv_cells: int  # KV-cache cells shared by all slots
    prefill_chunk: int  # prompt tokens per step
    max_waiting: int = 0  # 0: unbounded
    max_loras: int = 0  # adapter groups running at once (the base model counts); 0: unbounded
    max_lora_wait: float = 1.0  # seconds a request may be passed by requests of other adapters
    steps_per_switch: int = 8  # steps an adapter group keeps the context while others wait
    prefix_cache: bool = False  # reuse the KV cells of a slot's last request (prefix_cache.py)


@dataclass(frozen=True, eq=False)
class LoopAdapter:
    """A LoRA adapter resident in this loop's backend: `handle` from `backend.load_adapter`."""

    key: str
    handle: Any
    scale: float = 1.0


@dataclass(slots=True)
class GenerateRequest:
    """One generation, whatever protocol it came in on: a prompt (text or token ids) or chat
    messages rendered with the model's chat template."""

    model: str
    params: SamplingParams
    prompt: str | list[int] | None = None
    messages: list[dict[str, Any]] | None = None
    version: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)  # routing keys
    metadata: Mapping[str, str] = field(default_factory=dict)
    constraint: JsonConstraint | None = None  # structured output (serving/constrain.py)
    cache_prompt: bool = True  # False: prefill the whole prompt even if a slot holds a prefix


@dataclass(slots=True)
class GenChunk:
    """A piece of one generation. The last has `finish_reason` set ("stop" or "length")."""

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens whose KV cells were reused, not prefilled


_ids = itertools.count(1)


@dataclass(eq=False)
class Request:
    """The loop's state of one generation (the engine thread owns it once submitted)."""

    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    sampler: Sampler
    text: TextStream
    arrival: float
    out: asyncio.Queue[GenChunk | BaseException] = field(default_factory=asyncio.Queue)
    id: int = field(default_factory=lambda: next(_ids))
    seq: int = -1  # slot, once admitted
    prefilled: int = 0
    generated: list[int] = field(default_factory=list)
    cancelled: bool = False
    done: bool = False
    admitted_at: float = 0.0
    first_token_at: float = 0.0
    last_token_at: float = 0.0
    adapter: LoopAdapter | None = None
    on_done: Callable[[int, int], None] | None = None  # (prompt, generated) once retired
    constraint: TokenConstraint | None = None  # a grammar mask applied before sampling
    cache_prompt: bool = True  # may reuse a cached prefix (llama-server's name)
    cached: int = 0  # prompt tokens found in the slot's KV cells
    kv: int = 0  # positions of (prompt + generated) held in the slot's KV cells
    delivered_error: bool = False  # event loop only: nothing follows an error

    @property
    def adapter_key(self) -> str | None:
        return self.adapter.key if self.adapter is not None else None

    @property
    def need(self) -> int:
        return len(self.prompt) + self.max_tokens

    @property
    def decoding(self) -> bool:
        return self.prefilled == len(self.prompt) and bool(self.generated)


class GenerationStream:
    """What `submit` returns: iterate it for chunks. Leaving the iteration early (or being
    cancelled while waiting for a chunk) cancels the request."""

    def __init__(self, loop: LlmLoop, request: Request) -> None:
        self._loop = loop
        self._request = request
        self.prompt_tokens = len(request.prompt)
        self.max_tokens = request.max_tokens
        self.version = ""  # set by the engine: the model version serving this stream

    def __aiter__(self) -> AsyncIterator[GenChunk]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[GenChunk]:
        req = self._request
        try:
            while True:
                item = await req.out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            self.cancel()

    def cancel(self) -> None:
        self._loop.cancel(self._request)

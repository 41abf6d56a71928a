"""The LLM loop's types: limits, requests and the stream of chunks (the backend protocol and
the batch item are in runtime/llm_types.py)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeinfer.errors import InvalidInput
from edgeinfer.serving.constrain import Constraint, TokenConstraint
from edgeinfer.serving.prefix_cache import Source
from edgeinfer.serving.sampling import Sampler, SamplingParams, TextStream, TokenLogprob
from edgeinfer.serving.tool_formats import ToolSpec

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
    constraint: Constraint | None = None  # structured output (serving/constrain.py)
    tools: ToolSpec | None = None  # tool calling: the model's own format if it has one
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


def completion_budget(prompt: list[int], params: SamplingParams, limit: int, n_vocab: int) -> int:
    """The request's max_tokens (what is left of the context when unset); InvalidInput when the
    prompt is empty, holds an unknown token id or leaves no room for the completion."""
    n = len(prompt)
    if n == 0:
        raise InvalidInput("the prompt is empty")
    max_tokens = params.max_tokens if params.max_tokens is not None else limit - n
    if n + max_tokens > limit:
        raise InvalidInput(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{n + max_tokens} tokens ({n} in the prompt, {max_tokens} for the completion). "
            "Please reduce the prompt or max_tokens."
        )
    if any(not 0 <= t < n_vocab for t in prompt):
        raise InvalidInput(f"prompt token ids must be in [0, {n_vocab})")
    return max_tokens


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
    source: Source | None = None  # parked: waits for this running request's prompt cells
    want: int = 0  # ... up to this position, to copy them (prefix_cache.py)
    _ids: np.ndarray | None = None
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

    @property
    def ids(self) -> np.ndarray:
        """The prompt as an array, for prefix matching (made on the engine thread, once)."""
        if self._ids is None:
            self._ids = np.asarray(self.prompt, np.int32)
        return self._ids

    def chunk(
        self, text: str, token: int, logprob: TokenLogprob | None, reason: str | None
    ) -> GenChunk:
        """The chunk that streams `token` (its text, after stop-string holding)."""
        return GenChunk(
            text,
            [token],
            [logprob] if logprob else None,
            reason,
            len(self.prompt),
            len(self.generated),
            self.cached,
        )

    def ending(
        self, token: int, eog: frozenset[int], piece: Callable[[int], bytes]
    ) -> tuple[str | None, str]:
        """(finish reason or None, the text to send) after `token`. A constrained sequence
        ends with "stop" as soon as its grammar is complete."""
        p = self.params
        if token in p.stop_token_ids or (token in eog and not p.ignore_eos):
            return "stop", self.text.flush()
        complete = False
        if self.constraint is not None:
            complete = self.constraint.accept(token)
            if self.constraint.error:
                return "error", ""
        text, stopped = self.text.push(piece(token))
        if stopped:
            return "stop", text
        if complete:
            return "stop", text + self.text.flush()
        if len(self.generated) >= self.max_tokens:
            return "length", text + self.text.flush()
        return None, text


class GenerationStream:
    """What `submit` returns: iterate it for chunks. Leaving the iteration early (or being
    cancelled while waiting for a chunk) cancels the request."""

    def __init__(self, loop: LlmLoop, request: Request) -> None:
        self._loop = loop
        self._request = request
        self.prompt_tokens = len(request.prompt)
        self.max_tokens = request.max_tokens
        self.version = ""  # set by the engine: the model version serving this stream
        self.tool_format = ""  # set by the engine: the model's own tool-call format, if used

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

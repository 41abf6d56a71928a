"""Continuous batching for generation: admit, prefill in chunks, one decode for all, stream, retire.

Each step is schedule -> execute -> deliver:
- schedule (event loop thread): retire cancelled sequences and free their KV cells; admit waiting
  requests in arrival order while a slot is free and the KV budget holds their prompt plus
  max_tokens (reserved up front, so a running sequence never runs out of cells and nothing is
  ever preempted); then build ONE batch: the next token of every decoding sequence plus at most
  `prefill_chunk` prompt tokens of sequences still prefilling, so a long prompt never stalls
  the running streams for more than one chunk (with several LoRA adapters running, only the
  sequences of the adapter whose turn it is: see below).
- execute: the backend's single decode call (the GIL is released inside it);
- deliver: sample each logits row in numpy, hand the chunks to the event loop (one
  call_soon_threadsafe per step) where each request's queue feeds its stream, retire finished
  sequences and free their cells.

The steps run back to back on one engine thread per model version, not as `asyncio.to_thread`
calls from the event loop: on a shared 2-core CPU every thread handoff waits for a core, and the
two handoffs per step cost 2-3 ms (measured: 2.1-3.0 ms per token against 0.3 ms for the same
loop with the decode inline; ~15-20% of a 336M model's decode step). The engine thread never
waits for the event loop; the event loop only receives chunks, so HTTP handling and other models
keep running during decodes. State shared with the event loop is a deque (`waiting`, appended by
`submit`), per-request flags (`cancelled`) and counters read at scrape time.

LoRA adapters: llama.cpp applies adapters per context, and every change of the context's
adapter makes it rebuild its compute graph before the next decode (measured on the tests' tiny
Llama: a switch costs more than a decode of two sequences). So the running sequences are
grouped by adapter (the base model is a group too) and the groups time-slice the context:
- one adapter state per step: a step decodes one group, never a mix;
- a step starts with the group whose adapter is already set, if it has work: no switch;
- that group keeps the context for up to `steps_per_switch` (K) steps in a row, then the next
  group with work gets it, round-robin (the group that has waited longest goes first), so a
  group waits at most (groups - 1) * K steps: none starves;
- with one group (or no adapters) every running sequence decodes every step, as without LoRA.
The trade: one switch per K steps instead of one per group every step buys aggregate tokens/s
(8 streams on 4 adapters, bench/results/lora.json: 0.29x of one adapter's with a switch per
decode, 0.53x with K = 8; llama.cpp alone, in-process: 0.33x against 0.69x), paid in burstier
streams when several adapters are busy: a group's sequences get K tokens in quick succession,
then wait while the others take their turns (a (groups - 1) * K step gap), and a new adapter's
first token may wait as long. K = 1 switches every step.

Admission stays in arrival order; with `max_loras` a request whose adapter would be one group
too many waits while later requests of running adapters go ahead of it, but only for
`max_lora_wait` seconds: after that nothing passes it, the running groups drain and its adapter
gets in. That trades the first-token latency of a new adapter for fewer groups sharing the
context, hence a shorter wait between turns. Adapter loads and frees run on the engine thread
between steps (`call`).

A cancelled request (client disconnect, `aclose`) is retired at the next step and its slot and
cells are freed. Requests over the context length are refused before any work (InvalidInput);
a full waiting queue refuses with QueueFull.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from edgeinfer.errors import BackendError, EdgeInferError, InvalidInput, QueueFull, Unavailable
from edgeinfer.runtime.llm_llamacpp import BatchItem
from edgeinfer.runtime.memory import release_free_memory
from edgeinfer.serving.constrain import JsonConstraint, TokenConstraint
from edgeinfer.serving.prefix_cache import SlotCache
from edgeinfer.serving.sampling import Sampler, SamplingParams, TextStream, TokenLogprob
from edgeinfer.telemetry.metrics import LlmStats
from edgeinfer.telemetry.stats import VersionStats

log = logging.getLogger("edgeinfer.llm")


class LlmBackend(Protocol):
    """The math the loop needs (runtime/llm_llamacpp.py; a fake in unit tests)."""

    n_vocab: int
    eog: frozenset[int]

    def decode(self, items: Sequence[BatchItem]) -> np.ndarray: ...

    def free(self, seq: int) -> None: ...

    def piece(self, token: int) -> bytes: ...

    def close(self) -> None: ...


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
class _Request:
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

    def __init__(self, loop: LlmLoop, request: _Request) -> None:
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


class LlmLoop:
    def __init__(
        self,
        backend: LlmBackend,
        limits: LoopLimits,
        stats: LlmStats,
        version_stats: VersionStats | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`version_stats` also gets Triton's per-version counts (requests, steps, latency),
        which the lifecycle's automatic rollback watches."""
        self.backend = backend
        self.limits = limits
        self.stats = stats
        self.version_stats = version_stats
        self.waiting: deque[_Request] = deque()
        self.running: list[_Request] = []
        self.steps = 0
        self._slots = SlotCache(backend, limits.slots, limits.prefix_cache)  # type: ignore[arg-type]
        self._reserved = 0  # KV cells promised to running requests
        self._clock = clock
        self._work = threading.Event()  # set when there may be something to schedule
        self._lock = threading.Lock()  # guards `waiting` between submit and the engine thread
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: list[tuple[_Request, GenChunk | BaseException]] = []  # this step's
        self._ready: deque[list[tuple[_Request, GenChunk | BaseException]]] = deque()
        self._ready_event = threading.Event()
        self._accepting = True
        self._stopping = False
        self._avg_e2e = 0.0
        self._calls: deque[Callable[[], None]] = deque()  # run on the engine thread
        self._current: LoopAdapter | None = None  # the adapter set on the backend
        self._holder: LoopAdapter | None = None  # the group with the context (its adapter)
        self._held = 0  # steps in a row the holder has decoded
        self._since: dict[LoopAdapter | None, int] = {}  # group -> step it began waiting
        self.decodes = 0  # backend decode calls

    # ---- requests --------------------------------------------------------------------------
    def submit(self, prompt: list[int], params: SamplingParams,
               adapter: LoopAdapter | None = None,
               on_done: Callable[[int, int], None] | None = None,
               constraint: TokenConstraint | None = None,
               cache_prompt: bool = True) -> GenerationStream:  # fmt: skip
        """Queue a generation; raises at once when it cannot be served. `on_done` is called
        once the request is retired (it may run on the engine thread). `constraint` masks the
        sequence's logits before each token is sampled (structured output). `cache_prompt=False`
        prefills the whole prompt even when a slot holds a prefix of it."""
        if not self._accepting:
            raise Unavailable("model version is unloading")
        limit, n = self.limits.context_length, len(prompt)
        if n == 0:
            raise InvalidInput("the prompt is empty")
        max_tokens = params.max_tokens if params.max_tokens is not None else limit - n
        if n + max_tokens > limit:
            raise InvalidInput(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{n + max_tokens} tokens ({n} in the prompt, {max_tokens} for the completion). "
                "Please reduce the prompt or max_tokens."
            )
        if any(not 0 <= t < self.backend.n_vocab for t in prompt):
            raise InvalidInput(f"prompt token ids must be in [0, {self.backend.n_vocab})")
        if any(not 0 <= t < self.backend.n_vocab for t, _ in params.logit_bias):
            raise InvalidInput(f"logit_bias token ids must be in [0, {self.backend.n_vocab})")
        req = _Request(prompt, params, max_tokens, Sampler(params, prompt, self.backend.n_vocab),
                       TextStream(params.stop), self._clock(), adapter=adapter,
                       on_done=on_done, constraint=constraint,
                       cache_prompt=cache_prompt)  # fmt: skip
        with self._lock:
            if self.limits.max_waiting and len(self.waiting) >= self.limits.max_waiting:
                wait = self._avg_e2e * (len(self.waiting) + 1) / self.limits.slots
                raise QueueFull(f"{len(self.waiting)} requests are already waiting for a slot; "
                                "retry later", retry_after=max(1.0, wait))  # fmt: skip
            self.waiting.append(req)
        self._wake()
        return GenerationStream(self, req)

    def cancel(self, req: _Request) -> None:
        if not req.done:
            req.cancelled = True
            self._wake()

    @property
    def kv_usage(self) -> float:
        used = sum(r.prefilled + len(r.generated) for r in list(self.running))
        return min(1.0, used / self.limits.kv_cells)

    def _wake(self) -> None:
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)
            self._thread.start()
            threading.Thread(target=self._notify, name="llm-notify", daemon=True).start()
        self._work.set()

    def call(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run `fn` on the engine thread between steps (backend calls that must not overlap a
        decode: loading, setting, freeing adapters); await the result."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def run() -> None:
            try:
                result: Any = fn()
            except BaseException as e:  # handed to the awaiting coroutine
                loop.call_soon_threadsafe(_settle, fut, None, e)
            else:
                loop.call_soon_threadsafe(_settle, fut, result, None)

        self._calls.append(run)
        self._wake()
        return fut

    def call_later(self, fn: Callable[[], None]) -> None:
        """Like `call` from any thread, without waiting: it runs before the next step (or at
        close, before the backend is freed)."""
        self._calls.append(fn)
        self._work.set()

    def drop_adapter(self, adapter: LoopAdapter) -> None:
        """Free an adapter no request uses any more, on the engine thread before the next step."""

        def drop() -> None:
            backend: Any = self.backend
            if self._current is adapter:
                backend.set_adapter(None, 1.0)
                self._current = None
            backend.free_adapter(adapter.handle)
            release_free_memory()

        self.call_later(drop)

    def _run_calls(self) -> None:
        while self._calls:
            fn = self._calls.popleft()
            try:
                fn()
            except Exception:  # a failed free must not stop the engine
                log.exception("engine-thread call failed")

    def _run(self) -> None:
        while not self._stopping:
            self._work.clear()
            self._run_calls()
            if not self.step():
                self._work.wait()

    # ---- the step (engine thread) ----------------------------------------------------------
    def step(self) -> bool:
        """Schedule, execute, deliver. False when there was nothing to run."""
        plan = self._schedule()
        if not plan:
            self._flush()
            return False
        self._execute(plan)
        self.steps += 1
        self._flush()
        return True

    def _execute(self, plan: list[tuple[_Request, BatchItem]]) -> None:
        """The step's backend decode (its requests share an adapter); sample and deliver."""
        adapter = plan[0][0].adapter
        started = time.perf_counter_ns()
        try:
            if adapter is not self._current:
                self.backend.set_adapter(adapter.handle if adapter else None,  # type: ignore[attr-defined]
                                         adapter.scale if adapter else 1.0)  # fmt: skip
                self._current = adapter
            logits = self.backend.decode([item for _, item in plan])
            wanted = sum(item.logits for _, item in plan)
            if logits.shape[0] != wanted:
                raise BackendError(f"backend returned {logits.shape[0]} logits rows, not {wanted}")
        except EdgeInferError as e:
            log.error("decode step failed: %s", e.message)
            for req, _ in plan:
                self._finish(req, "abort", error=e)
            return
        self.decodes += 1
        if self.version_stats is not None:
            self.version_stats.record_execution(len(plan), time.perf_counter_ns() - started)
        self._deliver(plan, logits)

    def _flush(self) -> None:
        """Hand this step's chunks and errors to the notifier thread. Waking the event loop
        from here would cost the engine thread ~1 ms a step: the woken loop takes the GIL
        while this thread still needs it. The notifier gets the GIL only once this thread
        enters the next decode (which releases it), so the loop's work overlaps the decode."""
        if self._outbox:
            self._ready.append(self._outbox)
            self._outbox = []
            self._ready_event.set()

    def _notify(self) -> None:
        while True:
            self._ready_event.wait()
            self._ready_event.clear()
            batch = []
            while self._ready:
                batch += self._ready.popleft()
            if batch and self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(_publish, batch)
            if self._stopping and not self._ready:
                return

    def _schedule(self) -> list[tuple[_Request, BatchItem]]:
        for req in [r for r in self.running if r.cancelled]:
            self._finish(req, "abort")
        with self._lock:
            gone = [r for r in self.waiting if r.cancelled]
            for req in gone:
                self.waiting.remove(req)
            admitted = self._admit()
        for req in gone:
            self._finish(req, "abort")
        for req in admitted:
            req.seq, req.cached = self._slots.take(req.prompt, req.adapter, req.cache_prompt)
            req.prefilled = req.kv = req.cached
            req.admitted_at = self._clock()
            self.running.append(req)
            if self._slots.enabled:
                self.stats.prefix_cache_queries += len(req.prompt)
                self.stats.prefix_cache_hits += req.cached
        if admitted:  # idle slots' cached prefixes give way to the new reservations
            self._slots.fit(self.limits.kv_cells - self._reserved)
        turn = self._turn()
        plan = [(r, BatchItem(r.seq, [r.generated[-1]], len(r.prompt) + len(r.generated) - 1,
                              True)) for r in turn if r.decoding]  # fmt: skip
        budget = self.limits.prefill_chunk
        for req in turn:
            if budget == 0:
                break
            left = len(req.prompt) - req.prefilled
            if left:
                n = min(left, budget)
                chunk = req.prompt[req.prefilled : req.prefilled + n]
                plan.append((req, BatchItem(req.seq, chunk, req.prefilled, n == left)))
                budget -= n
        return plan

    def _turn(self) -> list[_Request]:
        """The running requests that decode this step: all of them when they share an adapter,
        else one adapter group's, time-sliced (see the module doc)."""
        groups: dict[LoopAdapter | None, list[_Request]] = {}
        for req in self.running:
            groups.setdefault(req.adapter, []).append(req)
        self._since = {g: self._since.get(g, self.steps) for g in groups}
        if not groups:
            return []  # idle: the holder keeps the context (its adapter stays set)
        holder = self._holder
        if holder not in groups or (len(groups) > 1 and self._held >= self.limits.steps_per_switch):
            if holder in groups:
                self._since[holder] = self.steps  # it gives up the context: it waits from now
            # The longest waiting goes next; min() keeps running order among equals.
            self._holder = min((g for g in groups if g is not holder),
                               key=self._since.__getitem__)  # fmt: skip
            self._held = 0
        self._held += 1
        return groups.get(self._holder, [])

    def _admit(self) -> list[_Request]:
        """Waiting requests to start now, in arrival order (see the module doc for adapters)."""
        admitted: list[_Request] = []
        max_loras = self.limits.max_loras
        active = {r.adapter_key for r in self.running}
        now = self._clock()
        i = 0
        while (i < len(self.waiting) and len(admitted) < self._slots.idle
               and self._reserved + self.waiting[i].need <= self.limits.kv_cells):  # fmt: skip
            req = self.waiting[i]
            if max_loras and req.adapter_key not in active and len(active) >= max_loras:
                if now - req.arrival > self.limits.max_lora_wait:
                    break  # it waited long enough: nothing passes it any more
                i += 1
                continue
            del self.waiting[i]
            active.add(req.adapter_key)
            admitted.append(req)
            self._reserved += req.need
        return admitted

    def adapters(self) -> tuple[list[str], list[str]]:
        """(adapters of running requests, adapters only waiting requests ask for)."""
        running = {r.adapter_key for r in list(self.running)} - {None}
        waiting = {r.adapter_key for r in list(self.waiting)} - {None} - running
        return sorted(k for k in running if k), sorted(k for k in waiting if k)

    def _deliver(self, plan: list[tuple[_Request, BatchItem]], logits: np.ndarray) -> None:
        now = self._clock()
        row = 0
        for req, item in plan:
            req.kv = item.pos + len(item.tokens)
            if not item.logits:
                req.prefilled += len(item.tokens)
                continue
            scores = logits[row]
            row += 1
            if req.prefilled < len(req.prompt):
                req.prefilled += len(item.tokens)
                self.stats.prompt_tokens += len(req.prompt)
            if req.cancelled or req.done:
                continue  # retired at the next schedule
            self._emit(req, scores, now)

    def _emit(self, req: _Request, scores: np.ndarray, now: float) -> None:
        if req.constraint is not None:
            req.constraint.mask(scores)
        token, logprob = req.sampler.sample(scores)
        req.generated.append(token)
        self.stats.generation_tokens += 1
        if not req.first_token_at:
            req.first_token_at = now
            self.stats.ttft.observe(now - req.arrival)
        else:
            self.stats.itl.observe(now - req.last_token_at)
        req.last_token_at = now
        if logprob is not None:
            logprob.piece = self.backend.piece(token)
            logprob.top_pieces = [self.backend.piece(t) for t, _ in logprob.top]
        reason, text = self._ending(req, token)
        if reason == "error":
            assert req.constraint is not None
            self._finish(req, "abort", error=BackendError(
                f"constrained decoding failed: {req.constraint.error}"))  # fmt: skip
            return
        self._outbox.append((req, GenChunk(text, [token], [logprob] if logprob else None, reason,
                                           len(req.prompt), len(req.generated),
                                           req.cached)))  # fmt: skip
        if reason is not None:
            self._finish(req, reason)

    def _ending(self, req: _Request, token: int) -> tuple[str | None, str]:
        """(finish reason or None, the text to send) after `token`. A constrained sequence
        ends with "stop" as soon as its grammar is complete."""
        p = req.params
        if token in p.stop_token_ids or (token in self.backend.eog and not p.ignore_eos):
            return "stop", req.text.flush()
        complete = False
        if req.constraint is not None:
            complete = req.constraint.accept(token)
            if req.constraint.error:
                return "error", ""
        text, stopped = req.text.push(self.backend.piece(token))
        if stopped:
            return "stop", text
        if complete:
            return "stop", text + req.text.flush()
        if len(req.generated) >= req.max_tokens:
            return "length", text + req.text.flush()
        return None, text

    def _finish(self, req: _Request, reason: str, error: BaseException | None = None) -> None:
        """Retire a request: free its slot and KV cells, count it, fail its stream on error."""
        if req.done:
            return
        req.done = True
        if req.on_done is not None:
            req.on_done(len(req.prompt), len(req.generated))
        if req.seq >= 0:
            self.running.remove(req)
            # After a failed decode nobody knows what the cells hold: they are dropped.
            held = None if error is not None else (req.prompt + req.generated)[: req.kv]
            self._slots.give_back(req.seq, held, req.adapter)
            self._reserved -= req.need
        self.stats.finished[reason] = self.stats.finished.get(reason, 0) + 1
        e2e = self._clock() - req.arrival
        self.stats.e2e.observe(e2e)
        self._avg_e2e += 0.2 * (e2e - self._avg_e2e)
        if error is not None:
            self._outbox.append((req, error))
        vs = self.version_stats
        if vs is not None:
            total = int(e2e * 1e9)
            if reason != "abort":
                queued = int(((req.admitted_at or req.arrival) - req.arrival) * 1e9)
                vs.record_success(total, queued, 0, total - queued, 0)
            else:
                vs.record_failure(total, "BACKEND" if error is not None else "CANCELED")

    # ---- shutdown --------------------------------------------------------------------------
    async def close(self, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop taking requests; with `drain`, let waiting and running ones finish first."""
        self._accepting = False
        end = time.monotonic() + timeout
        while drain and (self.waiting or self.running) and time.monotonic() < end:
            await asyncio.sleep(0.01)
        if self._thread is not None:
            # Let the current step end; the backend is freed only after the thread stopped.
            self._stopping = True
            self._work.set()
            await asyncio.to_thread(self._thread.join)
            self._ready_event.set()  # the notifier delivers what is left and ends
        self._run_calls()
        while self._ready:
            _publish(self._ready.popleft())
        gone = Unavailable("model version was unloaded before the request finished")
        for req in [*self.waiting, *self.running]:
            self._finish(req, "abort", error=gone)
        self.waiting.clear()
        batch, self._outbox = self._outbox, []
        _publish(batch)
        self._run_calls()  # adapter frees queued by the retirements above
        self.backend.close()


def _settle(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


def _publish(batch: list[tuple[_Request, GenChunk | BaseException]]) -> None:
    """On the event loop thread: feed each request's queue."""
    for req, item in batch:
        req.out.put_nowait(item)

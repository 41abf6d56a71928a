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

The steps run back to back on one engine thread per model version (serving/engine_thread.py
says why). State shared with the event loop is a deque (`waiting`, appended by `submit`),
per-request flags (`cancelled`) and counters read at scrape time.

LoRA adapters: running sequences are grouped by adapter and the groups time-slice the context
(serving/llm_admission.py says how and why). Adapter loads and frees run on the engine thread
between steps (`call`).

Prefix caching (serving/prefix_cache.py): an admitted request starts from the longest prefix of
its prompt whose KV cells an idle slot or a running request holds; when a running request is
still prefilling that prefix, the new one is parked (holds its slot, runs nothing) until the
cells exist, then gets them by sequence copy: the siblings of an `n` > 1 request and concurrent
requests sharing a system prompt prefill it once.

A cancelled request (client disconnect, `aclose`) is retired at the next step and its slot and
cells are freed. Requests over the context length are refused before any work (InvalidInput);
a full waiting queue refuses with QueueFull.

Supervision: an exception while sampling one sequence fails that sequence alone (500); one from
the decode fails the step's sequences; one from elsewhere in a step fails every request the loop
holds; the loop goes on. A dead engine thread makes `healthy` False until it is revived.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from edgeinfer.errors import BackendError, EdgeInferError, QueueFull, Unavailable
from edgeinfer.runtime.llm_types import BatchItem, LlmBackend
from edgeinfer.runtime.memory import release_free_memory
from edgeinfer.serving.constrain import TokenConstraint
from edgeinfer.serving.engine_thread import Delivery, EngineThread
from edgeinfer.serving.llm_admission import AdapterTurns, admit
from edgeinfer.serving.llm_request import (
    GenChunk,
    GenerateRequest,
    GenerationStream,
    LoopAdapter,
    LoopLimits,
    completion_budget,
)
from edgeinfer.serving.llm_request import Request as _Request
from edgeinfer.serving.prefix_cache import SlotCache, Source
from edgeinfer.serving.sampling import Sampler, SamplingParams, TextStream
from edgeinfer.telemetry.metrics import LlmStats
from edgeinfer.telemetry.stats import VersionStats

# The request types live in llm_request; importers of this module use them from here too.
__all__ = [
    "GenChunk",
    "GenerateRequest",
    "GenerationStream",
    "LlmLoop",
    "LoopAdapter",
    "LoopLimits",
]

log = logging.getLogger("edgeinfer.llm")


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
        self._slots = SlotCache(backend, limits.slots, limits.prefix_cache)
        self._reserved = 0  # KV cells promised to running requests
        self._clock = clock
        self._lock = threading.Lock()  # guards `waiting` between submit and the engine thread
        self._outbox: Delivery = []  # this step's (request, chunk or error) pairs
        self._engine = EngineThread(self._engine_step, self._step_failed, self._recover, _publish)
        self._calls = self._engine.calls  # run on the engine thread between steps
        self._accepting = True
        self._shutdown_error: EdgeInferError | None = None  # set by shutdown(): fail all
        self._avg_e2e = 0.0
        self._current: LoopAdapter | None = None  # the adapter set on the backend
        self._turns = AdapterTurns(limits.steps_per_switch)
        self.decodes = 0  # backend decode calls

    # ---- requests --------------------------------------------------------------------------
    def submit(
        self,
        prompt: list[int],
        params: SamplingParams,
        adapter: LoopAdapter | None = None,
        on_done: Callable[[int, int], None] | None = None,
        constraint: TokenConstraint | None = None,
        cache_prompt: bool = True,
    ) -> GenerationStream:
        """Queue a generation; raises at once when it cannot be served. `on_done` is called
        once the request is retired (it may run on the engine thread). `constraint` masks the
        sequence's logits before each token is sampled (structured output). `cache_prompt=False`
        prefills the whole prompt even when a slot holds a prefix of it."""
        if not self._accepting:
            raise Unavailable("model version is unloading")
        max_tokens = completion_budget(
            prompt, params, self.limits.context_length, self.backend.n_vocab
        )
        req = _Request(
            prompt,
            params,
            max_tokens,
            Sampler(params, prompt, self.backend.n_vocab),
            TextStream(params.stop),
            self._clock(),
            adapter=adapter,
            on_done=on_done,
            constraint=constraint,
            cache_prompt=cache_prompt,
        )
        with self._lock:
            if self.limits.max_waiting and len(self.waiting) >= self.limits.max_waiting:
                wait = self._avg_e2e * (len(self.waiting) + 1) / self.limits.slots
                raise QueueFull(
                    f"{len(self.waiting)} requests are already waiting for a slot; retry later",
                    retry_after=max(1.0, wait),
                )
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
        self._engine.wake()
        self.stats.engine_restarts = self._engine.restarts

    @property
    def healthy(self) -> bool:
        """False while the engine thread is dead: the model is not ready until `revive`."""
        return self._engine.healthy

    def revive(self) -> None:
        """Restart a dead engine thread (the engine's monitor calls this every second)."""
        if self._engine.started:
            self._engine.revive()
            self.stats.engine_restarts = self._engine.restarts

    def shutdown(self) -> None:
        """Server shutdown: refuse new requests and end every stream at the next step (waiting
        and running requests get Unavailable), without waiting for anything."""
        self._accepting = False
        self._shutdown_error = Unavailable("the server is shutting down")
        if self._engine.started:
            self._wake()

    def call(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run `fn` on the engine thread between steps (backend calls that must not overlap a
        decode: loading, setting, freeing adapters); await the result."""
        fut = self._engine.call(fn)
        self._wake()
        return fut

    def call_later(self, fn: Callable[[], None]) -> None:
        """Like `call` from any thread, without waiting: it runs before the next step (or at
        close, before the backend is freed)."""
        self._calls.append(fn)
        self._engine.poke()

    def drop_adapter(self, adapter: LoopAdapter) -> None:
        """Free an adapter no request uses any more, on the engine thread before the next step."""

        def drop() -> None:
            if self._current is adapter:
                self.backend.set_adapter(None, 1.0)
                self._current = None
            self.backend.free_adapter(adapter.handle)
            release_free_memory()

        self.call_later(drop)

    # ---- the step (engine thread) ----------------------------------------------------------
    def _engine_step(self) -> bool:
        if self._shutdown_error is not None:
            self._fail_all(self._shutdown_error)
        return self.step()

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
                self.backend.set_adapter(
                    adapter.handle if adapter else None, adapter.scale if adapter else 1.0
                )
                self._current = adapter
            logits = self.backend.decode([item for _, item in plan])
            wanted = sum(item.logits for _, item in plan)
            if logits.shape[0] != wanted:
                raise BackendError(f"backend returned {logits.shape[0]} logits rows, not {wanted}")
        except Exception as e:
            if isinstance(e, EdgeInferError):
                log.error("decode step failed: %s", e.message)
            else:
                log.exception("decode step failed")
                e = BackendError(f"internal error in the model's decode step ({type(e).__name__})")
            for req, _ in plan:
                self._finish(req, "abort", error=e)
            return
        self.decodes += 1
        if self.version_stats is not None:
            self.version_stats.record_execution(len(plan), time.perf_counter_ns() - started)
        self._deliver(plan, logits)

    def _flush(self) -> None:
        """Hand this step's chunks and errors to the event loop (through the notifier)."""
        if self._outbox:
            self._engine.deliver(self._outbox)
            self._outbox = []

    def _schedule(self) -> list[tuple[_Request, BatchItem]]:
        for req in [r for r in self.running if r.cancelled]:
            self._finish(req, "abort")
        with self._lock:
            gone = [r for r in self.waiting if r.cancelled]
            for req in gone:
                self.waiting.remove(req)
            admitted = admit(
                self.waiting,
                self.running,
                self._slots.idle,
                self._reserved,
                self.limits,
                self._clock(),
            )
        for req in gone:
            self._finish(req, "abort")
        for req in admitted:
            self._start(req)
        if admitted:  # idle slots' cached prefixes give way to the new reservations
            self._slots.fit(self.limits.kv_cells - self._reserved)
        for req in [r for r in self.running if r.source and r.source.owner.kv >= r.want]:
            self._unpark(req)
        turn = self._turns.turn(self.running, self.steps)
        plan = [
            (r, BatchItem(r.seq, [r.generated[-1]], len(r.prompt) + len(r.generated) - 1, True))
            for r in turn
            if r.decoding
        ]
        budget = self.limits.prefill_chunk
        for req in turn:
            if budget == 0:
                break
            left = len(req.prompt) - req.prefilled
            if left and req.source is None:
                n = min(left, budget)
                chunk = req.prompt[req.prefilled : req.prefilled + n]
                plan.append((req, BatchItem(req.seq, chunk, req.prefilled, n == left)))
                budget -= n
        return plan

    def _start(self, req: _Request) -> None:
        """An admitted request takes a slot with as much of its prompt as the cache holds."""
        self._reserved += req.need
        sources = [
            Source(r.seq, r.ids, r.adapter, min(r.kv, len(r.prompt)), r)
            for r in self.running
            if self._slots.enabled
        ]
        req.seq, req.cached, req.source, req.want = self._slots.take(
            req.prompt, req.adapter, req.cache_prompt, sources
        )
        req.prefilled = req.kv = req.cached
        req.admitted_at = self._clock()
        self.running.append(req)
        if self._slots.enabled:
            self.stats.prefix_cache_queries += len(req.prompt)
            self.stats.prefix_cache_hits += req.cached

    def _unpark(self, req: _Request, copy: bool = True) -> None:
        """A parked request's source has computed the cells it waits for (or is retired,
        `copy` False after a failed decode): copy what is there; it prefills the rest."""
        src, req.source = req.source, None
        assert src is not None
        owner: _Request = src.owner
        if copy and owner.kv >= req.want:
            n = self._slots.copy(src.seq, req.seq, req.cached, req.want)
            self.stats.prefix_cache_hits += n - req.cached
            req.cached = req.prefilled = req.kv = n

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
            try:
                self._emit(req, scores, now)
            except Exception as e:  # this sequence fails alone; the others go on
                log.exception("sampling failed for request %d", req.id)
                self._finish(
                    req,
                    "abort",
                    error=BackendError(
                        f"internal error while sampling the next token ({type(e).__name__})"
                    ),
                )

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
        reason, text = req.ending(token, self.backend.eog, self.backend.piece)
        if reason == "error":
            assert req.constraint is not None
            self._finish(
                req,
                "abort",
                error=BackendError(f"constrained decoding failed: {req.constraint.error}"),
            )
            return
        self._outbox.append((req, req.chunk(text, token, logprob, reason)))
        if reason is not None:
            self._finish(req, reason)

    def _finish(self, req: _Request, reason: str, error: BaseException | None = None) -> None:
        """Retire a request: free its slot and KV cells, count it, fail its stream on error."""
        if req.done:
            return
        req.done = True
        if req.on_done is not None:
            try:
                req.on_done(len(req.prompt), len(req.generated))
            except Exception:
                log.exception("a request's completion callback failed")
        if req.seq >= 0:
            self.running.remove(req)
            self._reserved -= req.need
            for r in [r for r in self.running if r.source and r.source.owner is req]:
                self._unpark(r, copy=error is None)  # before its cells change hands
            # After a failed decode nobody knows what the cells hold: they are dropped.
            held = None if error is not None else (req.prompt + req.generated)[: req.kv]
            try:
                self._slots.give_back(req.seq, held, req.adapter)
            except Exception:  # its cells may hold stale tokens: never reuse the slot
                log.exception("freeing slot %d failed; the slot is retired", req.seq)
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

    # ---- failures and shutdown -------------------------------------------------------------
    def _step_failed(self, error: Exception) -> None:
        """An exception escaped a step (engine thread): its state is unknown, so every request
        the loop holds fails with a 500 and the loop starts clean."""
        self._fail_all(
            BackendError(f"internal error in the generation loop ({type(error).__name__})")
        )

    def _recover(self) -> None:
        """First thing on a restarted engine thread: fail the running requests (the dead thread
        may have left them half-stepped); waiting ones start normally."""
        self._fail_all(
            BackendError(
                "the model's generation loop stopped and was restarted; retry the request"
            ),
            waiting=False,
        )

    def _fail_all(self, error: EdgeInferError, waiting: bool = True) -> None:
        queued: list[_Request] = []
        if waiting:
            with self._lock:
                queued = list(self.waiting)
                self.waiting.clear()
        for req in [*self.running, *queued]:
            try:
                self._finish(req, "abort", error=error)
            except Exception:
                log.exception("retiring request %d failed", req.id)
                if req in self.running:
                    self.running.remove(req)
                self._outbox.append((req, error))
        self._flush()

    async def close(self, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop taking requests; with `drain`, let waiting and running ones finish first (for
        at most `timeout` seconds, and not at all while the engine thread is dead)."""
        self._accepting = False
        end = time.monotonic() + timeout
        while drain and (self.waiting or self.running) and self.healthy and time.monotonic() < end:
            await asyncio.sleep(0.01)
        gone = Unavailable("model version was unloaded before the request finished")
        if not await self._engine.stop(max(1.0, end - time.monotonic())):
            log.error(
                "the engine thread is still inside a step: its requests are failed and "
                "the model's memory is left allocated"
            )
            _publish([(req, gone) for req in [*self.waiting, *self.running]])
            return
        self._engine.run_calls()
        self._fail_all(gone)
        self._engine.drain_ready()
        self._engine.run_calls()  # adapter frees queued by the retirements above
        self.backend.close()


def _publish(batch: Delivery) -> None:
    """On the event loop thread: feed each request's queue."""
    for req, item in batch:
        if not req.delivered_error:
            req.out.put_nowait(item)
            req.delivered_error = isinstance(item, BaseException)

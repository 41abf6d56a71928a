"""Per model version: one bounded priority queue, one worker task per model instance.

The loop is schedule -> execute -> deliver. Queue bookkeeping happens on the event loop thread
only, so it needs no locks; model runs go to worker threads (or run inline for tiny models, see
serving/runner.py). A request whose caller is cancelled (client disconnect, gRPC cancel) is
removed from the queue; if its batch already started, its slice of the result is dropped.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeinfer.errors import BackendError, DeadlineExceeded, EdgeInferError, QueueFull, Unavailable
from edgeinfer.hardware.governor import scaled_batch, scaled_concurrency
from edgeinfer.runtime import Model
from edgeinfer.serving.batcher import BatchPolicy, BatchQueue, Decision, Entry
from edgeinfer.serving.runner import Runner, RunTimer
from edgeinfer.serving.supervisor import supervise
from edgeinfer.telemetry.stats import VersionStats
from edgeinfer.telemetry.tracing import RequestTrace, record_batch

log = logging.getLogger("edgeinfer.scheduler")


@dataclass(slots=True)
class Timing:
    queue_ns: int
    input_ns: int
    infer_ns: int
    output_ns: int
    batch_size: int


# Run times vary with what else the cores do (the event loop, other models, a neighbour on a
# shared host): deadlines are judged against the measured mean plus a margin that grows with how
# far single runs have strayed from it (ServiceRate.spread). The batcher's final check is the
# stricter one: a request that might finish late is refused with 504 rather than answered after
# its deadline. The floors are what a quiet device needs; the spread factors follow Jacobson's
# retransmission timer (mean + 4 deviations) for one run, half that for the sum of many.
ADMIT_MARGIN = 1.1
RUN_MARGIN = 1.3
ADMIT_SPREADS = 2.0
RUN_SPREADS = 4.0


class ServiceRate:
    """Exponentially weighted rows per second actually served, for Retry-After and admission,
    and `spread`: the weighted mean of how far each run's time strayed from the prediction
    (|actual / predicted - 1|), so margins widen on a noisy device and shrink on a quiet one."""

    __slots__ = ("rows_per_s", "samples", "spread")

    def __init__(self) -> None:
        self.rows_per_s = 0.0
        self.samples = 0
        self.spread = 0.0

    def add(self, rows: int, seconds: float) -> None:
        if rows <= 0 or seconds <= 0:  # an empty run says nothing about the rate
            return
        predicted = self.seconds_for(rows)
        if predicted:
            self.spread += 0.25 * (abs(seconds / predicted - 1.0) - self.spread)
        self.samples += 1
        alpha = 1.0 / min(self.samples, 16)
        self.rows_per_s += alpha * (rows / seconds - self.rows_per_s)

    def seconds_for(self, rows: int) -> float | None:
        return rows / self.rows_per_s if self.samples >= 3 and self.rows_per_s > 0 else None

    def bound(self, rows: int, floor: float, spreads: float) -> float | None:
        """Seconds `rows` should take at most: the mean times max(floor, 1 + spreads x spread)."""
        mean = self.seconds_for(rows)
        return None if mean is None else mean * max(floor, 1.0 + spreads * self.spread)


def _signature(feeds: dict[str, np.ndarray]) -> tuple[Any, ...]:
    return tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(feeds.items()))


@dataclass(slots=True)
class Work:
    """What a queued request carries (the batch queue's `Entry.payload`)."""

    feeds: dict[str, np.ndarray]
    future: asyncio.Future[tuple[dict[str, np.ndarray], Timing]]
    trace: RequestTrace | None = None
    adapter: Any = None  # a per-run LoRA adapter; part of the batch signature
    outputs: tuple[str, ...] | None = None  # the outputs asked for (None: all); ditto


class Scheduler:
    def __init__(
        self,
        instances: Sequence[Model],
        policy: BatchPolicy,
        runner: Runner,
        stats: VersionStats,
        dynamic: bool,
        batch_axis: bool,
        clock: Callable[[], float] = time.monotonic,
        capacity: Callable[[], tuple[float, str]] | None = None,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        """`capacity` returns (factor in (0, 1], reason) from the device governor: below 1 the
        scheduler forms smaller batches, keeps fewer instances busy and queues fewer requests.
        `on_restart` is called each time a crashed worker is restarted (a metric counts it)."""
        self.queue = BatchQueue(policy)
        self.policy = policy
        self.instances = list(instances)
        self.rate = ServiceRate()
        self.running = 0  # batches executing now
        self.running_rows = 0  # their rows
        self._runner = runner
        self._stats = stats
        self._dynamic = dynamic  # combine requests into one run
        self._batch_axis = batch_axis  # inputs have a leading batch dimension
        self._clock = clock
        self._timers = [RunTimer() for _ in self.instances]
        self._wakeup: asyncio.Event | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._closed = False
        self._capacity = capacity
        self._on_restart = on_restart
        self.down: set[int] = set()  # workers that crashed and wait for their restart
        self.rejections: dict[str, int] = {}  # admission rejections by reason

    @property
    def pending(self) -> int:
        return len(self.queue)

    @property
    def healthy(self) -> bool:
        """False while a worker is down (crashed, not restarted yet)."""
        return not self.down

    def _start(self) -> asyncio.Event:
        self._wakeup = asyncio.Event()
        self._workers = [self._worker(i) for i in range(len(self.instances))]
        return self._wakeup

    def _worker(self, index: int) -> asyncio.Task[None]:
        """Worker `index`, restarted if it ever crashes (it is down meanwhile)."""
        what = f"model '{self._stats.name}' version {self._stats.version}: worker {index}"
        loop = supervise(
            what,
            functools.partial(self._work, index),
            on_crash=functools.partial(self.down.add, index),
            on_restart=functools.partial(self._restarted, index),
        )
        return asyncio.create_task(loop, name=what)

    def _restarted(self, index: int) -> None:
        self.down.discard(index)
        if self._on_restart is not None:
            self._on_restart()

    def _reject(self, reason: str, exc: Exception) -> Exception:
        self.rejections[reason] = self.rejections.get(reason, 0) + 1
        return exc

    def _admit(self, entry: Entry, now: float) -> None:
        if self._capacity is not None:
            factor, why = self._capacity()
            limit = self.policy.max_queue_size
            if factor < 1.0 and limit and len(self.queue) >= max(1, int(limit * factor)):
                drain = self.rate.seconds_for(self.queue.rows) or 1.0
                raise self._reject(
                    why,
                    Unavailable(
                        f"device capacity reduced to {factor:.0%} ({why}) and the queue is full; "
                        "retry later",
                        retry_after=max(drain, 1.0),
                    ),
                )
        timeout_us = entry.timeout_us or self.policy.default_timeout_us
        # Rows ahead (queued at this priority or higher, and running now) plus its own; its
        # reply comes when its whole batch ends, so count up to that batch's end.
        rows = self.queue.rows_ahead_of(entry.priority) + self.running_rows + entry.batch
        if self._dynamic and self.policy.max_batch_size > 1:
            rows = -(-rows // self.policy.max_batch_size) * self.policy.max_batch_size
        wait = self.rate.bound(rows, ADMIT_MARGIN, ADMIT_SPREADS)
        if timeout_us and wait is not None and wait * 1e6 > timeout_us:
            raise self._reject(
                "predicted_wait",
                QueueFull(
                    f"predicted time to a reply {wait * 1e3:.1f} ms (queue and run) exceeds the "
                    f"request's timeout {timeout_us / 1e3:.1f} ms; rejected without queueing",
                    retry_after=wait,
                ),
            )
        try:
            self.queue.add(entry, now)
        except QueueFull as e:
            e.retry_after = self.rate.seconds_for(self.queue.rows) or 1.0
            raise self._reject("queue_full", e) from None

    async def submit(
        self,
        feeds: dict[str, np.ndarray],
        priority: int = 0,
        timeout_us: int = 0,
        trace: RequestTrace | None = None,
        adapter: Any = None,
        received_ns: int = 0,
        outputs: tuple[str, ...] | None = None,
    ) -> tuple[dict[str, np.ndarray], Timing]:
        """Queue one request and wait for its slice of a batch result. With `trace`, the run
        records the request's queue span and a batch span linked to it. `adapter` (hashable;
        a per-run LoRA adapter) is part of the batch signature and passed to `model.run`.
        `received_ns`: when the server began reading the request (perf_counter_ns; 0: now);
        its timeout counts from there. `outputs`: the outputs to compute (the backend may skip
        the rest); requests asking for different outputs do not share a run."""
        if self._closed:
            raise Unavailable("model version is unloading")
        timeout_us = _remaining_us(timeout_us or self.policy.default_timeout_us, received_ns)
        wakeup = self._wakeup or self._start()
        rows = next(iter(feeds.values())).shape[0] if self._dynamic else 1
        fut: asyncio.Future[tuple[dict[str, np.ndarray], Timing]] = (
            asyncio.get_running_loop().create_future()
        )
        signature = (_signature(feeds), adapter, outputs) if self._dynamic else None
        entry = Entry(
            rows,
            signature,
            0.0,
            priority,
            timeout_us,
            payload=Work(feeds, fut, trace, adapter, outputs),
        )
        self._admit(entry, self._clock())
        wakeup.set()
        try:
            return await fut
        except asyncio.CancelledError:
            self.queue.remove(entry)
            raise
        finally:
            # An error set on `fut` is raised with a traceback that holds this frame: drop the
            # frame's references back to it, or request and error wait for a full GC together.
            del fut, entry

    async def _work(self, index: int) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        # When the last batch ended with requests still queued, the time until the next batch
        # starts is overhead of serving back to back; the service rate must include it, or
        # admission promises replies sooner than they come under sustained load.
        backlog_since: float | None = None
        while not self._closed:
            max_rows, busy_limit = None, len(self.instances)
            if self._capacity is not None:
                factor, _ = self._capacity()
                if factor < 1.0:
                    max_rows = scaled_batch(self.policy.max_batch_size, factor)
                    busy_limit = scaled_concurrency(len(self.instances), factor)
            if self.running >= busy_limit:  # hot device: leave this instance idle for now
                decision = Decision(wake_at=self._clock() + 0.05)
            else:
                limit = self.queue.batch_limit(max_rows)
                horizon = self.rate.bound(min(self.queue.rows, limit), RUN_MARGIN, RUN_SPREADS)
                decision = self.queue.take(self._clock(), max_rows, horizon or 0.0)
            for e in decision.expired:
                _fail(
                    e,
                    DeadlineExceeded(
                        "request timed out in the queue: it could not finish within its timeout"
                    ),
                )
            if decision.batch:
                rows = sum(e.batch for e in decision.batch)
                gap = self._clock() - backlog_since if backlog_since is not None else 0.0
                self.running += 1
                self.running_rows += rows
                try:
                    await self._execute(index, decision.batch, gap)
                except Exception as exc:  # the batch fails, the worker goes on
                    self._batch_failed(decision.batch, exc)
                finally:
                    self.running -= 1
                    self.running_rows -= rows
                backlog_since = self._clock() if len(self.queue) else None
                continue
            backlog_since = None
            self._wakeup.clear()
            timer = None
            if decision.wake_at is not None:
                timer = loop.call_later(
                    max(0.0, decision.wake_at - self._clock()), self._wakeup.set
                )
            await self._wakeup.wait()
            if timer is not None:
                timer.cancel()

    async def _execute(self, index: int, batch: list[Entry], gap: float = 0.0) -> None:
        """Run one batch and deliver each entry its rows. `gap`: seconds of serving overhead
        since the previous batch on this worker, counted in the service rate."""
        start = self._clock()
        t0 = time.perf_counter_ns()
        live = [e for e in batch if not e.payload.future.done()]  # cancelled after being taken
        if not live:
            return
        feeds = _concat([e.payload.feeds for e in live])
        t1 = time.perf_counter_ns()
        model = self.instances[index]
        rows = _rows(feeds) if self._batch_axis else 1
        adapter = live[0].payload.adapter
        wanted = live[0].payload.outputs  # every entry of a run asked for the same outputs
        names = list(wanted) if wanted else None
        try:
            results, infer_ns = await self._runner.run(
                self._timers[index],
                (lambda: model.run(feeds, names))
                if adapter is None
                else (lambda: model.run(feeds, names, adapter=adapter)),  # type: ignore[call-arg]
            )
        except Exception as exc:
            self._trace(live, start, t0, time.perf_counter_ns(), rows, index, exc)
            raise
        t2 = time.perf_counter_ns()
        self._trace(live, start, t0, t2, rows, index)
        offset = 0
        self.rate.add(rows, self._clock() - start + gap)
        self._stats.record_execution(rows, infer_ns)
        for e in live:
            fut = e.payload.future
            part = (
                results
                if len(live) == 1
                else {k: v[offset : offset + e.batch] for k, v in results.items()}
            )
            offset += e.batch
            if not fut.done():
                timing = Timing(
                    int((start - e.enqueued) * 1e9),
                    t1 - t0,
                    infer_ns,
                    time.perf_counter_ns() - t2,
                    rows,
                )
                fut.set_result((part, timing))

    def _batch_failed(self, batch: list[Entry], exc: Exception) -> None:
        """Every request of a failed batch gets an error. A domain error is the client's to see
        as it is; anything else is a bug or a backend fault: logged once with its traceback, and
        each request gets a 500 / INTERNAL naming it."""
        if isinstance(exc, EdgeInferError):
            for e in batch:
                _fail(e, exc)
            return
        s = self._stats
        log.error(
            "model '%s' version %s: a batch of %d request(s) failed",
            s.name,
            s.version,
            len(batch),
            exc_info=exc,
        )
        what = f"{type(exc).__name__}: {str(exc)[:200]}".rstrip(": ")
        for e in batch:
            _fail(
                e,
                BackendError(
                    f"model '{s.name}' version {s.version} failed while running "
                    f"the request's batch ({what}); see the server log"
                ),
            )

    def _trace(
        self,
        live: list[Entry],
        start: float,
        t0: int,
        t1: int,
        rows: int,
        index: int,
        error: BaseException | None = None,
    ) -> None:
        """Queue and batch spans for the traced requests of a run (none when tracing is off)."""
        traced = [e for e in live if e.payload.trace is not None]
        if not traced:
            return
        record_batch(
            [e.payload.trace for e in traced],
            [int((start - e.enqueued) * 1e9) for e in traced],
            t0,
            t1,
            {
                "edgeinfer.model": self._stats.name,
                "edgeinfer.model.version": self._stats.version,
                "edgeinfer.batch.size": rows,
                "edgeinfer.instance": index,
            },
            error,
        )

    async def close(self, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop taking requests; with `drain`, let queued and running ones finish first."""
        self._closed = not drain
        if drain:
            end = time.monotonic() + timeout
            while (len(self.queue) or self.running) and time.monotonic() < end:
                await asyncio.sleep(0.005)
            self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()
        while len(self.queue):
            decision = self.queue.take(math.inf)
            for e in decision.batch + decision.expired:
                _fail(e, Unavailable("model version was unloaded before the request ran"))
        for w in self._workers:
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for m in self.instances:
            m.close()


def _remaining_us(timeout_us: int, received_ns: int) -> int:
    """What is left of a request's timeout after reading and decoding it (0: no timeout)."""
    if not timeout_us or not received_ns:
        return timeout_us
    left = timeout_us - (time.perf_counter_ns() - received_ns) // 1000
    if left <= 0:
        raise DeadlineExceeded(
            f"request timed out before it was queued: its timeout of {timeout_us / 1e3:.1f} ms "
            "passed while it was read and decoded"
        )
    return int(left)


def _fail(entry: Entry, exc: BaseException) -> None:
    fut = entry.payload.future
    if not fut.done():
        fut.set_exception(exc)


def _rows(feeds: dict[str, np.ndarray]) -> int:
    first = next(iter(feeds.values()))
    return int(first.shape[0]) if first.ndim else 1


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

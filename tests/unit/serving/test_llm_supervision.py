"""No exception in the engine thread ends the LLM loop: the failing sequence (or step) gets a 500,
the others go on, a dead engine thread makes the model unhealthy until it is restarted, and
shutting down never waits on a dead or stuck thread.

Before: an IndexError while sampling (`temperature: 1e-50`) escaped the engine thread, which
died silently; every later request hung and close() waited its whole 30 s drain for requests
that could never finish."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from edgeinfer.errors import BackendError, Unavailable
from edgeinfer.runtime.llm_types import BatchItem
from edgeinfer.serving.sampling import Sampler, SamplingParams
from edgeinfer.telemetry.metrics import LlmCollector, LlmSample
from tests.unit.serving.test_llm_loop import (
    FakeBackend,
    _drain,
    collect,
    make_loop,
    reference,
    run,
    tokens_of,
    until,
)

POISON = 666  # the seed of the request whose sampling fails


class Fatal(BaseException):
    """Not an Exception: what no `except Exception` catches (it ends a thread)."""


@pytest.fixture
def poisoned_sampler(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    """Sampling a request seeded POISON raises the exception at the head of the list."""
    errors: list[BaseException] = []
    real = Sampler.sample

    def sample(self: Sampler, logits: np.ndarray) -> Any:
        if self.params.seed == POISON and errors:
            raise errors[0]
        return real(self, logits)

    monkeypatch.setattr(Sampler, "sample", sample)
    return errors


class FailingBackend(FakeBackend):
    """Raises `error` from the decode of step `on_step`."""

    def __init__(self, error: BaseException, on_step: int) -> None:
        super().__init__()
        self.error, self.on_step = error, on_step

    def decode(self, items: Sequence[BatchItem]) -> np.ndarray:
        if len(self.calls) + 1 == self.on_step:
            self.calls.append(list(items))
            raise self.error
        return super().decode(items)


@pytest.mark.parametrize("error", [ZeroDivisionError(), IndexError("cum[-1]"), MemoryError()])
def test_a_sampling_error_fails_that_sequence_alone_and_the_loop_goes_on(
    poisoned_sampler: list[BaseException], error: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    poisoned_sampler.append(error)

    async def main() -> tuple[Any, list[Any], list[Any]]:
        loop = make_loop()
        good = asyncio.ensure_future(collect(loop, [1, 2, 3], max_tokens=8))
        bad = asyncio.ensure_future(collect(loop, [4, 5], max_tokens=8, seed=POISON))
        results = await asyncio.gather(good, bad, return_exceptions=True)
        after = await collect(loop, [7], max_tokens=4)
        await loop.close()
        return results, after, [loop.healthy, loop.stats.finished["abort"]]

    (ok, failed), after, (healthy, aborted) = run(main())
    assert tokens_of(ok) == reference([1, 2, 3], 8)
    assert isinstance(failed, BackendError) and type(error).__name__ in failed.message
    assert tokens_of(after) == reference([7], 4)
    assert healthy and aborted == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None  # logged once, with a traceback


@pytest.mark.parametrize("error", [ZeroDivisionError(), KeyError("x"), BackendError("bad")])
def test_a_decode_error_fails_its_step_and_the_next_request_succeeds(error: Exception) -> None:
    async def main() -> tuple[Any, list[Any]]:
        loop = make_loop(FailingBackend(error, on_step=2))
        failed = await asyncio.gather(collect(loop, [1, 2], max_tokens=5), return_exceptions=True)
        after = await collect(loop, [3], max_tokens=3)
        await loop.close()
        return failed[0], after

    failed, after = run(main())
    assert isinstance(failed, BackendError)
    assert tokens_of(after) == reference([3], 3)


def test_a_dead_engine_thread_is_unhealthy_until_restarted_and_counted() -> None:
    async def main() -> dict[str, Any]:
        loop = make_loop(FailingBackend(Fatal(), on_step=2))
        first = asyncio.ensure_future(collect(loop, [1, 2], max_tokens=5))
        await until(lambda: not loop.healthy)
        seen = {"healthy_while_dead": loop.healthy}
        loop.revive()  # what the engine's monitor does every second
        seen["first"] = (await asyncio.gather(first, return_exceptions=True))[0]
        seen["after"] = await collect(loop, [3], max_tokens=3)
        seen["healthy"], seen["restarts"] = loop.healthy, loop.stats.engine_restarts
        seen["metric"] = {m.name: m.samples[0].value for m in LlmCollector(
            lambda: [LlmSample(loop.stats, 0, 0, 0.0)]).collect()}  # fmt: skip
        await loop.close()
        return seen

    seen = run(main())
    assert seen["healthy_while_dead"] is False
    assert isinstance(seen["first"], BackendError) and "restarted" in seen["first"].message
    assert tokens_of(seen["after"]) == reference([3], 3)
    assert seen["healthy"] and seen["restarts"] == 1
    assert seen["metric"]["edgeinfer_llm_engine_restarts"] == 1


def test_a_request_to_a_dead_loop_restarts_it() -> None:
    async def main() -> tuple[Any, int]:
        loop = make_loop(FailingBackend(Fatal(), on_step=1))
        first = asyncio.ensure_future(collect(loop, [1], max_tokens=2))
        await until(lambda: not loop.healthy)
        after = await collect(loop, [3], max_tokens=3)  # submit revives the thread
        await asyncio.gather(first, return_exceptions=True)
        await loop.close()
        return after, loop.stats.engine_restarts

    after, restarts = run(main())
    assert tokens_of(after) == reference([3], 3) and restarts == 1


def test_close_does_not_drain_a_dead_loop() -> None:
    async def main() -> tuple[Any, bool]:
        backend = FailingBackend(Fatal(), on_step=2)
        loop = make_loop(backend)
        first = asyncio.ensure_future(collect(loop, [1, 2], max_tokens=5))
        await until(lambda: not loop.healthy)
        await loop.close(drain=True, timeout=30.0)  # within run()'s 10 s: no 30 s drain
        return (await asyncio.gather(first, return_exceptions=True))[0], backend.closed

    failed, closed = run(main())
    assert isinstance(failed, Unavailable) and closed


def test_shutdown_ends_running_and_waiting_streams_at_once() -> None:
    async def main() -> tuple[list[Any], Any]:
        backend = FakeBackend(delay=0.01)
        loop = make_loop(backend, slots=1, context_length=4000, kv_cells=4000)
        running = loop.submit([1], SamplingParams(temperature=0, max_tokens=3000))
        waiting = loop.submit([2], SamplingParams(temperature=0, max_tokens=10))
        first = await running.__aiter__().__anext__()
        loop.shutdown()
        outs = await asyncio.gather(_drain(running), _drain(waiting), return_exceptions=True)
        refused = None
        try:
            loop.submit([3], SamplingParams())
        except Unavailable as e:
            refused = e
        await loop.close()
        return [first, *outs], refused

    (first, running, waiting), refused = run(main())
    assert first.token_ids and isinstance(running, Unavailable) and isinstance(waiting, Unavailable)
    assert refused is not None


def test_close_gives_up_on_a_stuck_decode_after_its_timeout() -> None:
    async def main() -> tuple[Any, bool]:
        backend = FakeBackend()
        loop = make_loop(backend)
        backend.gate.clear()  # the next decode blocks, as a hung backend call would
        stream = asyncio.ensure_future(collect(loop, [1], max_tokens=3))
        await until(lambda: loop.running)
        await loop.close(drain=False, timeout=0.2)
        failed = (await asyncio.gather(stream, return_exceptions=True))[0]
        closed = backend.closed
        backend.gate.set()  # let the thread finish its step and end
        return failed, closed

    failed, closed = run(main())
    assert isinstance(failed, Unavailable)
    assert not closed  # never freed under a running decode

"""The continuous-batching loop against a fake backend that checks every KV position it is given.

The fake's next token is a function of the sequence's whole history as stored in its "KV cache",
so a scheduling bug (a skipped chunk, a wrong position, a freed slot reused too early) changes
the output or trips an assertion.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import Any

import numpy as np
import pytest

from edgeinfer.errors import BackendError, InvalidInput, QueueFull, Unavailable
from edgeinfer.runtime.llm_types import BatchItem
from edgeinfer.serving.llm_loop import GenChunk, LlmLoop, LoopLimits
from edgeinfer.serving.sampling import SamplingParams
from edgeinfer.telemetry.metrics import LlmStats
from tests.helpers import until

VOCAB = 40
EOS = 0


def next_token(history: Sequence[int]) -> int:
    return 1 + (sum(history) * 7 + len(history) * 3) % (VOCAB - 1)


def piece(token: int) -> bytes:
    return bytes([ord("a") + token % 26])


class FakeBackend:
    n_vocab = VOCAB
    eog = frozenset({EOS})

    def __init__(self, fail_on_step: int | None = None, delay: float = 0.0) -> None:
        self.delay = delay  # seconds per decode, like a real model
        self.gate = threading.Event()  # decode waits for it: tests clear it to hold a step
        self.gate.set()
        self.kv: dict[int, list[int]] = {}
        self.calls: list[list[BatchItem]] = []
        self.freed: list[int] = []
        self.closed = False
        self.fail_on_step = fail_on_step

    def decode(self, items: Sequence[BatchItem]) -> np.ndarray:
        assert self.gate.wait(10)
        time.sleep(self.delay)
        self.calls.append(list(items))
        if self.fail_on_step is not None and len(self.calls) == self.fail_on_step:
            raise BackendError("simulated failure")
        assert len({it.seq for it in items}) == len(items), "a sequence twice in one batch"
        rows = []
        for seq, tokens, pos, want in items:
            cells = self.kv.setdefault(seq, [])
            assert pos == len(cells), f"seq {seq}: position {pos}, cache holds {len(cells)}"
            cells.extend(tokens)
            if want:
                row = np.linspace(-1.0, 0.0, VOCAB, dtype=np.float32)
                row[next_token(cells)] = 5.0
                rows.append(row)
        return np.array(rows, np.float32).reshape(len(rows), VOCAB)

    def free(self, seq: int) -> None:
        self.kv.pop(seq, None)
        self.freed.append(seq)

    def piece(self, token: int) -> bytes:
        return piece(token)

    def close(self) -> None:
        self.closed = True


def reference(prompt: list[int], n: int) -> list[int]:
    history, out = list(prompt), []
    for _ in range(n):
        out.append(next_token(history))
        history.append(out[-1])
    return out


def make_loop(backend: FakeBackend | None = None, **limits: int) -> LlmLoop:
    kw = {"slots": 4, "context_length": 64, "kv_cells": 256, "prefill_chunk": 8,
          "max_waiting": 0} | limits  # fmt: skip
    return LlmLoop(backend or FakeBackend(), LoopLimits(**kw), LlmStats("m"))


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 10))


async def collect(loop: LlmLoop, prompt: list[int], **params: Any) -> list[GenChunk]:
    params = {"temperature": 0.0, "max_tokens": 5} | params
    return [c async for c in loop.submit(prompt, SamplingParams(**params))]


def tokens_of(chunks: list[GenChunk]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


def test_one_request_matches_the_reference_and_reports_usage() -> None:
    async def main() -> list[GenChunk]:
        return await collect(make_loop(), [5, 6, 7], max_tokens=6)

    chunks = run(main())
    assert tokens_of(chunks) == reference([5, 6, 7], 6)
    assert "".join(c.text for c in chunks) == b"".join(map(piece, reference([5, 6, 7], 6))).decode()
    last = chunks[-1]
    assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == ("length", 3, 6)
    assert all(c.finish_reason is None for c in chunks[:-1])


def test_batched_requests_match_their_solo_outputs_and_share_decode_steps() -> None:
    prompts = [[1], list(range(2, 30)), [9, 9, 9, 9], list(range(30, 37))]

    async def main() -> tuple[list[list[GenChunk]], FakeBackend]:
        backend = FakeBackend()
        backend.gate.clear()  # all four are queued before the first step runs
        asyncio.get_running_loop().call_later(0.05, backend.gate.set)
        loop = make_loop(backend)
        outs = await asyncio.gather(*(collect(loop, p, max_tokens=8 + i)
                                      for i, p in enumerate(prompts)))  # fmt: skip
        return outs, backend

    outs, backend = run(main())
    for i, (p, chunks) in enumerate(zip(prompts, outs, strict=True)):
        assert tokens_of(chunks) == reference(p, 8 + i)
    # Decoding sequences shared steps: some decode call carried 4 sequences at once.
    assert max(len(call) for call in backend.calls) == 4
    assert sorted(backend.freed) == [0, 1, 2, 3] and not backend.kv


def test_long_prompt_is_prefilled_in_chunks_without_stalling_running_streams() -> None:
    long_prompt = list(range(1, 39)) * 2  # 76 tokens, chunks of 8

    async def main() -> tuple[list[GenChunk], list[GenChunk], FakeBackend]:
        backend = FakeBackend()
        backend.gate.clear()
        loop = make_loop(backend, context_length=128, prefill_chunk=8)
        short = asyncio.ensure_future(collect(loop, [3], max_tokens=30))
        await until(lambda: len(loop.running) == 1)  # its prefill is held at the gate
        long = asyncio.ensure_future(collect(loop, long_prompt, max_tokens=3))
        await until(lambda: len(loop.waiting) == 1)
        backend.gate.set()
        return await short, await long, backend

    short, long, backend = run(main())
    assert tokens_of(short) == reference([3], 30)
    assert len(backend.calls[0]) == 1  # the short one's prefill; the long one came after
    assert tokens_of(long) == reference(long_prompt, 3)
    prefill_steps = [c for c in backend.calls if any(len(it.tokens) > 1 for it in c)]
    assert len(prefill_steps) == 10  # ceil(76 / 8)
    for call in prefill_steps:
        assert sum(len(it.tokens) for it in call if len(it.tokens) > 1) <= 8
        assert any(len(it.tokens) == 1 for it in call), "the running stream was stalled"


def test_context_overflow_is_refused_before_any_work() -> None:
    async def main() -> FakeBackend:
        backend = FakeBackend()
        loop = make_loop(backend, context_length=16)
        with pytest.raises(InvalidInput, match="maximum context length is 16 tokens"):
            loop.submit(list(range(1, 12)), SamplingParams(max_tokens=6))
        with pytest.raises(InvalidInput, match="prompt is empty"):
            loop.submit([], SamplingParams())
        with pytest.raises(InvalidInput, match="token ids"):
            loop.submit([VOCAB], SamplingParams(max_tokens=1))
        # Without max_tokens the completion may use the rest of the context.
        chunks = await collect(loop, list(range(1, 12)), max_tokens=None)
        assert chunks[-1].completion_tokens == 5
        return backend

    backend = run(main())
    assert all(len(call) == 1 for call in backend.calls)


def test_full_waiting_queue_is_refused_with_queue_full() -> None:
    async def main() -> None:
        backend = FakeBackend()
        backend.gate.clear()  # the first step holds
        loop = make_loop(backend, slots=1, max_waiting=1)
        first = loop.submit([1], SamplingParams(temperature=0, max_tokens=3))
        await until(lambda: len(loop.running) == 1)
        second = loop.submit([2], SamplingParams(temperature=0, max_tokens=3))
        with pytest.raises(QueueFull) as e:
            loop.submit([3], SamplingParams(max_tokens=3))
        assert e.value.retry_after >= 1.0
        backend.gate.set()
        assert [tokens_of([c async for c in s]) for s in (first, second)] == [
            reference([1], 3), reference([2], 3)]  # fmt: skip

    run(main())


def test_requests_wait_while_the_kv_budget_is_reserved() -> None:
    async def main() -> None:
        backend = FakeBackend()
        loop = make_loop(backend, context_length=32, kv_cells=32)
        a = loop.submit(list(range(1, 11)), SamplingParams(temperature=0, max_tokens=20))
        b = loop.submit([4, 5], SamplingParams(temperature=0, max_tokens=4))
        out_a = [c async for c in a]
        out_b = [c async for c in b]
        assert tokens_of(out_a) == reference(list(range(1, 11)), 20)
        assert tokens_of(out_b) == reference([4, 5], 4)
        assert max(len(call) for call in backend.calls) == 1  # never together

    run(main())


def test_leaving_a_stream_early_frees_its_slot_at_the_next_step() -> None:
    async def main() -> None:
        backend = FakeBackend(delay=0.002)
        loop = make_loop(backend, slots=1)
        stream = loop.submit([1, 2], SamplingParams(temperature=0, max_tokens=50))
        async for _ in stream:
            break  # the client went away after one token
        nxt = await collect(loop, [7], max_tokens=3)  # the only slot is free again
        assert tokens_of(nxt) == reference([7], 3)
        assert loop.stats.finished == {"stop": 0, "length": 1, "abort": 1}
        assert not loop.running and backend.freed == [0, 0]

    run(main())


def test_cancelled_task_cancels_a_waiting_request() -> None:
    async def main() -> None:
        backend = FakeBackend()
        backend.gate.clear()
        loop = make_loop(backend, slots=1)
        busy = asyncio.ensure_future(collect(loop, [1], max_tokens=20))
        await until(lambda: len(loop.running) == 1)
        waiter = asyncio.ensure_future(collect(loop, [2], max_tokens=20))
        await until(lambda: len(loop.waiting) == 1)
        waiter.cancel()
        backend.gate.set()
        await asyncio.gather(waiter, return_exceptions=True)
        await busy
        await until(lambda: not loop.waiting and not loop.running)
        assert loop.stats.finished["abort"] == 1

    run(main())


def test_stop_string_across_tokens_is_cut_and_never_leaked() -> None:
    expected = b"".join(map(piece, reference([3], 12))).decode()
    stop = expected[4:7]  # spans three tokens

    async def main() -> list[GenChunk]:
        return await collect(make_loop(), [3], max_tokens=12, stop=[stop, "zzzz"])

    chunks = run(main())
    text = "".join(c.text for c in chunks)
    assert text == expected[: expected.index(stop)]
    assert chunks[-1].finish_reason == "stop"
    assert len(tokens_of(chunks)) == expected.index(stop) + len(stop)


def test_stop_token_ids_and_eos_end_the_reply_without_text() -> None:
    target = reference([3], 6)[3]

    async def main() -> tuple[list[GenChunk], list[GenChunk]]:
        loop = make_loop()
        by_id = await collect(loop, [3], max_tokens=6, stop_token_ids=[target])
        eos = await collect(loop, [3], max_tokens=6, stop_token_ids=[], ignore_eos=True)
        return by_id, eos

    by_id, eos = run(main())
    assert tokens_of(by_id) == reference([3], 4) and by_id[-1].finish_reason == "stop"
    assert by_id[-1].text == ""
    assert eos[-1].finish_reason == "length"


def test_backend_failure_fails_the_batch_and_frees_the_slots() -> None:
    async def main() -> None:
        backend = FakeBackend(fail_on_step=2)
        loop = make_loop(backend)
        with pytest.raises(BackendError, match="simulated"):
            await collect(loop, [1, 2], max_tokens=5)
        assert not loop.running and backend.freed == [0]
        assert tokens_of(await collect(loop, [4], max_tokens=2)) == reference([4], 2)

    run(main())


def test_close_drains_then_refuses_and_closes_the_backend() -> None:
    async def main() -> None:
        backend = FakeBackend()
        loop = make_loop(backend)
        stream = loop.submit([1], SamplingParams(temperature=0, max_tokens=10))
        pending = asyncio.ensure_future(_drain(stream))
        await loop.close(drain=True)
        assert tokens_of(await pending) == reference([1], 10)
        assert backend.closed
        with pytest.raises(Unavailable):
            loop.submit([1], SamplingParams())

    run(main())


async def _drain(stream: Any) -> list[GenChunk]:
    return [c async for c in stream]


def test_stats_count_tokens_latencies_and_reasons() -> None:
    ticks = iter(np.arange(0.0, 100.0, 0.01))

    async def main() -> LlmLoop:
        loop = LlmLoop(FakeBackend(), LoopLimits(2, 64, 128, 8), LlmStats("m"),
                       clock=lambda: float(next(ticks)))  # fmt: skip
        await asyncio.gather(collect(loop, [1, 2, 3], max_tokens=4),
                             collect(loop, [5], max_tokens=2, stop_token_ids=[reference([5], 2)[1]]))  # fmt: skip
        return loop

    loop = run(main())
    s = loop.stats
    assert (s.prompt_tokens, s.generation_tokens) == (4, 6)
    assert s.finished == {"stop": 1, "length": 1, "abort": 0}
    assert sum(s.ttft.counts) == 2 and sum(s.itl.counts) == 4 and sum(s.e2e.counts) == 2
    assert loop.kv_usage == 0.0


def test_seeded_sampling_is_the_same_alone_and_batched() -> None:
    params = {"temperature": 1.0, "top_p": 0.9, "seed": 42, "max_tokens": 10}

    async def main() -> tuple[list[int], list[int]]:
        alone = tokens_of(await collect(make_loop(), [2, 3], **params))
        loop = make_loop()
        batched, _ = await asyncio.gather(collect(loop, [2, 3], **params),
                                          collect(loop, [8], temperature=1.0, max_tokens=12))  # fmt: skip
        return alone, tokens_of(batched)

    alone, batched = run(main())
    assert alone == batched

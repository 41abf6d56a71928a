"""Prefix caching: slot choice, trimming and eviction (SlotCache), and the loop's outputs with the
cache on against a fake backend whose next token depends on every (token, adapter) its KV cells
hold, so a wrong reuse (a stale cell, a cell of another adapter, a wrong position) changes the
output or trips an assertion."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from typing import Any

import numpy as np

from edgeinfer.runtime.llm_types import BatchItem
from edgeinfer.serving.llm_loop import GenChunk, LlmLoop, LoopAdapter, LoopLimits
from edgeinfer.serving.prefix_cache import SlotCache, common_prefix
from edgeinfer.serving.sampling import SamplingParams
from edgeinfer.telemetry.metrics import LlmStats
from tests.helpers import until

VOCAB = 50
EOS = 0
Cell = tuple[int, Any]  # (token, adapter handle it was computed under)


def next_token(cells: Sequence[Cell]) -> int:
    acc = sum((t + 1) * (3 + (a or 0)) * (i + 1) for i, (t, a) in enumerate(cells))
    return 1 + acc % (VOCAB - 1)


class CachingBackend:
    """A fake llama.cpp context: per-sequence cells, `keep` as seq_rm from n on, `copy` as
    seq_cp (the source's cells appended to the destination's)."""

    n_vocab = VOCAB
    eog = frozenset({EOS})

    def __init__(self, intact: bool = True) -> None:
        self.kv: dict[int, list[Cell]] = {}
        self.adapter: Any = None
        self.calls: list[list[BatchItem]] = []
        self.copies: list[tuple[int, int, int, int]] = []
        self.intact = intact  # False: like sliding-window layers that dropped old cells
        self.holds: dict[int, threading.Event] = {}  # decode call i waits for holds[i]

    def hold(self, call: int) -> threading.Event:
        self.holds[call] = threading.Event()
        return self.holds[call]

    def decode(self, items: Sequence[BatchItem]) -> np.ndarray:
        if len(self.calls) in self.holds:
            assert self.holds[len(self.calls)].wait(10)
        self.calls.append(list(items))
        rows = []
        for seq, tokens, pos, want in items:
            cells = self.kv.setdefault(seq, [])
            assert pos == len(cells), f"seq {seq}: position {pos}, cache holds {len(cells)}"
            cells.extend((t, self.adapter) for t in tokens)
            if want:
                row = np.zeros(VOCAB, np.float32)
                row[next_token(cells)] = 5.0
                rows.append(row)
        return np.array(rows, np.float32).reshape(len(rows), VOCAB)

    def keep(self, seq: int, n: int) -> int:
        cells = self.kv.setdefault(seq, [])
        if not self.intact:
            cells.clear()
            return 0
        assert len(cells) >= n, f"seq {seq} keeps {n} of {len(cells)} cells"
        del cells[n:]
        return n

    def copy(self, src: int, dst: int, p0: int, p1: int) -> bool:
        cells, into = self.kv.get(src, []), self.kv.setdefault(dst, [])
        if not self.intact or len(cells) < p1:
            return False
        assert len(into) == p0, f"seq {dst} holds {len(into)} cells, copy starts at {p0}"
        into.extend(cells[p0:p1])
        self.copies.append((src, dst, p0, p1))
        return True

    def free(self, seq: int) -> None:
        self.kv.pop(seq, None)

    def set_adapter(self, handle: Any, scale: float) -> None:
        self.adapter = handle

    def piece(self, token: int) -> bytes:
        return bytes([ord("a") + token % 26])

    def close(self) -> None:
        pass


def reference(prompt: list[int], n: int, adapter: Any = None) -> list[int]:
    cells: list[Cell] = [(t, adapter) for t in prompt]
    out = []
    for _ in range(n):
        out.append(next_token(cells))
        cells.append((out[-1], adapter))
    return out


def make_loop(backend: CachingBackend, **limits: Any) -> LlmLoop:
    kw = {"slots": 2, "context_length": 64, "kv_cells": 256, "prefill_chunk": 8,
          "prefix_cache": True} | limits  # fmt: skip
    return LlmLoop(backend, LoopLimits(**kw), LlmStats("m"))


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 10))


async def generate(loop: LlmLoop, prompt: list[int], n: int = 6,
                   adapter: LoopAdapter | None = None, **kw: Any) -> list[GenChunk]:  # fmt: skip
    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
    return [c async for c in loop.submit(prompt, params, adapter, **kw)]


def tokens_of(chunks: list[GenChunk]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


# ---- SlotCache -----------------------------------------------------------------------------
def test_common_prefix() -> None:
    a = np.array([1, 2, 3, 4], np.int32)
    assert common_prefix(a, np.array([1, 2, 9], np.int32)) == 2
    assert common_prefix(a, a[:2]) == 2
    assert common_prefix(a, np.array([7], np.int32)) == 0
    assert common_prefix(a, np.zeros(0, np.int32)) == 0


def test_take_picks_the_longest_prefix_and_trims_the_rest() -> None:
    backend = CachingBackend()
    cache = SlotCache(backend, 3, enabled=True)
    for seq, tokens in ((0, [1, 2, 3]), (1, [1, 2, 3, 4, 5, 6]), (2, [9, 9])):
        assert cache.take(tokens)[0] == seq  # empty slots in order
        backend.kv[seq] = [(t, None) for t in tokens]
    for seq, tokens in ((0, [1, 2, 3]), (1, [1, 2, 3, 4, 5, 6]), (2, [9, 9])):
        cache.give_back(seq, tokens)
    assert cache.cached_cells == 11
    # Slot 0's cells all match: it is taken and gets the 4th from slot 1, which stays whole.
    seq, cached = cache.take([1, 2, 3, 4, 7, 7])[:2]
    assert (seq, cached) == (0, 4) and len(backend.kv[0]) == 4 and len(backend.kv[1]) == 6
    assert backend.copies == [(1, 0, 3, 4)]
    # The whole prompt cached: its last token is prefilled again for the logits; no slot can
    # be taken without losing cells, so the longest match is trimmed in place.
    seq, cached = cache.take([1, 2, 3, 4, 5])[:2]
    assert (seq, cached) == (1, 4) and len(backend.kv[1]) == 4


def test_no_match_takes_an_empty_slot_else_the_least_recently_used() -> None:
    backend = CachingBackend()
    cache = SlotCache(backend, 3, enabled=True)
    for tokens in ([1, 2], [3, 4]):
        seq, _ = cache.take(tokens)[:2]
        backend.kv[seq] = [(t, None) for t in tokens]
        cache.give_back(seq, tokens)
    seq, cached = cache.take([5, 6])[:2]
    assert cached == 0 and seq == 2  # the empty one: both prefixes stay
    cache.give_back(seq, [5, 6])
    seq, cached = cache.take([7, 8])[:2]
    assert (seq, cached) == (0, 0) and 0 not in backend.kv  # LRU, its cells dropped


def test_prefixes_of_another_adapter_are_never_reused() -> None:
    backend = CachingBackend()
    cache = SlotCache(backend, 2, enabled=True)
    a, b = LoopAdapter("a", 1), LoopAdapter("b", 2)
    seq, _ = cache.take([1, 2, 3], a)[:2]
    backend.kv[seq] = [(t, 1) for t in (1, 2, 3)]
    cache.give_back(seq, [1, 2, 3], a)
    assert cache.take([1, 2, 3, 4], b)[1] == 0
    assert cache.take([1, 2, 3, 4], a)[:2] == (seq, 3)


def test_fit_evicts_least_recently_used_first_and_failed_slots_hold_nothing() -> None:
    backend = CachingBackend()
    cache = SlotCache(backend, 3, enabled=True)
    for tokens in ([1] * 5, [2] * 5, [3] * 5):
        seq, _ = cache.take(tokens)[:2]
        backend.kv[seq] = [(t, None) for t in tokens]
    for seq in (1, 0):
        cache.give_back(seq, [seq + 1] * 5)
    cache.give_back(2, None)  # a failed decode: unknown cells, dropped
    assert 2 not in backend.kv and cache.cached_cells == 10
    assert cache.fit(6) == 5 and 1 not in backend.kv and 0 in backend.kv
    assert cache.fit(0) == 5 and cache.cached_cells == 0


def test_disabled_cache_never_reuses() -> None:
    backend = CachingBackend()
    cache = SlotCache(backend, 1, enabled=False)
    seq, _ = cache.take([1, 2, 3])[:2]
    backend.kv[seq] = [(t, None) for t in (1, 2, 3)]
    cache.give_back(seq, [1, 2, 3])
    assert seq not in backend.kv and cache.take([1, 2, 3, 4])[:2] == (0, 0)


# ---- the loop with the cache on ------------------------------------------------------------
def test_a_chat_turn_prefills_only_what_is_new_with_identical_output() -> None:
    first = list(range(1, 20))

    async def main() -> tuple[list[GenChunk], list[GenChunk], CachingBackend, LlmLoop]:
        backend = CachingBackend()
        loop = make_loop(backend)
        one = await generate(loop, first)
        two = await generate(loop, first + tokens_of(one) + [7, 8, 9])
        await loop.close()
        return one, two, backend, loop

    one, two, backend, loop = run(main())
    assert tokens_of(one) == reference(first, 6)
    second = first + tokens_of(one) + [7, 8, 9]
    assert tokens_of(two) == reference(second, 6)
    # The answer's last token was sampled, never decoded: it and the new message are prefilled.
    assert two[-1].cached_tokens == len(first) + 5 and one[-1].cached_tokens == 0
    prefill = [it for call in backend.calls for it in call if len(it.tokens) > 1]
    assert (
        prefill[-1].pos == len(first) + 5 and list(prefill[-1].tokens) == second[len(first) + 5 :]
    )
    stats = loop.stats
    assert (stats.prefix_cache_queries, stats.prefix_cache_hits) == (len(first) + len(second),
                                                                      len(first) + 5)  # fmt: skip


def test_identical_outputs_with_chunked_prefill_eviction_and_opt_out() -> None:
    base = list(range(3, 40))
    prompts = [base, [*base, 1, 2], [5] * 30, [*base, 4, 4, 4], base[:10], [*base, 1, 2, 3]]

    async def main(**kw: Any) -> list[tuple[list[int], int]]:
        # 70 cells: an idle prefix must be evicted whenever a second one would not fit.
        loop = make_loop(CachingBackend(), kv_cells=70, prefill_chunk=4, **kw)
        outs = []
        for i, p in enumerate(prompts):
            chunks = await generate(loop, p, 5, cache_prompt=i != 5)
            outs.append((tokens_of(chunks), chunks[-1].cached_tokens))
        await loop.close()
        return outs

    outs = run(main())
    assert [o for o, _ in outs] == [reference(p, 5) for p in prompts]
    # 2 evicts the idle prefix of 1 (no room for both), 3 evicts 2's; 4 reuses 3's; 5 opts out.
    assert [c for _, c in outs] == [0, len(base), 0, 0, 9, 0]
    assert [o for o, _ in run(main(prefix_cache=False))] == [o for o, _ in outs]


def test_concurrent_conversations_and_adapters_keep_outputs_exact() -> None:
    a, b = LoopAdapter("a", 1), LoopAdapter("b", 2)
    prompt = list(range(1, 12))

    async def main() -> list[list[GenChunk]]:
        loop = make_loop(CachingBackend(), slots=2, steps_per_switch=1)
        first = await asyncio.gather(generate(loop, prompt, 4, a), generate(loop, prompt, 4, b))
        again = await asyncio.gather(
            generate(loop, [*prompt, 1], 4, b), generate(loop, [*prompt, 2], 4, a),
            generate(loop, [*prompt, 3], 4, None))  # fmt: skip
        await loop.close()
        return [*first, *again]

    outs = run(main())
    handles = [1, 2, 2, 1, None]
    prompts = [prompt, prompt, [*prompt, 1], [*prompt, 2], [*prompt, 3]]
    for chunks, h, p in zip(outs, handles, prompts, strict=True):
        assert tokens_of(chunks) == reference(p, 4, h)
    assert outs[2][-1].cached_tokens == len(prompt) and outs[3][-1].cached_tokens == len(prompt)


def test_cells_the_backend_lost_are_prefilled_again() -> None:
    async def main() -> list[GenChunk]:
        loop = make_loop(CachingBackend(intact=False))
        await generate(loop, [1, 2, 3, 4])
        out = await generate(loop, [1, 2, 3, 4, 5])
        await loop.close()
        return out

    out = run(main())
    assert tokens_of(out) == reference([1, 2, 3, 4, 5], 6) and out[-1].cached_tokens == 0


# ---- sharing cells between sequences (llama_memory_seq_cp) ----------------------------------
SYSTEM = list(range(1, 25))  # a shared system prompt: 3 prefill chunks of 8


def prefilled(backend: CachingBackend, outs: list[list[GenChunk]]) -> int:
    """Prompt tokens the backend computed: every decoded token but the generated ones fed back."""
    fed_back = sum(len(tokens_of(o)) - 1 for o in outs)
    return sum(len(it.tokens) for call in backend.calls for it in call) - fed_back


async def release(gate: threading.Event, loop: LlmLoop, queued: int) -> None:
    """Let a held decode go once `queued` requests wait for the next step."""
    await until(lambda: len(loop.waiting) == queued)
    gate.set()


def test_a_request_copies_the_prefix_a_running_request_holds() -> None:
    first, second = [*SYSTEM, 1, 2], [*SYSTEM, 3]

    async def main() -> tuple[list[list[GenChunk]], CachingBackend, LlmLoop]:
        backend = CachingBackend()
        gate = backend.hold(6)  # `first` is decoding then (4 prefill steps, then tokens)
        loop = make_loop(backend)
        running = asyncio.ensure_future(generate(loop, first, 30))
        await until(lambda: len(backend.calls) == 6)
        late = asyncio.ensure_future(generate(loop, second, 6))
        await release(gate, loop, 1)
        outs = [await running, await late]
        await loop.close()
        return outs, backend, loop

    (one, two), backend, loop = run(main())
    assert tokens_of(one) == reference(first, 30) and tokens_of(two) == reference(second, 6)
    assert backend.copies == [(0, 1, 0, len(SYSTEM))] and two[-1].cached_tokens == len(SYSTEM)
    assert prefilled(backend, [one, two]) == len(first) + 1
    assert loop.stats.prefix_cache_hits == len(SYSTEM)


def test_identical_prompts_prefill_once_and_the_others_copy_it() -> None:
    prompt = [*SYSTEM, 7, 7]

    async def main() -> tuple[list[list[GenChunk]], CachingBackend]:
        backend = CachingBackend()
        gate = backend.hold(0)  # the first prompt's first chunk waits while the others queue
        loop = make_loop(backend, slots=3)
        outs = asyncio.gather(*(generate(loop, prompt, 5) for _ in range(3)))
        await release(gate, loop, 2)
        got = await outs
        await loop.close()
        return got, backend

    outs, backend = run(main())
    assert all(tokens_of(o) == reference(prompt, 5) for o in outs)
    assert [o[-1].cached_tokens for o in outs] == [0, len(prompt) - 1, len(prompt) - 1]
    # Each sibling prefilled only the last prompt token (its logits are its own).
    assert prefilled(backend, outs) == len(prompt) + 2
    assert {dst for _, dst, _, _ in backend.copies} == {1, 2}


def test_a_cancelled_source_leaves_the_parked_request_to_prefill_alone() -> None:
    prompt = [*SYSTEM, 5]

    async def main() -> list[GenChunk]:
        backend = CachingBackend()
        first, second = backend.hold(0), backend.hold(1)
        loop = make_loop(backend, slots=3)
        other = asyncio.ensure_future(generate(loop, [9], 5))
        await until(lambda: len(loop.running) == 1)  # held in its first step
        source = loop.submit(prompt, SamplingParams(temperature=0.0, max_tokens=5))
        parked = asyncio.ensure_future(generate(loop, prompt, 5))
        await release(first, loop, 2)  # both start together; the source's first chunk is held
        await until(lambda: len(loop.running) == 3)
        source.cancel()
        second.set()
        await other
        out = await parked
        await loop.close()
        return out

    out = run(main())
    assert tokens_of(out) == reference(prompt, 5) and out[-1].cached_tokens == 0


def test_an_idle_conversation_is_copied_from_not_cut() -> None:
    talk = [*SYSTEM, 1, 1, 1]

    async def main() -> tuple[list[GenChunk], list[GenChunk], list[GenChunk], CachingBackend]:
        backend = CachingBackend()
        loop = make_loop(backend, slots=3)
        one = await generate(loop, talk)
        other = await generate(loop, [*SYSTEM, 2])  # an empty slot, the shared prefix copied
        turn = [*talk, *tokens_of(one), 9]
        two = await generate(loop, turn)  # the conversation's slot is still whole
        await loop.close()
        return one, other, two, backend

    one, other, two, backend = run(main())
    assert tokens_of(other) == reference([*SYSTEM, 2], 6)
    assert other[-1].cached_tokens == len(SYSTEM) and backend.copies[0][:2] == (0, 1)
    assert tokens_of(two) == reference([*talk, *tokens_of(one), 9], 6)
    assert two[-1].cached_tokens == len(talk) + 5


def test_a_running_request_of_another_adapter_is_never_copied_from() -> None:
    a, b = LoopAdapter("a", 1), LoopAdapter("b", 2)
    prompt = [*SYSTEM, 4]

    async def main() -> list[list[GenChunk]]:
        loop = make_loop(CachingBackend(), steps_per_switch=1)
        outs = await asyncio.gather(generate(loop, prompt, 5, a), generate(loop, prompt, 5, b))
        await loop.close()
        return outs

    for out, handle in zip(run(main()), (1, 2), strict=True):
        assert tokens_of(out) == reference(prompt, 5, handle) and out[-1].cached_tokens == 0

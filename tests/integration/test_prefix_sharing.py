"""Sequence copies (llama_memory_seq_cp) in the real llama.cpp: a request that takes a shared
prefix from a running request answers token for token as a fresh prefill does, and so does it
after the source's slot is handed to another request (its cells dropped) while the copy
still uses them. The tiny GGUF has an f32 KV cache with flash attention off: greedy output is
exact whatever the batching."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import llama_cpp  # noqa: F401  (missing: these tests fail, never skip)
import pytest

SYSTEM = "You are a terse assistant for an edge device. " * 6


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from edgeinfer.config import LlmOptions
    from edgeinfer.runtime.gguf_writer import build_gguf
    from edgeinfer.runtime.llm_llamacpp import LlamaCppModel

    path = tmp_path_factory.mktemp("share") / "m.gguf"
    build_gguf(path, "tiny", "f32", seed=0)
    options = LlmOptions(context_length=512, slots=2, n_batch=128, prefill_chunk=32,
                         kv_cache_type="f32", extra_buffer_types=False)  # fmt: skip
    m = LlamaCppModel(path, options, threads=1)
    yield m
    m.close()


def make_loop(model: Any) -> Any:
    from edgeinfer.serving.llm_loop import LlmLoop, LoopLimits
    from edgeinfer.telemetry.metrics import LlmStats

    for seq in range(2):  # an earlier loop's idle slots kept their cells
        model.free(seq)
    limits = LoopLimits(slots=2, context_length=512, kv_cells=model.kv_cells, prefill_chunk=32,
                        prefix_cache=True)  # fmt: skip
    return LlmLoop(model, limits, LlmStats("m"))


async def answer(stream: Any) -> tuple[list[int], int]:
    chunks = [c async for c in stream]
    return [t for c in chunks for t in c.token_ids], chunks[-1].cached_tokens


def test_a_copied_prefix_answers_exactly_while_its_source_runs_and_after_it_is_dropped(
    model: Any,
) -> None:
    from edgeinfer.serving.sampling import SamplingParams

    prompts = [model.tokenize(SYSTEM + q) for q in ("First?", "Second one?")]
    prompts.append(model.tokenize("Nothing in common with the others."))
    shared = min(len(p) for p in prompts[:2]) // 2
    greedy = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in (24, 120, 8)]

    async def alone() -> list[list[int]]:
        loop = make_loop(model)
        out = []
        for p, s in zip(prompts, greedy, strict=True):
            out.append((await answer(loop.submit(p, s, cache_prompt=False)))[0])
        return out

    async def shared_run() -> list[tuple[list[int], int]]:
        loop = make_loop(model)
        first = aiter(loop.submit(prompts[0], greedy[0]))
        head = await anext(first)  # the first request is decoding
        second = asyncio.ensure_future(answer(loop.submit(prompts[1], greedy[1])))
        rest = [t for c in [c async for c in first] for t in c.token_ids]
        # Its slot is idle now; with both slots taken, the third request reuses it and drops
        # its cells while the second still attends to the copies.
        third = await answer(loop.submit(prompts[2], greedy[2]))
        return [(head.token_ids + rest, head.cached_tokens), await second, third]

    expected = asyncio.run(alone())
    got = asyncio.run(shared_run())
    assert [tokens for tokens, _ in got] == expected
    assert got[1][1] > shared and got[0][1] == 0

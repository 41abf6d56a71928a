"""Tuning a GGUF model: llama.cpp's settings (threads, slots, prefill chunk, KV cache type, extra
buffer types) measured through our generation loop, like llama-bench: tokens/s for 1 and N
streams and the time to the first token."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from edgeinfer.tune.space import Device, thread_splits

PROMPT_TOKENS = 128
NEW_TOKENS = 32


@dataclass(frozen=True, order=True)
class LlmCandidate:
    n_threads: int = 1
    slots: int = 4
    prefill_chunk: int = 256
    kv_cache_type: str = "f16"
    extra_buffer_types: str = "auto"  # "auto" | "off"
    precision: str = "gguf"  # the model file as published (quantized in the GGUF itself)

    @property
    def key(self) -> str:
        return (
            f"llama.cpp threads={self.n_threads} slots={self.slots} "
            f"prefill_chunk={self.prefill_chunk} kv={self.kv_cache_type} "
            f"extra_buffers={self.extra_buffer_types}"
        )

    def overrides(self, base_max_batch: int = 0) -> dict[str, Any]:
        llm: dict[str, Any] = {
            "n_threads": self.n_threads,
            "slots": self.slots,
            "prefill_chunk": self.prefill_chunk,
            "n_batch": max(512, self.prefill_chunk + self.slots),  # a chunk plus a token a slot
            "kv_cache_type": self.kv_cache_type,
            "extra_buffer_types": "auto" if self.extra_buffer_types == "auto" else False,
        }
        if self.kv_cache_type == "q8_0":
            llm["flash_attn"] = True  # llama.cpp quantizes the V cache only with flash attention
        return {"llm": llm}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def llm_stages(device: Device, streams: int) -> list[Any]:
    """Threads first (with enough slots for the streams), then slots, then the KV cache type and
    extra buffer types, then the prefill chunk, each around the best so far."""
    cpus = max(1, device.usable_cpus)
    threads = sorted({t for t, i in thread_splits(cpus) if i == 1})
    base = LlmCandidate(n_threads=cpus, slots=max(1, streams))

    def best_of(trials: dict[str, Any]) -> LlmCandidate:
        from edgeinfer.tune.search import Objective

        scored = [
            (s, t)
            for t in trials.values()
            if t.candidate and (s := Objective().score(t)) is not None
        ]
        if not scored:
            return base
        return LlmCandidate(**max(scored, key=lambda st: st[0])[1].candidate)

    return [
        lambda _: [replace(base, n_threads=t) for t in threads],
        lambda tr: [replace(best_of(tr), slots=s) for s in sorted({1, 2, 4, 8, streams}) if s >= 1],
        lambda tr: [
            replace(best_of(tr), kv_cache_type="q8_0"),
            replace(best_of(tr), extra_buffer_types="off"),
        ],
        lambda tr: [replace(best_of(tr), prefill_chunk=c) for c in (128, 512)],
    ]


async def drive_llm(
    loop: Any, streams: int, seconds: float, rng: np.random.Generator
) -> tuple[int, float, list[float]]:
    """`streams` closed-loop generations for `seconds`: (tokens generated, elapsed, times to
    first token in s). Every prompt is fresh (no prefix cache hit)."""
    from edgeinfer.serving.sampling import SamplingParams

    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    vocab = loop.backend.n_vocab
    firsts: list[float] = []
    tokens = 0
    stop = time.perf_counter() + seconds

    async def stream() -> None:
        nonlocal tokens
        while time.perf_counter() < stop:
            prompt = rng.integers(3, vocab, PROMPT_TOKENS).tolist()
            t0 = time.perf_counter()
            first = True
            async for chunk in loop.submit(prompt, params, cache_prompt=False):
                if first:
                    firsts.append(time.perf_counter() - t0)
                    first = False
                tokens += len(chunk.token_ids)

    start = time.perf_counter()
    await asyncio.gather(*(stream() for _ in range(streams)))
    return tokens, time.perf_counter() - start, firsts

"""Prefix sharing by sequence copy (llama_memory_seq_cp), in-process on the loop the server runs.

    .venv/bin/python bench/llm_share.py [--reps 3] [--threads 1]

Uses bench/llm.py's ~336M-parameter Llama (Q4_0) in one LlamaCppModel (4 slots) driven by
LlmLoop, and measures:
- ttft: a request with a ~540-token system prompt is decoding (256 tokens to go); a second one
  with the same system prompt and another question arrives: its time to first token when it
  copies the prefix from the running request (`cache_prompt` on) and when it prefills it all
  (`cache_prompt` off), alternating, `reps` times each.
- n: the time until every choice has its first token for one prompt with n = 1, and with n = 4
  submitted together (as /v1/completions does): the siblings sharing the prompt's cells (the
  cache on) and each prefilling it (the cache off).
Writes bench/results/llm_share.json. The machine is shared: load averages are recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llm as base  # bench/llm.py: the model

SYSTEM = (
    "You are the assistant of a small edge device that watches a greenhouse. You answer in "
    "short sentences, you name the sensor you read, and you never invent a reading. "
) * 7


async def first_token(loop: Any, prompt: list[int], max_tokens: int, cache: bool) -> float:
    """Seconds from submit to the first chunk (the rest of the stream is drained)."""
    from edgeinfer.serving.sampling import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    stream = aiter(loop.submit(prompt, params, cache_prompt=cache))
    await anext(stream)
    took = time.perf_counter() - start
    async for _ in stream:
        pass
    return took


async def beside_a_running_request(loop: Any, model: Any, reps: int) -> dict[str, Any]:
    from edgeinfer.serving.sampling import SamplingParams

    out: dict[str, list[float]] = {"copy": [], "prefill": []}
    for i in range(reps):
        for mode in ("copy", "prefill"):
            busy = model.tokenize(SYSTEM + f"Run {i} {mode}: what does sensor 3 read?")
            params = SamplingParams(temperature=0.0, max_tokens=256, ignore_eos=True)
            running = aiter(loop.submit(busy, params, cache_prompt=False))
            await anext(running)  # decoding now
            late = model.tokenize(SYSTEM + f"Run {i} {mode}: and sensor 7?")
            out[mode].append(await first_token(loop, late, 4, mode == "copy"))
            async for _ in running:
                pass
    return {
        "system_prompt_tokens": len(model.tokenize(SYSTEM)),
        **{f"ttft_{k}_s": statistics.median(v) for k, v in out.items()},
        "runs": out,
    }


async def choices(loop: Any, model: Any, reps: int) -> dict[str, Any]:
    out: dict[str, list[float]] = {"n1": [], "n4_shared": [], "n4_each": []}
    for i in range(reps):
        for mode, n, cache in (("n1", 1, True), ("n4_shared", 4, True), ("n4_each", 4, False)):
            prompt = model.tokenize(f"Run {i} {mode}. " + SYSTEM)  # in no slot yet
            start = time.perf_counter()
            await asyncio.gather(*(first_token(loop, prompt, 4, cache) for _ in range(n)))
            out[mode].append(time.perf_counter() - start)
    return {
        "prompt_tokens": len(model.tokenize("Run 0 n1. " + SYSTEM)),
        **{f"{k}_all_first_token_s": statistics.median(v) for k, v in out.items()},
        "runs": out,
    }


async def main(threads: int, reps: int) -> dict[str, Any]:
    from edgeinfer.config import LlmOptions
    from edgeinfer.runtime.llm_llamacpp import LlamaCppModel
    from edgeinfer.serving.llm_loop import LlmLoop, LoopLimits
    from edgeinfer.telemetry.metrics import LlmStats

    path, _ = base.bench_model()
    options = LlmOptions(context_length=1024, slots=4, n_batch=512, prefill_chunk=256)
    model = LlamaCppModel(path, options, threads)
    limits = LoopLimits(4, 1024, model.kv_cells, 256, prefix_cache=True)
    loop = LlmLoop(model, limits, LlmStats("bench"))
    doc: dict[str, Any] = {"threads": threads, "reps": reps, "load_avg_start": os.getloadavg()}
    doc["beside_a_running_request"] = await beside_a_running_request(loop, model, reps)
    doc["n_choices"] = await choices(loop, model, reps)
    doc["load_avg_end"] = os.getloadavg()
    await loop.close()
    return doc


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    doc = asyncio.run(main(args.threads, args.reps))
    out = Path(__file__).resolve().parent / "results" / "llm_share.json"
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({k: v for k, v in doc.items()}, indent=1))

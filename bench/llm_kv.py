"""Flash attention and the KV cache type, measured: which is faster on this CPU, and at what cost.

    .venv/bin/python bench/llm_kv.py [--quick] [--threads 1] [--models bench,gemma]

For each setting (flash attention off/on x KV cache f16/q8_0; q8_0 only with flash on, which
llama.cpp needs to quantize the V cache), on the bench Llama (~336M, Q4_0, bench/llm.py builds
it) and Gemma 3 270M (Q4_K_M): 128-token prompts alone and 8 at once, a 1,536-token prompt
alone and 8 of 768 tokens (CASES):
- in-process: a fresh process per setting drives llama_decode through edgeinfer's thin
  LlamaCppModel wrapper (the same context the server builds: 8 slots, unified KV cache, 2,048
  tokens per slot), prompts in 512-token batches, then greedy decode steps;
- through the server: `edgeinfer serve` with the same [llm] settings, streamed completions of
  the same token ids (distinct per stream and run, so no prefix is cached);
prefill tok/s (prompt tokens / time to the first token; 8 streams: all prompts / time to the
last first token), decode tok/s (1 stream: after the first token; 8 streams: tokens/s while
all 8 decode), and KV bytes per token (llama_state_seq_get_size of one sequence / its tokens).
The machine is shared: every run of a setting is followed by the other settings (order rotated
each round), the median of the rounds counts, ratios are against the old default (f16, flash
off) of the same run, and load averages are recorded. Writes bench/results/llm_kv.json
(llm_kv-quick.json with --quick) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm import (  # bench/llm.py: the models, the server wrapper
    BENCH,
    PY,
    ROOT,
    Server,
    bench_model,
    cache_dir,
    extra_buffer_types,
    gemma_model,
    load,
    serve_gguf,
)

SLOTS, CONTEXT = 8, 2048
Cases = tuple[tuple[int, int], ...]
CASES: Cases = ((128, 1), (128, SLOTS), (1536, 1), (768, SLOTS))
QUICK_CASES: Cases = ((128, 1), (128, SLOTS), (512, 1), (256, SLOTS))
SETTINGS = (("off", "f16"), ("on", "f16"), ("on", "q8_0"))  # (flash attention, KV type)
BASE = "flash off, f16"
TEXT = (
    "Edge inference runs a model next to the sensor, the camera or the user, where the network "
    "is slow, costly or absent. A small computer answers in milliseconds and keeps the data. "
)


def label(flash: str, kv: str) -> str:
    return f"flash {flash}, {kv}"


def prompts(path: Path, lengths: tuple[int, ...], rounds: int) -> dict[str, list[int]]:
    """Token ids of every prompt a run sends, keyed "round/length/stream": each starts with
    its own words, so no two share a prefix the server's cache could reuse."""
    import llama_cpp

    vocab = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    out = {}
    for r in range(rounds):
        for n in lengths:
            for s in range(SLOTS):
                head = f"Round {r}, length {n}, stream {s}. "
                toks = vocab.tokenize((head + TEXT * (1 + n // 30)).encode())
                out[f"{r}/{n}/{s}"] = toks[:n]
    vocab.close()
    return out


# ---- in-process ------------------------------------------------------------------------------
_CHILD = r"""
import json, sys, time
import numpy as np
from pathlib import Path
from edgeinfer.config import LlmOptions
from edgeinfer.runtime.llm_llamacpp import BatchItem, LlamaCppModel
spec = json.loads(sys.stdin.read())
m = LlamaCppModel(Path(spec["path"]), LlmOptions(
    context_length=spec["context"], slots=spec["slots"], n_batch=512, prefill_chunk=256,
    kv_cache_type=spec["kv"], flash_attn=spec["flash"] == "on",
    extra_buffer_types=spec["bufts"], adaptive_threads=False), spec["threads"])
m.warmup()
out = {}
for n, k in spec["cases"]:
    toks = [spec["prompts"][f"{spec['round']}/{n}/{s}"] for s in range(k)]
    rows = []
    t0 = time.perf_counter()
    for s, t in enumerate(toks):
        for c in range(0, n, 512):
            r = m.decode([BatchItem(s, t[c:c + 512], c, c + 512 >= n)])
        rows.append(r[0])
    prefill = k * n / (time.perf_counter() - t0)
    kv_bytes = m._lib.llama_state_seq_get_size(m._ctx, 0) / n
    steps = spec["decode"][str(k)]
    pos = n
    t0 = time.perf_counter()
    for _ in range(steps):
        rows = m.decode([BatchItem(s, [int(np.argmax(r))], pos, True)
                         for s, r in enumerate(rows)])
        pos += 1
    decode = k * steps / (time.perf_counter() - t0)
    for s in range(k):
        m.free(s)
    out[f"{n}/{k}"] = {"prefill_tok_s": prefill, "decode_tok_s": decode,
                       "kv_bytes_per_token": kv_bytes}
m.close()
print(json.dumps(out))
"""


def inproc(spec: dict[str, Any]) -> dict[str, Any]:
    """One setting's in-process numbers, in a fresh process (one context, one KV allocation)."""
    # on stdin: the prompts' token ids exceed what one command-line argument may hold
    out = subprocess.run([PY, "-c", _CHILD], input=json.dumps(spec), capture_output=True,
                         text=True, timeout=1800, cwd=ROOT)  # fmt: skip
    if out.returncode:
        raise RuntimeError(f"in-process run exited {out.returncode}: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# ---- through the server ----------------------------------------------------------------------
def server(path: Path, name: str, spec: dict[str, Any], work: Path, tag: str = "") -> Server:
    """`edgeinfer serve` of one model with spec's settings; servers running at once need their
    own `tag` (a repository and log each: the server reloads a model whose config changes)."""
    return serve_gguf(
        path,
        name,
        f"context_length = {spec['context']}\nslots = {spec['slots']}\n"
        f"n_threads = {spec['threads']}\nadaptive_threads = false\n"
        f"flash_attn = {'true' if spec['flash'] == 'on' else 'false'}\n"
        f'kv_cache_type = "{spec["kv"]}"\n'
        f"extra_buffer_types = {'true' if spec['bufts'] else 'false'}\n",
        work,
        f"-kv{tag}",
    )


def completion(url: str, name: str, tokens: list[int], n: int, out: list[Any]) -> None:
    """One streamed completion of `tokens`; appends (t0, stamps of chunks with text)."""
    body = {"model": name, "prompt": tokens, "max_tokens": n, "temperature": 0,
            "ignore_eos": True, "stream": True}  # fmt: skip
    with httpx.Client(timeout=1800) as client:
        t0 = time.perf_counter()
        stamps = []
        with client.stream("POST", f"{url}/v1/completions", json=body) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if line.startswith("data: {") and '"text":' in line:
                    stamps.append(time.perf_counter())
    out.append((t0, stamps))


def served(url: str, name: str, toks: list[list[int]], n: int) -> dict[str, float]:
    """len(toks) concurrent streams: prefill and decode tok/s as the client sees them."""
    results: list[Any] = []
    threads = [threading.Thread(target=completion, args=(url, name, t, n, results))
               for t in toks]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t0 = min(r[0] for r in results)
    first = max(r[1][0] for r in results)
    prefill = sum(map(len, toks)) / (first - t0)
    if len(toks) == 1:
        s = results[0][1]
        return {"prefill_tok_s": prefill, "decode_tok_s": (len(s) - 1) / (s[-1] - s[0])}
    hi = min(r[1][-1] for r in results)  # the window in which every stream decodes
    inside = sum(1 for r in results for t in r[1] if first < t <= hi)
    return {"prefill_tok_s": prefill, "decode_tok_s": inside / (hi - first)}


def through_server(path: Path, name: str, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    srv = server(path, name, spec, work)
    try:
        out: dict[str, Any] = {"rss_mb_after_load": round(rss_mb(srv), 1)}
        for n, k in spec["cases"]:
            toks = [spec["prompts"][f"{spec['round']}/{n}/{s}"] for s in range(k)]
            # The server prefills one 256-token chunk per step while the streams already
            # started decode: the first streams decode through the others' prefill, so
            # that 8 streams decode together for `decode` steps.
            extra = 0 if k == 1 else k * n // 256 + 8
            out[f"{n}/{k}"] = served(srv.url, name, toks, spec["decode"][str(k)] + 1 + extra)
    finally:
        srv.stop()
    return out


def rss_mb(srv: Server) -> float:
    for line in Path(f"/proc/{srv.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# ---- one model: rounds of every setting, alternating -------------------------------------------
def measure(path: Path, name: str, args: argparse.Namespace, bufts: bool,
            loads: list[float]) -> dict[str, Any]:  # fmt: skip
    """Every setting, in-process then served, once per round; the settings' order rotates each
    round so drift in the neighbours' load falls on each in turn."""
    # (prompt tokens, streams). 8 long prompts fill 6,144 cells: 8 x 1,536 would take ~7 min
    # per setting to prefill at one thread here (non-flash attention spans every used cell).
    cases = QUICK_CASES if args.quick else CASES
    lengths = tuple(sorted({n for n, _ in cases}))
    rounds = 1 if args.quick else args.rounds
    base = {"path": str(path), "threads": args.threads, "bufts": bufts, "slots": SLOTS,
            "context": CONTEXT, "cases": cases, "prompts": prompts(path, lengths, rounds),
            "decode": {"1": 16 if args.quick else 48, str(SLOTS): 8 if args.quick else 24}}  # fmt: skip
    work = cache_dir() / "run"
    work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[str, list[Any]]] = {label(*s): {"inproc": [], "served": []}
                                             for s in SETTINGS}  # fmt: skip
    for r in range(rounds):
        for i in range(len(SETTINGS)):
            flash, kv = SETTINGS[(i + r) % len(SETTINGS)]
            spec = {**base, "flash": flash, "kv": kv, "round": r}
            print(f"{name} round {r}: {label(flash, kv)} (load {load():.2f})", flush=True)
            runs[label(flash, kv)]["inproc"].append({**inproc(spec), "load": load()})
            runs[label(flash, kv)]["served"].append(
                {**through_server(path, name, spec, work), "load": load()}
            )
            loads.append(load())
        # the raw runs so far, in case a later round fails
        (cache_dir() / "run" / f"llm_kv-{name}.json").write_text(json.dumps(runs))
    return {"model": name, "bytes": path.stat().st_size, "cases": cases,
            "rounds": rounds, "runs": runs, "medians": medians(runs, cases)}  # fmt: skip


def medians(runs: dict[str, dict[str, list[Any]]], cases: Cases) -> dict[str, Any]:
    """{setting: {side: {"length/streams": {metric: median, metric_vs_base: ratio}}}}."""
    out: dict[str, Any] = {}
    for setting, sides in runs.items():
        out[setting] = {}
        for side, rs in sides.items():
            out[setting][side] = {}
            for n, k in cases:
                key = f"{n}/{k}"
                cell = {m: round(float(np.median([r[key][m] for r in rs])), 1)
                        for m in rs[0][key]}  # fmt: skip
                out[setting][side][key] = cell
    for sides in out.values():  # ratios against the old default of the same run
        for side, cells in sides.items():
            for key, cell in cells.items():
                ref = out[BASE][side][key]
                for m in ("prefill_tok_s", "decode_tok_s"):
                    cell[f"{m}_vs_base"] = round(cell[m] / ref[m], 3)
    return out


def table(res: dict[str, Any]) -> str:
    """One row per model, length, streams and side; per setting: prefill / decode tok/s
    (ratio to flash off, f16)."""
    head = "| model | prompt | streams | side | " + " | ".join(label(*s) for s in SETTINGS) + " |"
    lines = [head, "|" + " --- |" * (4 + len(SETTINGS))]
    for m in res["models"]:
        for n, k in m["cases"]:
            for side in ("inproc", "served"):
                cells = [cell(m["medians"][label(*s)][side][f"{n}/{k}"]) for s in SETTINGS]
                lines.append(f"| {m['model']} | {n} | {k} | {side} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("KV cache bytes per token: " + "; ".join(map(kv_bytes, res["models"])))
    return "\n".join(lines)


def cell(c: dict[str, float]) -> str:
    return (f"{c['prefill_tok_s']:.0f} / {c['decode_tok_s']:.1f} "
            f"({c['prefill_tok_s_vs_base']:.2f}x / {c['decode_tok_s_vs_base']:.2f}x)")  # fmt: skip


def kv_bytes(m: dict[str, Any]) -> str:
    key = "/".join(map(str, max(c for c in m["cases"] if c[1] == 1)))
    per = [(kv, m["medians"][label(f, kv)]["inproc"][key]["kv_bytes_per_token"])
           for f, kv in SETTINGS[1:]]  # fmt: skip
    return f"{m['model']} " + ", ".join(f"{kv} {b:.0f}" for kv, b in per)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one round, 768-token long prompt")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default="bench,gemma", help="bench, gemma or both")
    args = ap.parse_args()
    bufts = extra_buffer_types()
    loads = [load()]
    res: dict[str, Any] = {"quick": args.quick, "threads": args.threads, "slots": SLOTS,
                           "context_per_slot": CONTEXT, "extra_buffer_types": bufts,
                           "base": BASE, "models": []}  # fmt: skip
    for which in args.models.split(","):
        path, name = (bench_model()[0], "bench-llama") if which == "bench" else (
            gemma_model(), "gemma3-270m")  # fmt: skip
        res["models"].append(measure(path, name, args, bufts["enabled"], loads))
    loads.append(load())
    res.update(loads=[round(x, 2) for x in loads], busy=max(loads) > 1.5,
               time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))  # fmt: skip
    out = BENCH / "results" / ("llm_kv-quick.json" if args.quick else "llm_kv.json")
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))
    print(f"wrote {out}; load averages {res['loads']}" + (" (BUSY)" if res["busy"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Flash attention and KV cache type, in-process and paired step by step: one process loads the
model once and keeps one context per setting, and every case runs on each context in turn, so a
busy minute on this shared machine falls on all settings alike.

    .venv/bin/python bench/llm_kv_paired.py [--reps 3] [--threads 1] [--models bench,gemma]

bench/llm_kv.py runs each setting in its own process and server, minutes apart; here the ratio
of a setting to the old default (flash off, f16) is taken within each repetition and the median
of those paired ratios is reported. Same cases and contexts as bench/llm_kv.py (8 slots,
unified KV cache, 2,048 tokens per slot). Writes bench/results/llm_kv_paired.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm import BENCH, PY, ROOT, bench_model, cache_dir, extra_buffer_types, gemma_model, load
from llm_kv import (
    BASE,
    CASES,
    CONTEXT,
    QUICK_CASES,
    SETTINGS,
    SLOTS,
    label,
    prompts,
    served,
    server,
)

_CHILD = r"""
import json, sys, time
import numpy as np
from pathlib import Path
from edgeinfer.config import LlmOptions
from edgeinfer.runtime.llm_llamacpp import BatchItem, LlamaCppModel
spec = json.loads(sys.stdin.read())
def options(flash, kv):
    return LlmOptions(context_length=spec["context"], slots=spec["slots"], n_batch=512,
                      prefill_chunk=256, kv_cache_type=kv, flash_attn=flash == "on",
                      extra_buffer_types=spec["bufts"], adaptive_threads=False)
settings = [tuple(s) for s in spec["settings"]]
m = LlamaCppModel(Path(spec["path"]), options(*settings[0]), spec["threads"])
ctxs = {settings[0]: m._ctx}
for s in settings[1:]:  # more contexts on the same weights; decode uses m._ctx / m._mem
    m.options = options(*s)
    ctxs[s] = m._new_context()
def use(s):
    m._ctx = ctxs[s]
    m._mem = m._lib.llama_get_memory(m._ctx)
for s in settings:
    use(s)
    m.warmup()
out = {}
for rep in range(spec["reps"]):
    for n, k in spec["cases"]:
        toks = [spec["prompts"][f"0/{n}/{s}"] for s in range(k)]
        for i in range(len(settings)):
            s = settings[(i + rep) % len(settings)]
            use(s)
            t0 = time.perf_counter()
            rows = []
            for q, t in enumerate(toks):
                for c in range(0, n, 512):
                    r = m.decode([BatchItem(q, t[c:c + 512], c, c + 512 >= n)])
                rows.append(r[0])
            prefill = k * n / (time.perf_counter() - t0)
            steps, pos = spec["decode"][str(k)], n
            t0 = time.perf_counter()
            for _ in range(steps):
                rows = m.decode([BatchItem(q, [int(np.argmax(r))], pos, True)
                                 for q, r in enumerate(rows)])
                pos += 1
            decode = k * steps / (time.perf_counter() - t0)
            for q in range(k):
                m.free(q)
            out.setdefault(f"{n}/{k}", {}).setdefault(" ".join(s), []).append(
                {"prefill_tok_s": prefill, "decode_tok_s": decode})
for s in settings[1:]:
    m._lib.llama_free(ctxs[s])
m._ctx = ctxs[settings[0]]
m.close()
print(json.dumps(out))
"""


def run(path: Path, args: argparse.Namespace, bufts: bool) -> dict[str, Any]:
    cases = QUICK_CASES if args.quick else CASES
    lengths = tuple(sorted({n for n, _ in cases}))
    spec = {"path": str(path), "threads": args.threads, "bufts": bufts, "slots": SLOTS,
            "context": CONTEXT, "cases": cases, "settings": SETTINGS, "reps": args.reps,
            "prompts": prompts(path, lengths, 1), "decode": {"1": 8 if args.quick else 48, str(SLOTS): 4 if args.quick else 24}}  # fmt: skip
    out = subprocess.run([PY, "-c", _CHILD], input=json.dumps(spec), capture_output=True,
                         text=True, timeout=7200, cwd=ROOT)  # fmt: skip
    if out.returncode:
        raise RuntimeError(f"paired run exited {out.returncode}: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def run_served(path: Path, name: str, args: argparse.Namespace, bufts: bool) -> dict[str, Any]:
    """The same alternation through one server per setting, all running at once (idle ones
    wait on a socket); each repetition sends new prompts, so nothing comes from a prefix cache.
    8 streams of 768 tokens are left out: that case agrees in bench/llm_kv.py and costs most."""
    cases = [c for c in (QUICK_CASES if args.quick else CASES) if c != (768, SLOTS)]
    lengths = tuple(sorted({n for n, _ in cases}))
    spec = {"threads": args.threads, "bufts": bufts, "slots": SLOTS, "context": CONTEXT,
            "prompts": prompts(path, lengths, args.reps)}  # fmt: skip
    work = cache_dir() / "run"
    servers = {}
    try:
        for flash, kv in SETTINGS:
            servers[(flash, kv)] = server(path, name, {**spec, "flash": flash, "kv": kv}, work,
                                          f"-{flash}-{kv}")  # fmt: skip
        out: dict[str, Any] = {}
        for rep in range(args.reps):
            for n, k in cases:
                toks = [spec["prompts"][f"{rep}/{n}/{s}"] for s in range(k)]
                steps = (8 if args.quick else 48) if k == 1 else (4 if args.quick else 24)
                for i in range(len(SETTINGS)):
                    s = SETTINGS[(i + rep) % len(SETTINGS)]
                    extra = 0 if k == 1 else k * n // 256 + 8  # as in llm_kv.through_server
                    cell = served(servers[s].url, name, toks, steps + 1 + extra)
                    out.setdefault(f"{n}/{k}", {}).setdefault(" ".join(s), []).append(cell)
    finally:
        for srv in servers.values():
            srv.stop()
    return out


def summary(raw: dict[str, Any]) -> dict[str, Any]:
    """Per case and setting: median tok/s, and the median of the per-repetition ratios to the
    old default (each ratio from runs seconds apart)."""
    out: dict[str, Any] = {}
    for case, per in raw.items():
        base = per[" ".join(SETTINGS[0])]  # the old default
        out[case] = {}
        for key, runs in per.items():
            cell: dict[str, float] = {}
            for m in ("prefill_tok_s", "decode_tok_s"):
                cell[m] = round(float(np.median([r[m] for r in runs])), 1)
                ratios = [r[m] / b[m] for r, b in zip(runs, base, strict=True)]
                cell[f"{m}_vs_base"] = round(float(np.median(ratios)), 3)
            out[case][label(*key.split())] = cell
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="short prompts: checks the script")
    ap.add_argument("--served", action="store_true", help="through servers, not in-process")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="bench,gemma")
    args = ap.parse_args()
    bufts = extra_buffer_types()
    loads = [load()]
    res: dict[str, Any] = {"threads": args.threads, "reps": args.reps, "base": BASE,
                           "extra_buffer_types": bufts, "models": {}}  # fmt: skip
    for which in args.models.split(","):
        path = bench_model()[0] if which == "bench" else gemma_model()
        name = "bench-llama" if which == "bench" else "gemma3-270m"
        raw = (run_served(path, name, args, bufts["enabled"]) if args.served
               else run(path, args, bufts["enabled"]))  # fmt: skip
        loads.append(load())
        res["models"][which] = {"runs": raw, "medians": summary(raw)}
        print(json.dumps(res["models"][which]["medians"], indent=1), flush=True)
    res.update(loads=[round(x, 2) for x in loads], busy=max(loads) > 1.5,
               time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))  # fmt: skip
    stem = "llm_kv_paired" + ("-served" if args.served else "") + ("-quick" if args.quick else "")
    out = BENCH / "results" / f"{stem}.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}; load averages {res['loads']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

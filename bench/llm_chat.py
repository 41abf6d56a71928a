"""Multi-turn chat with and without the prefix cache, decode against the roofline per kernel set
and thread count, in one run.

    .venv/bin/python bench/llm_chat.py [--quick]

Uses bench/llm.py's ~336M-parameter Llama (Q4_0) and measures:
- chat: one server, the same GGUF as two models, `chat` (prefix cache on, the default) and
  `chat-nocache` (`prefix_cache = false`). A conversation with a shared ~300-token system prompt
  grows over 6 turns (~1,500 tokens of history); each turn's time to first token is measured on
  both models, alternating, with greedy answers; then 8 conversations at once (4 turns each).
  Reports TTFT per turn, the cache-off/cache-on ratio, `usage.prompt_tokens_details
  .cached_tokens`, and whether the greedy answers matched.
- decode: single-stream decode tok/s in-process (our LlamaCppModel, as the server runs it) with
  (a) no extra buffer types (what the old probe left on a CPU whose AMX kernels fault) and
  (b) the kernels the new probe keeps (CPU_REPACK), at 1 thread and at all usable cores, each as
  a fraction of the memory roofline (weight bytes per token / copy bandwidth, same run).
Writes bench/results/llm_chat.json (llm_chat-quick.json with --quick). The machine is shared:
load averages are recorded.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llm as base  # bench/llm.py: the model, bandwidth, in-process runs, servers

SYSTEM = (
    "You are the assistant of a small edge device that watches a greenhouse. You answer in "
    "short sentences, you name the sensor you read, and you never invent a reading. "
) * 5
QUESTIONS = [
    "The soil sensor in bed three reads twenty percent moisture. Should the pump run now?",
    "The air temperature rose by four degrees in the last hour while the fan was off. Why?",
    "Relay two switched the lights on at six, but the camera shows them dark. What failed?",
    "The humidity sensor repeats the same value for an hour. Is it stuck, and how can I check?",
    "Summarise what we found so far and list the three actions I should take this evening.",
    "Write the maintenance note for tomorrow, one line per sensor we talked about.",
]


def repo(path: Path, work: Path, threads: int) -> Path:
    from edgeinfer.repository import add_version

    root = work / "chat-repo"
    for name, extra in (("chat", ""), ("chat-nocache", "prefix_cache = false\n")):
        model = root / name
        if not model.exists():
            model.mkdir(parents=True)
            add_version(model, {"model.gguf": path})
        (model / "config.toml").write_text(
            'backend = "llama.cpp"\n[llm]\ncontext_length = 2048\nslots = 8\n'
            f"kv_tokens = 8192\nn_threads = {threads}\nprefill_chunk = 256\n{extra}"
        )
    return root


def turn(client: httpx.Client, url: str, model: str, messages: list[dict[str, str]],
         n: int) -> dict[str, Any]:  # fmt: skip
    body = {"model": model, "messages": messages, "max_tokens": n, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    t0 = time.perf_counter()
    first, text, usage = None, [], {}
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            doc = json.loads(line[6:])
            for c in doc.get("choices") or []:
                piece = (c.get("delta") or {}).get("content")
                if piece:
                    first = first or time.perf_counter()
                    text.append(piece)
            usage = doc.get("usage") or usage
    return {
        "ttft_s": round((first or time.perf_counter()) - t0, 4),
        "answer": "".join(text),
        "prompt_tokens": usage.get("prompt_tokens"),
        "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
    }


def conversation(url: str, model: str, turns: int, n: int, tag: str = "") -> list[dict[str, Any]]:
    messages = [{"role": "system", "content": SYSTEM}]
    out = []
    with httpx.Client(timeout=900) as client:
        for q in QUESTIONS[:turns]:
            messages.append({"role": "user", "content": tag + q})
            r = turn(client, url, model, messages, n)
            messages.append({"role": "assistant", "content": r["answer"]})
            out.append(r)
    return out


def chat(url: str, turns: int, n: int) -> dict[str, Any]:
    """One conversation per model, turn by turn alternating which model goes first."""
    runs: dict[str, list[dict[str, Any]]] = {"chat": [], "chat-nocache": []}
    msgs = {m: [{"role": "system", "content": SYSTEM}] for m in runs}
    with httpx.Client(timeout=900) as client:
        turn(client, url, "chat", [{"role": "user", "content": "warm up"}], 2)
        for i, q in enumerate(QUESTIONS[:turns]):
            for m in ("chat", "chat-nocache") if i % 2 else ("chat-nocache", "chat"):
                msgs[m].append({"role": "user", "content": q})
                r = turn(client, url, m, msgs[m], n)
                msgs[m].append({"role": "assistant", "content": r["answer"]})
                runs[m].append(r)
    on, off = runs["chat"], runs["chat-nocache"]
    return {
        "turns": [{"turn": i + 1, "prompt_tokens": a["prompt_tokens"],
                   "cached_tokens": a["cached_tokens"], "ttft_cache_s": a["ttft_s"],
                   "ttft_nocache_s": b["ttft_s"],
                   "speedup": round(b["ttft_s"] / a["ttft_s"], 2),
                   "same_answer": a["answer"] == b["answer"]}
                  for i, (a, b) in enumerate(zip(on, off, strict=True))],
    }  # fmt: skip


def concurrent(url: str, k: int, turns: int, n: int) -> dict[str, Any]:
    """k conversations at once on each model (one model at a time)."""
    out: dict[str, Any] = {}
    for model in ("chat", "chat-nocache"):
        results: list[list[dict[str, Any]]] = [[] for _ in range(k)]

        def run(i: int, model: str, results: list[list[dict[str, Any]]]) -> None:
            results[i] = conversation(url, model, turns, n, tag=f"Greenhouse {i}. ")

        start = time.perf_counter()
        threads = [threading.Thread(target=run, args=(i, model, results)) for i in range(k)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        later = [r["ttft_s"] for conv in results for r in conv[2:]]
        out[model] = {"wall_s": round(time.perf_counter() - start, 2),
                      "ttft_turn3plus_median_s": round(float(np.median(later)), 4),
                      "cached_tokens": sum(r["cached_tokens"] or 0 for c in results for r in c),
                      "answers": [[r["answer"] for r in c] for c in results]}  # fmt: skip
    on, off = out["chat"].pop("answers"), out["chat-nocache"].pop("answers")
    # Answers that match (a conversation's later turns differ once one answer does).
    same = sum(a == b for x, y in zip(on, off, strict=True) for a, b in zip(x, y, strict=True))
    out["same_answers"] = f"{same}/{sum(len(x) for x in on)}"
    out["ttft_turn3plus_speedup"] = round(out["chat-nocache"]["ttft_turn3plus_median_s"]
                                          / out["chat"]["ttft_turn3plus_median_s"], 2)  # fmt: skip
    return out


def decode(path: Path, n: int, usable: int) -> list[dict[str, Any]]:
    """In-process decode tok/s per kernel set and thread count (best of 2). With more than
    one thread, fixed and adaptive (1 thread while the CPU pressure is high)."""
    rows = []
    configs = [(1, False, False), (1, True, False)]
    if usable > 1:
        configs += [(usable, False, False), (usable, True, False), (usable, True, True)]
    for threads, bufts, adaptive in configs:
        env = {"BENCH_ADAPTIVE_THREADS": "1" if adaptive else "0"}
        runs = [base.inproc(path, threads, n, "1", bufts, env, prompt="Hello")["decode_tok_s"]
                for _ in range(2)]  # fmt: skip
        rows.append({"threads": threads, "adaptive": adaptive, "extra_buffer_types": bufts,
                     "decode_tok_s": round(max(runs), 1), "load": round(base.load(), 2)})  # fmt: skip
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer turns and tokens")
    args = ap.parse_args()
    turns, n, k, k_turns = (4, 8, 4, 3) if args.quick else (6, 24, 8, 4)
    from edgeinfer.hardware import default_threads
    from edgeinfer.runtime.llm_probe import verdict

    work = base.cache_dir() / "run"
    work.mkdir(parents=True, exist_ok=True)
    path, model = base.bench_model()
    usable = default_threads()
    v = verdict()
    res: dict[str, Any] = {"quick": args.quick, "model": model, "loads": [base.load()],
                           "usable_threads": usable,
                           "kernels": {"enabled": v.enabled, "in_use": list(v.kernels),
                                       "disabled": list(v.disabled)}}  # fmt: skip
    res["bytes_per_token"] = base.bytes_per_token(path)
    bw = base.bandwidth_gbs()
    server = base.Server([base.PY, "-m", "edgeinfer.cli", "serve", "--repository",
                          str(repo(path, work, 1)), "--http-port", str(port := base.free_port()),
                          "--grpc-port", "0", "--log-level", "warning"], port,
                         work / "chat-server.log", "/v2/health/ready")  # fmt: skip
    try:
        res["chat"] = chat(server.url, turns, n)
        res["loads"].append(base.load())
        res["concurrent"] = concurrent(server.url, k, k_turns, n)
        res["loads"].append(base.load())
    finally:
        server.stop()
    res["decode"] = decode(path, 24 if args.quick else 64, usable)
    res["bandwidth_gbs"] = round(max(bw, base.bandwidth_gbs()), 2)
    res["roofline_tok_s"] = round(res["bandwidth_gbs"] * 1e9 / res["bytes_per_token"], 1)
    for row in res["decode"]:
        row["vs_roofline"] = round(row["decode_tok_s"] / res["roofline_tok_s"], 3)
    res["loads"].append(base.load())
    res["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = base.BENCH / "results" / ("llm_chat-quick.json" if args.quick else "llm_chat.json")
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))
    print(f"wrote {out}; load averages {res['loads']}")
    return 0


def table(res: dict[str, Any]) -> str:
    lines = ["| turn | prompt tokens | cached | TTFT cache on | TTFT off | speedup | same answer |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for t in res["chat"]["turns"]:
        lines.append(f"| {t['turn']} | {t['prompt_tokens']} | {t['cached_tokens']} | "
                     f"{t['ttft_cache_s'] * 1e3:.0f} ms | {t['ttft_nocache_s'] * 1e3:.0f} ms | "
                     f"{t['speedup']}x | {t['same_answer']} |")  # fmt: skip
    c = res["concurrent"]
    lines += ["", f"{len(QUESTIONS)} questions; concurrent conversations: TTFT from turn 3, "
              f"median {c['chat']['ttft_turn3plus_median_s'] * 1e3:.0f} ms with the cache vs "
              f"{c['chat-nocache']['ttft_turn3plus_median_s'] * 1e3:.0f} ms without "
              f"({c['ttft_turn3plus_speedup']}x), same answers: {c['same_answers']}", "",
              f"| decode, 1 stream (roofline {res['roofline_tok_s']} tok/s) | tok/s | of roofline |",
              "| --- | --- | --- |"]  # fmt: skip
    for d in res["decode"]:
        kernels = (
            (", ".join(res["kernels"]["in_use"]) or "extra buffer types")
            if d["extra_buffer_types"]
            else "no extra buffer types"
        )
        threads = f"{d['threads']} thread(s)" + (", adaptive" if d["adaptive"] else "")
        lines.append(f"| {threads}, {kernels} | {d['decode_tok_s']} | "
                     f"{d['vs_roofline']} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

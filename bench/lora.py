"""LoRA benchmark: what serving four adapters at once costs against serving one, in the same run.

    python bench/lora.py                # full run (~4 min on 2 cores) -> bench/results/lora.json
    python bench/lora.py --quick        # smoke run -> bench/results/lora-quick.json
    python bench/lora.py --table bench/results/lora.json   # the markdown table of a results file

a. ONNX: an MLP (256 -> 1024 -> 256; 0.1-1 ms a run at batch 1-16) with rank-24 LoRA on both
   MatMuls, dynamic batching on, 8 keep-alive connections: every request on one adapter against
   requests spread evenly over four (connection i keeps adapter i % 4). The stacked graph serves
   rows of different adapters in one run (target: >= 80% of the one-adapter req/s); the per-run
   graph, where the batcher groups requests by adapter, is measured beside it.
b. GGUF: the tests' tiny Llama (f32, 8 slots), 8 closed-loop generation streams (32-token
   completions, ignore_eos) on one adapter against two streams on each of four adapters:
   aggregate tokens/s (target: >= 50%).
c. Cold against warm: a server with --adapter-budget-mb 1 and ~240 KB adapter files (four fit).
   Requesting the fifth evicts the least recently used; the evicted one's next request (cold:
   reload + inference) against the request after it (warm), for the stacked ONNX model and the
   GGUF model (a 1-token completion).

Every server is `python -m edgeinfer.cli serve` in its own process; the load comes from this file
run with --client in another (bench/_load.py's raw-socket HTTP/1.1 connections, one adapter per
connection), which reports its own, the server's and the rest of the machine's CPU. Each point
waits for a quiet machine and is measured again when other processes used more than 30% of a
core during it (the quieter run is kept; `other_cpu` records the noise). One-adapter and
four-adapter runs alternate, and the best run of each sets the ratio.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _load
import httpx
import numpy as np
from _proc import HOST, Patience, Request, Server, free_port, post
from _report import add_output_args, run_and_write
from serving import log, machine_info, quietly, source_digest

from edgeinfer.config import LlmOptions

N_IN, HIDDEN, N_OUT = 256, 1024, 256
RANK = 24  # ONNX adapters; 4 * 24 * (256 + 1024 + 1024 + 256) B = 240 KB each
GGUF_RANK = 8  # the throughput adapters of the tiny Llama
GGUF_COLD_RANK = 40  # 40 * 2 layers * 736 floats * 4 B = 230 KB: four fit in 1 MB, five do not
ADAPTERS = ("a0", "a1", "a2", "a3")
COLD = ("c0", "c1", "c2", "c3", "c4")
CONNECTIONS = 8
LLM_TOKENS = 32
NOISY = 0.3
STEPS_PER_SWITCH = LlmOptions().lora_steps_per_switch  # the demo config keeps the default
SLICES = (2, 4, 8, 16)  # in-process: steps per adapter switch
ONNX_CONFIG = ('backend = "onnxruntime"\nmax_batch_size = 16\n\n[dynamic_batching]\n'
               "max_queue_delay_us = 200\n\n[onnxruntime]\nintra_op_threads = 1\n")  # fmt: skip
POLICY = (
    "llama.cpp applies a LoRA per context and re-reserves its compute graph after every change "
    "of the context's adapter, so the adapter groups time-slice the context: a step decodes one "
    "group (one adapter state per decode), the group whose adapter is set keeps the context for "
    "up to K = [llm] lora_steps_per_switch steps in a row (default {k}), then the group that has "
    "waited longest gets it. Four groups of two pay one switch per K decodes of two instead of "
    "four switches per step; the price is burstier streams: a group gets K tokens, then waits "
    "at most (groups - 1) * K steps while the others take their turns. One group decodes all "
    "its sequences every step, as before. max_loras bounds the groups sharing the context, "
    "hence that wait, at the price of a new adapter's first-token latency."
)


# ---- models ---------------------------------------------------------------------------------
def _pair(rng: np.random.Generator, d_in: int, d_out: int, rank: int) -> tuple[Any, Any]:
    a = rng.standard_normal((d_in, rank)) / np.sqrt(d_in)
    b = rng.standard_normal((rank, d_out)) / np.sqrt(rank)
    return a.astype(np.float32), b.astype(np.float32)


def build(tmp: Path) -> dict[str, Any]:
    """One repository: lora-stacked and lora-perrun (ONNX) and llm (GGUF), each with a0..a3
    (throughput) and c0..c4 (cold starts). Returns the repository and the reference weights."""
    import onnx
    from onnx import numpy_helper

    from edgeinfer.adapters.convert import convert_graph
    from edgeinfer.adapters.store import add_adapter
    from edgeinfer.demo.gguf import LLM_DEMO_CONFIG
    from edgeinfer.demo.lora import lora_pairs, write_gguf_lora
    from edgeinfer.repository import add_version
    from edgeinfer.runtime import gguf_writer
    from edgeinfer.runtime.lora_onnx import export_onnx_adapter
    from edgeinfer.testing import models

    b, repo = tmp / "build", tmp / "repo"
    base = models.mlp(b / "mlp.onnx", N_IN, HIDDEN, N_OUT, seed=1)
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(base)).graph.initializer}
    rng = np.random.default_rng(0)
    loras = {n: {"w1": _pair(rng, N_IN, HIDDEN, RANK), "w2": _pair(rng, HIDDEN, N_OUT, RANK)}
             for n in (*ADAPTERS, *COLD)}  # fmt: skip
    files = {n: export_onnx_adapter(b / f"{n}.onnx_adapter", w) for n, w in loras.items()}
    for model, stacked in (("lora-stacked", True), ("lora-perrun", False)):
        graph = convert_graph(base, b / model, ["w1", "w2"], stacked, RANK)
        models.publish(repo, model, graph / "model.onnx", ONNX_CONFIG,
                       extra={"lora.json": graph / "lora.json"})  # fmt: skip
        for n, f in files.items():
            add_adapter(repo / model, n, f)
    gguf_writer.build_gguf(b / "llm.gguf", "tiny", "f32", seed=0)
    (repo / "llm").mkdir()
    (repo / "llm" / "config.toml").write_text(
        LLM_DEMO_CONFIG.replace("slots = 4", f"slots = {CONNECTIONS}")
    )
    add_version(repo / "llm", {"model.gguf": b / "llm.gguf"}, version=1)
    shape = gguf_writer.SHAPES["tiny"]
    for i, n in enumerate((*ADAPTERS, *COLD)):
        rank = GGUF_RANK if n in ADAPTERS else GGUF_COLD_RANK
        f = write_gguf_lora(b / f"llm-{n}.gguf", lora_pairs(shape, i + 1, rank), alpha=rank)
        add_adapter(repo / "llm", n, f)
    sizes = {"onnx": files["c0"].stat().st_size, "gguf": (b / "llm-c0.gguf").stat().st_size}
    for kind, size in sizes.items():  # part c needs exactly four to fit in 1 MB
        assert 4 * size <= 2**20 < 5 * size, f"{kind} cold adapters are {size} B"
    return {"repo": repo, "build": b, "weights": weights, "loras": loras,
            "cold_adapter_bytes": sizes}  # fmt: skip


def reference(weights: dict[str, Any], x: Any, lora: dict[str, Any] | None) -> Any:
    w1, w2 = weights["w1"].astype(np.float64), weights["w2"].astype(np.float64)
    if lora:
        w1 = w1 + lora["w1"][0].astype(np.float64) @ lora["w1"][1]
        w2 = w2 + lora["w2"][0].astype(np.float64) @ lora["w2"][1]
    return np.maximum(x @ w1 + weights["b1"], 0) @ w2


# ---- requests -------------------------------------------------------------------------------
X = np.random.default_rng(1).standard_normal((1, N_IN)).astype(np.float32)
JSON = {"Content-Type": "application/json"}


def infer_request(model: str, adapter: str | None) -> Request:
    doc: dict[str, Any] = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, N_IN],
                                       "data": X.ravel().tolist()}]}  # fmt: skip
    if adapter:
        doc["parameters"] = {"adapter": adapter}
    return Request(model, json.dumps(doc).encode(), JSON)


class Completion(Request):
    @property
    def path(self) -> str:
        return "/v1/completions"


def completion(adapter: str | None, stream: int, tokens: int = LLM_TOKENS) -> Request:
    doc = {"model": f"llm:{adapter}" if adapter else "llm", "max_tokens": tokens,
           "prompt": f"Stream {stream}: edge inference runs next to the sensor.",
           "temperature": 0, "ignore_eos": True}  # fmt: skip
    return Completion("llm", json.dumps(doc).encode(), JSON)


def check(server: Server, built: dict[str, Any]) -> None:
    """Every adapter must give its own merged-weights output before anything is timed."""
    for model in ("lora-stacked", "lora-perrun"):
        for adapter in (None, *ADAPTERS):
            status, _, body = post(server.port, infer_request(model, adapter))
            if status != 200:
                raise RuntimeError(f"{model}:{adapter}: HTTP {status}: {body[:300]!r}")
            got = np.array(json.loads(body)["outputs"][0]["data"]).reshape(1, N_OUT)
            want = reference(built["weights"], X, built["loras"][adapter] if adapter else None)
            if not np.allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max()):
                raise RuntimeError(f"{model}:{adapter}: reply differs from the merged weights")


def check_llm(server: Server) -> None:
    texts = set()
    for adapter in (None, *ADAPTERS):
        status, _, body = post(server.port, completion(adapter, 0))
        doc = json.loads(body)
        if status != 200 or doc["usage"]["completion_tokens"] != LLM_TOKENS:
            raise RuntimeError(f"llm:{adapter}: HTTP {status}: {body[:300]!r}")
        texts.add(doc["choices"][0]["text"])
    if len(texts) != 5:
        raise RuntimeError("the GGUF adapters do not change the greedy output")


# ---- the load client (this file with --client, in its own process) ----------------------------
def client(spec: dict[str, Any]) -> dict[str, Any]:
    """Closed loop over keep-alive connections, each sending its own request; what counts is
    what completes inside the timed window (as bench/_load.py, with one body per connection)."""
    port = spec["port"]
    raw = [
        _load.build_request(HOST, port, r["path"], r["body"].encode(), JSON)
        for r in spec["requests"]
    ]
    out = _load.measure([lambda r=r: _load._RawConn(HOST, port, r) for r in raw],
                        spec["warmup"], spec["duration"], spec["pid"])  # fmt: skip
    return {"connections": len(raw), **out}


def in_own_process(flag: str, spec: dict[str, Any], tmp: Path, timeout: float) -> dict[str, Any]:
    """Run this file with `flag SPEC_FILE` in a new process; it prints one JSON line."""
    path = tmp / f"{flag.strip('-')}.json"
    path.write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, __file__, flag, str(path)], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{flag} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def run_client(server: Server, requests: list[Request], opts: argparse.Namespace,
               tmp: Path) -> dict[str, Any]:  # fmt: skip
    spec = {"port": server.port, "pid": server.pid, "duration": opts.duration,
            "warmup": opts.warmup, "requests": [{"path": r.path, "body": r.body.decode()}
                                                for r in requests]}  # fmt: skip
    return in_own_process("--client", spec, tmp, opts.duration + opts.warmup + 180)


# ---- a and b: one adapter against four --------------------------------------------------------
def start(repo: Path, tmp: Path, models: list[str], *extra: str) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "edgeinfer.cli", "serve", "--repository", str(repo), "--host",
           HOST, "--http-port", str(port), "--grpc-port", "0", "--log-level", "warning",
           "--model-control", "explicit", *(a for m in models for a in ("--load-model", m)),
           *extra]  # fmt: skip
    server = Server("edgeinfer", cmd, port, tmp / f"edgeinfer-{port}.log")
    server.start()
    probe = infer_request(models[0], None) if models[0] != "llm" else completion(None, 0, 1)
    server.wait_first_success([probe], timeout=120)
    return server


def _runs(server: Server, model: str) -> tuple[int, int]:
    """(rows served, model runs) so far: their ratio is the mean batch size."""
    doc = httpx.get(f"http://{HOST}:{server.port}/v2/models/{model}/stats", timeout=10).json()
    stats = doc["model_stats"]
    return sum(v["inference_count"] for v in stats), sum(v["execution_count"] for v in stats)


def compare(server: Server, streams: dict[str, list[Request]], unit: float,
            opts: argparse.Namespace, tmp: Path, label: str) -> dict[str, Any]:  # fmt: skip
    """Alternate the one-adapter and four-adapter streams `opts.reps` times each; the best run
    of each (the least disturbed) counts. `unit`: tokens per request (1 for req/s)."""
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in streams}
    for _ in range(opts.reps):
        for kind, requests in streams.items():
            before = _runs(server, requests[0].model)
            p = quietly(lambda r=requests: run_client(server, r, opts, tmp), server, opts)
            rows, execs = (
                a - b for a, b in zip(_runs(server, requests[0].model), before, strict=True)
            )
            p["rows_per_run"] = round(rows / execs, 2) if execs else None
            p["per_s"] = round(p["rps"] * unit, 1)
            runs[kind].append(p)
            log(f"{label} {kind}: {p['per_s']:,} /s, p50 {p['p50_ms']} ms, "
                f"{p['rows_per_run']} rows a run, errors {p['errors']}, "
                f"client CPU {p['client_cpu']:.0%}, server {p['server_cpu']:.0%}, "
                f"other {p['other_cpu']:.0%}")  # fmt: skip
            if p["errors"]:
                log(f"  first error: {p['first_error']}")
    best = {k: max(v, key=lambda p: p["per_s"]) for k, v in runs.items()}
    one, four = best["one_adapter"]["per_s"], best["four_adapters"]["per_s"]
    return {"runs": runs, "one_adapter": one, "four_adapters": four,
            "ratio": round(four / one, 3) if one else None,
            "noisy": any(b["other_cpu"] > NOISY for b in best.values())}  # fmt: skip


def onnx_part(built: dict[str, Any], opts: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    server = start(built["repo"], tmp, ["lora-stacked", "lora-perrun"])
    try:
        check(server, built)
        out: dict[str, Any] = {}
        for model in ("lora-stacked", "lora-perrun"):
            streams = {"one_adapter": [infer_request(model, "a0")] * CONNECTIONS,
                       "four_adapters": [infer_request(model, ADAPTERS[i % 4])
                                         for i in range(CONNECTIONS)]}  # fmt: skip
            out[model] = compare(server, streams, 1.0, opts, tmp, model)
        out["rss_mb"] = server.rss_mb()
        return out
    finally:
        server.stop()


def llm_part(built: dict[str, Any], opts: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    server = start(built["repo"], tmp, ["llm"])
    try:
        check_llm(server)
        streams = {"one_adapter": [completion("a0", i) for i in range(CONNECTIONS)],
                   "four_adapters": [completion(ADAPTERS[i % 4], i) for i in range(CONNECTIONS)]}  # fmt: skip
        out = compare(server, streams, LLM_TOKENS, opts, tmp, "llm")
        out["rss_mb"] = server.rss_mb()
    finally:
        server.stop()
    out["policy"] = POLICY.format(k=STEPS_PER_SWITCH)
    out["lora_steps_per_switch"] = STEPS_PER_SWITCH
    spec = {"model": str(built["repo"] / "llm" / "1" / "model.gguf"), "steps": 200,
            "adapters": [str(built["build"] / f"llm-{n}.gguf") for n in ADAPTERS]}  # fmt: skip
    opts.patience.wait_quiet(None)
    out["in_process"] = in_own_process("--decode-floor", spec, tmp, 300)
    log(f"llm in-process: {out['in_process']}")
    return out


def decode_floor(spec: dict[str, Any]) -> dict[str, Any]:
    """In-process llama.cpp decode tok/s of 8 sequences (no server): one decode of all 8; four
    decodes of 2 on one adapter; four decodes of 2, each after an adapter change (a switch every
    decode); and the loop's time-slicing, where each adapter's pair decodes K steps in a row
    between switches. Best of 3, interleaved. Separates the cost of more decodes from that of
    switching, and shows what each K of `lora_steps_per_switch` can reach."""
    from edgeinfer.config import LlmOptions
    from edgeinfer.runtime.llm_llamacpp import BatchItem, LlamaCppModel

    options = LlmOptions(context_length=512, slots=8, n_batch=256, prefill_chunk=128,
                         kv_cache_type="f32")  # fmt: skip
    m = LlamaCppModel(Path(spec["model"]), options, 1)
    handles = [m.load_adapter(Path(f)) for f in spec["adapters"]]
    prompt = m.tokenize("Edge inference runs next to the sensor.")
    pairs = [list(range(i, 8, 4)) for i in range(4)]
    # name -> (sequences of each decode, steps per adapter switch; 0: never switch)
    patterns = {"one_decode_of_8": ([list(range(8))], 0),
                "four_decodes_one_adapter": (pairs, 0),
                "four_decodes_four_adapters": (pairs, 1),
                **{f"sliced_k{k}": (pairs, k) for k in SLICES}}  # fmt: skip
    best = dict.fromkeys(patterns, 0.0)
    for _ in range(3):
        for name, (groups, k) in patterns.items():
            m.set_adapter(handles[0], 1.0)
            for seq in range(8):
                m.free(seq)
                m.decode([BatchItem(seq, prompt, 0, True)])
            rounds = spec["steps"] // max(k, 1)  # every sequence gets the same token count
            pos, t0 = len(prompt), time.perf_counter()
            for _ in range(rounds):
                for g, seqs in enumerate(groups):
                    if k:
                        m.set_adapter(handles[g], 1.0)
                    for i in range(max(k, 1)):
                        m.decode([BatchItem(seq, [5], pos + i, True) for seq in seqs])
                pos += max(k, 1)
            best[name] = max(best[name], 8 * (pos - len(prompt)) / (time.perf_counter() - t0))
    m.close()
    one = best["one_decode_of_8"]
    return {**{k: round(v, 1) for k, v in best.items()},
            "ratio_more_decodes": round(best["four_decodes_one_adapter"] / one, 3),
            "ratio_switching": round(best["four_decodes_four_adapters"] / one, 3),
            **{f"ratio_sliced_k{k}": round(best[f"sliced_k{k}"] / one, 3) for k in SLICES}}  # fmt: skip


# ---- c: cold against warm -------------------------------------------------------------------
def _load_stats(server: Server) -> tuple[dict[str, float], float, float]:
    """(model:adapter -> loads, load seconds sum, count) from /metrics."""
    text = httpx.get(f"http://{HOST}:{server.port}/metrics", timeout=10).text
    loads = {}
    for labels, v in re.findall(r"^edgeinfer_adapter_loads_total\{(.*)\} (\S+)$", text, re.M):
        d = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        loads[f"{d['model']}:{d['adapter']}"] = float(v)
    total = re.search(r"^edgeinfer_adapter_load_seconds_sum (\S+)$", text, re.M)
    count = re.search(r"^edgeinfer_adapter_load_seconds_count (\S+)$", text, re.M)
    return loads, float(total.group(1)) if total else 0.0, float(count.group(1)) if count else 0.0


def _timed(server: Server, req: Request) -> float:
    t0 = time.perf_counter()
    status, _, body = post(server.port, req)
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
    return (time.perf_counter() - t0) * 1e3


def cold_warm(server: Server, model: str, opts: argparse.Namespace) -> dict[str, Any]:
    def request(name: str) -> Request:
        return infer_request(model, name) if model != "llm" else completion(name, 0, 1)

    lru = list(COLD[:4])
    for name in lru:  # four resident (evicting whatever was there)
        _timed(server, request(name))
    missing = COLD[4]
    opts.patience.wait_quiet(server)
    cold, warm, verified = [], [], 0
    _, sum0, count0 = _load_stats(server)
    for _ in range(opts.cycles):
        before = _load_stats(server)[0].get(f"{model}:{missing}", 0.0)
        cold.append(_timed(server, request(missing)))  # evicts lru[0]
        warm.append(_timed(server, request(missing)))
        verified += _load_stats(server)[0].get(f"{model}:{missing}", 0.0) - before == 1
        lru.append(missing)
        missing = lru.pop(0)
    _, sum1, count1 = _load_stats(server)
    loads = count1 - count0
    out = {"cycles": opts.cycles, "verified_cold": verified,
           "cold_p50_ms": round(statistics.median(cold), 2),
           "cold_p90_ms": round(float(np.percentile(cold, 90)), 2),
           "warm_p50_ms": round(statistics.median(warm), 2),
           "warm_p90_ms": round(float(np.percentile(warm, 90)), 2),
           "server_load_mean_ms": round((sum1 - sum0) / loads * 1e3, 2) if loads else None}  # fmt: skip
    out["cold_minus_warm_p50_ms"] = round(out["cold_p50_ms"] - out["warm_p50_ms"], 2)
    log(f"{model}: cold p50 {out['cold_p50_ms']} ms, warm p50 {out['warm_p50_ms']} ms, "
        f"server-side load {out['server_load_mean_ms']} ms ({verified}/{opts.cycles} reloaded)")  # fmt: skip
    return out


def cold_part(built: dict[str, Any], opts: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    server = start(built["repo"], tmp, ["lora-stacked", "llm"], "--adapter-budget-mb", "1")
    try:
        out = {m: cold_warm(server, m, opts) for m in ("lora-stacked", "llm")}
        out["adapter_budget_mb"] = 1
        out["adapter_bytes"] = built["cold_adapter_bytes"]
        return out
    finally:
        server.stop()


# ---- the run --------------------------------------------------------------------------------
def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    onnx, llm = res["onnx"]["lora-stacked"], res["llm"]
    rows = [("ONNX, 4 adapters in mixed (stacked) batches >= 80% of one adapter's req/s",
             onnx["ratio"], ">= 0.80", (onnx["ratio"] or 0) >= 0.80, onnx["noisy"]),
            ("GGUF, 8 streams over 4 adapters >= 50% of 8 on one adapter's tokens/s",
             llm["ratio"], ">= 0.50", (llm["ratio"] or 0) >= 0.50, llm["noisy"])]  # fmt: skip
    return [{"target": t, "value": v, "limit": lim, "met": bool(ok), "noisy": n}
            for t, v, lim, ok, n in rows]  # fmt: skip


def table(res: dict[str, Any]) -> str:
    o, llm, cold = res["onnx"], res["llm"], res["cold"]
    mark = {True: "✓", False: "✗"}

    def row(label: str, r: dict[str, Any], unit: str, target: str) -> str:
        noisy = " †" if r["noisy"] else ""
        return (f"| {label} | {r['one_adapter']:,.0f} {unit} | {r['four_adapters']:,.0f} {unit} "
                f"| {r['ratio']:.2f}{noisy} | {target} |")  # fmt: skip

    met = [mark[x["met"]] for x in res["targets"]]
    lines = [
        "| LoRA serving, 8 connections | one adapter | 4 adapters, evenly | ratio | target |",
        "|---|---:|---:|---:|---|",
        row("ONNX MLP, mixed-adapter (stacked) batches", o["lora-stacked"], "req/s",
            f">= 0.80 {met[0]}"),
        row("ONNX MLP, batches grouped by adapter (per-run)", o["lora-perrun"], "req/s",
            "reported"),
        row(f"GGUF tiny Llama, {LLM_TOKENS}-token completions", llm, "tok/s",
            f">= 0.50 {met[1]}"),
        "",
        "| First request to an adapter | cold (evicted, reloads): p50 / p90 | warm: p50 / p90 "
        "| server-side load |",
        "|---|---:|---:|---:|",
    ]  # fmt: skip
    for model, label in (("lora-stacked", "ONNX stacked, 1 row"), ("llm", "GGUF, 1 token")):
        c = cold[model]
        lines.append(f"| {label} | {c['cold_p50_ms']:.2f} / {c['cold_p90_ms']:.2f} ms "
                     f"| {c['warm_p50_ms']:.2f} / {c['warm_p90_ms']:.2f} ms "
                     f"| {c['server_load_mean_ms']} ms |")  # fmt: skip
    m, f = res["machine"], llm["in_process"]
    lines += ["", f"GGUF policy: {llm['policy']}",
              f"In-process llama.cpp, 8 sequences, no server: one decode of 8 "
              f"{f['one_decode_of_8']:,.0f} tok/s; four decodes of 2 on one adapter "
              f"{f['four_decodes_one_adapter']:,.0f} ({f['ratio_more_decodes']:.2f}); four decodes "
              f"of 2, each after an adapter change {f['four_decodes_four_adapters']:,.0f} "
              f"({f['ratio_switching']:.2f}); time-sliced, K decodes of 2 per switch: "
              + ", ".join(f"K = {k} {f[f'sliced_k{k}']:,.0f} ({f[f'ratio_sliced_k{k}']:.2f})"
                          for k in SLICES if f"sliced_k{k}" in f) + "."]  # fmt: skip
    if o["lora-stacked"]["noisy"] or o["lora-perrun"]["noisy"] or llm["noisy"]:
        lines.append(f"† other processes used more than {NOISY:.0%} of a core during the best "
                     "run (even after a retry): treat it as noisy.")  # fmt: skip
    lines.append(
        f"{m['cpu']}, {m['nproc']} cores, {m['date'][:10]}; {res['settings']['duration_s']:g} s "
        f"per point after {res['settings']['warmup_s']:g} s warm-up, best of "
        f"{res['settings']['reps']}; cold starts: {cold['lora-stacked']['cycles']} cycles with "
        f"--adapter-budget-mb 1. `python bench/lora.py` reproduces it."
    )
    return "\n".join(lines)


def run(opts: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    res: dict[str, Any] = {
        "benchmark": "lora", "mode": "quick" if opts.quick else "full", "machine": machine_info(),
        "settings": {"duration_s": opts.duration, "warmup_s": opts.warmup, "reps": opts.reps,
                     "cycles": opts.cycles, "connections": CONNECTIONS, "noisy_other_cpu": NOISY,
                     "onnx": f"MLP {N_IN}->{HIDDEN}->{N_OUT}, LoRA rank {RANK} on w1 and w2, "
                     "KServe v2 JSON [1, 256] in and out", "onnx_config": ONNX_CONFIG,
                     "llm": f"tiny Llama f32, {CONNECTIONS} slots, LoRA rank {GGUF_RANK}, "
                     f"{LLM_TOKENS}-token non-streaming completions with ignore_eos"},
        "edgeinfer_source": source_digest(),
    }  # fmt: skip
    log("building models and adapters")
    built = build(tmp)
    res["onnx"] = onnx_part(built, opts, tmp)
    res["llm"] = llm_part(built, opts, tmp)
    res["cold"] = cold_part(built, opts, tmp)
    res["edgeinfer_source_changed_during_run"] = source_digest() != res["edgeinfer_source"]
    res["targets"] = targets(res)
    return res


def main() -> int:
    p = argparse.ArgumentParser(description="edgeinfer LoRA benchmark",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    p.add_argument("--quick", action="store_true", help="short points, one rep (smoke run)")
    p.add_argument("--duration", type=float, help="seconds per load point (default 8, quick 3)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per point (default 2, quick 1)")
    p.add_argument("--reps", type=int, help="runs of each stream, alternating (default 2, quick 1)")
    p.add_argument("--cycles", type=int, help="cold/warm pairs per model (default 30, quick 5)")
    add_output_args(p, "lora")
    p.add_argument("--client", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--decode-floor", type=Path, help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.client:
        print(json.dumps(client(json.loads(opts.client.read_text()))))
        return 0
    if opts.decode_floor:
        print(json.dumps(decode_floor(json.loads(opts.decode_floor.read_text()))))
        return 0
    opts.duration = opts.duration or (3.0 if opts.quick else 8.0)
    opts.warmup = opts.warmup if opts.warmup is not None else (1.0 if opts.quick else 2.0)
    opts.reps = opts.reps or (1 if opts.quick else 2)
    opts.cycles = opts.cycles or (5 if opts.quick else 30)
    opts.patience = Patience(30.0 if opts.quick else 90.0, 5.0 if opts.quick else 10.0)
    return run_and_write("lora", opts, run, table)


if __name__ == "__main__":
    sys.exit(main())

"""Dynamic batching benchmark: edgeinfer with batching on and off, the naive FastAPI + ONNX Runtime
server and raw `session.run` at batch 1/8/16, side by side in one run, then 4x overload.

    python bench/batching.py               # full run (~9 min on 2 cores) -> bench/results/batching.json
    python bench/batching.py --quick       # smoke run -> bench/results/batching-quick.json
    python bench/batching.py --table bench/results/batching.json   # README markdown table

Steps: build the tiny MLP and the ResNet-18-shaped CNN (the models of bench/serving.py); time raw
ORT at batch 1, 8 and 16 (CNN at intra_op_threads 1 and 2 at batch 8 first; the faster setting is
used everywhere after); then, one server at a time: the MLP at concurrency 32 driven by `wrk` (a C
client, so the server and not the client is measured; its CPU share is reported) against edgeinfer
with batching on, off, and the FastAPI peer; the CNN at concurrency 8 and 32 (bench/_load.py,
binary tensors) against edgeinfer on and off; open-loop arrivals at 4x the measured CNN capacity
for 20 s against edgeinfer with batching on, a bounded queue and a 1 s request deadline
(bench/_openloop.py), with the health endpoint probed every 50 ms and the server's RSS sampled,
then the same overload again (memory is flat when the second peaks no higher than the first);
last, the CNN server overhead paired on one core (see cnn_paired), which the CNN throughput
targets use: one after the other, raw and served runs on this VM differ by more than 5 % alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import serving as sv
from _proc import BENCH, Patience, Request, Server, run_load
from _report import add_output_args, run_and_write

DEADLINE_MS = 1000.0
OVERLOAD = 4.0
MLP_OFF = 'backend = "onnxruntime"\nmax_batch_size = 32\n\n[onnxruntime]\nintra_op_threads = 1\n'
MLP_ON = MLP_OFF + "\n[dynamic_batching]\nmax_queue_delay_us = 0\n"
# Batches of at most 8: on these CPUs a ResNet-18 batch of 16 runs fewer rows/s than one of 8
# (cache). No queue delay: a worker takes whatever is queued when it frees up, so at concurrency 8
# the clients settle into two groups, one collected while the other runs.
CNN_OFF = (
    'backend = "onnxruntime"\nmax_batch_size = 8\n\n[onnxruntime]\nintra_op_threads = {}\n'
    "\n[queue]\nmax_queue_size = 64\n"
)
CNN_ON = CNN_OFF + "\n[dynamic_batching]\nmax_queue_delay_us = 0\n"
PAIRED_ROUNDS = 4  # per concurrency
AA_ROUNDS = 2
log = sv.log


def raw_batches(onnx_path: Path, name: str, config_text: str, x: np.ndarray, feed: str,
                batches: tuple[int, ...], opts: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    """Raw `session.run` loops at each batch size with the server's session options."""
    import onnxruntime as ort

    from edgeinfer.config import ModelConfig
    from edgeinfer.runtime.onnx import session_options

    config = ModelConfig.from_dict(tomllib.loads(config_text), name)
    session = ort.InferenceSession(str(onnx_path), session_options(config.onnxruntime),
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    out = {}
    for b in batches:
        feeds = {feed: np.repeat(x, b, axis=0)}
        p = sv.quietly(lambda f=feeds: sv._run_loop(session, f, opts.duration, opts.warmup),
                       None, opts)  # fmt: skip
        p["batch"] = b
        p["rows_per_s"] = round(p["rps"] * b, 1)
        log(f"raw ORT {name} batch {b}: {p['rows_per_s']} rows/s, p50 {p['p50_ms']} ms per run, "
            f"CPU {p['cpu']:.0%}, other {p['other_cpu']:.0%}")  # fmt: skip
        out[str(b)] = p
    return out


def cnn_paired(onnx_path: Path, x: np.ndarray, req: Request, opts: argparse.Namespace,
               tmp: Path) -> dict[str, Any]:  # fmt: skip
    """Server overhead on the CNN, paired: the server (batching on, one intra-op thread) and a
    raw `session.run` loop at batch 8 share one core at the same time, the load client runs on
    the other. Each side's CPU time per row served is its cost; the kernel interleaves the two
    every few milliseconds, so the speed of this shared VM, which drifts by tens of percent
    between runs a few seconds apart, hits both alike (measured one after the other, the ratio
    swung more than the 5 % it is meant to resolve). The ratio is raw CPU per row over served CPU
    per row, a median over the rounds. Two raw loops paired the same way (A/A) show the noise."""
    import onnxruntime as ort

    from edgeinfer.config import ModelConfig
    from edgeinfer.hardware.sched import set_thread_nice
    from edgeinfer.runtime.onnx import session_options
    from edgeinfer.testing import models

    # Long windows: the server answers whole batches, so a window's CPU and rows disagree by up
    # to one batch at its ends; rounds are also pooled (total CPU over total rows).
    duration = 2 * opts.duration
    cores = sorted(os.sched_getaffinity(0))
    if shutil.which("taskset") is None or len(cores) < 2:
        return {"status": "needs taskset and 2 cores; skipped"}
    core, others = cores[-1], set(cores[:-1])
    text = CNN_ON.format(1)
    ort_opts = ModelConfig.from_dict(tomllib.loads(text), "resnet18").onnxruntime
    options = session_options(ort_opts)
    raws = [ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            for _ in range(2)]  # fmt: skip
    feeds = {"input": np.repeat(x, 8, axis=0)}
    repo = tmp / "repo_paired"
    models.publish(repo, "resnet18", onnx_path, text)
    server = sv.ours(repo, tmp)
    server.cmd = ["taskset", "-c", str(core), *server.cmd]
    server.name = "edgeinfer (batching on, 1 core)"

    def raw_loop(session: Any, out: dict[str, Any], key: str) -> None:
        os.sched_setaffinity(0, {core})  # this thread only; ORT runs on it (one thread)
        set_thread_nice(ort_opts.nice)  # the weight the server's inference thread runs at
        end = time.perf_counter() + opts.warmup
        while time.perf_counter() < end:
            session.run(None, feeds)
        runs, c0, t0 = 0, time.thread_time(), time.perf_counter()
        while time.perf_counter() - t0 < duration:
            session.run(None, feeds)
            runs += 1
        cpu, wall = time.thread_time() - c0, time.perf_counter() - t0
        out[key] = {"rows": runs * 8, "cpu_s": round(cpu, 4), "rows_per_s": round(runs * 8 / wall, 2),
                    "cpu_ms_per_row": round(cpu * 1e3 / (runs * 8), 3)}  # fmt: skip

    rounds: dict[str, list[dict[str, Any]]] = {"c8": [], "c32": [], "aa": []}
    plan = [8, 32] * PAIRED_ROUNDS + [0] * AA_ROUNDS
    mine = os.sched_getaffinity(0)
    try:
        server.start()
        server.wait_first_success([req])
        for c in plan:
            opts.patience.wait_quiet(server)
            out: dict[str, Any] = {}
            first = threading.Thread(target=raw_loop, args=(raws[0], out, "raw"))
            if c:
                os.sched_setaffinity(0, others)  # the load client, forked from here, inherits it
                first.start()
                try:
                    p = run_load(server, req, c, duration, opts.warmup, tmp)
                finally:
                    os.sched_setaffinity(0, mine)
                    first.join()
                rps = p["requests"] / p["duration_s"]
                cpu_s = p["server_cpu"] * p["duration_s"]
                served = {"rows": p["requests"], "cpu_s": round(cpu_s, 4), "rps": round(rps, 2),
                          "cpu_ms_per_row": round(cpu_s * 1e3 / p["requests"], 3),
                          "p50_ms": p["p50_ms"], "p99_ms": p["p99_ms"], "errors": p["errors"]}  # fmt: skip
                ratio = round(out["raw"]["cpu_ms_per_row"] / served["cpu_ms_per_row"], 4)
                rounds[f"c{c}"].append({"served": served, "raw": out["raw"], "ratio": ratio})
                log(f"paired c={c}: served {served['cpu_ms_per_row']} ms CPU per row "
                    f"({served['rps']} req/s), raw batch 8 {out['raw']['cpu_ms_per_row']} ms "
                    f"({out['raw']['rows_per_s']} rows/s): {ratio:.3f}")  # fmt: skip
            else:
                second = threading.Thread(target=raw_loop, args=(raws[1], out, "raw2"))
                first.start()
                second.start()
                first.join()
                second.join()
                ratio = round(out["raw"]["cpu_ms_per_row"] / out["raw2"]["cpu_ms_per_row"], 4)
                rounds["aa"].append({"raw": out["raw"], "raw2": out["raw2"], "ratio": ratio})
                log(f"paired A/A: raw {out['raw']['cpu_ms_per_row']} vs "
                    f"{out['raw2']['cpu_ms_per_row']} ms CPU per row: {ratio:.3f}")  # fmt: skip
    finally:
        server.stop()
    res: dict[str, Any] = {"status": "ok", "config": text, "core": core, "window_s": duration,
                           "rounds": rounds}  # fmt: skip
    for key, done in rounds.items():
        a, b = ("raw", "served") if key != "aa" else ("raw", "raw2")

        def per_row(side: str, done: list[dict[str, Any]] = done) -> float:
            return sum(d[side]["cpu_s"] for d in done) / sum(d[side]["rows"] for d in done)

        r = [d["ratio"] for d in done]
        res[f"{key}_ratio_pooled"] = round(per_row(a) / per_row(b), 4)
        res[f"{key}_ratio_range"] = [min(r), max(r)]
    return res


def cnn_request(x: np.ndarray, timeout_us: int = 0) -> Request:
    blob = x.tobytes()
    doc: dict[str, Any] = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                    "parameters": {"binary_data_size": len(blob)}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
    }  # fmt: skip
    if timeout_us:
        doc["parameters"] = {"timeout": timeout_us}
    head = json.dumps(doc).encode()
    return Request("resnet18", head + blob, {"Content-Type": "application/octet-stream",
                                             "Inference-Header-Content-Length": str(len(head))})  # fmt: skip


def start(server: Server, requests: dict[str, Request], expected: dict[str, np.ndarray],
          opts: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    opts.patience.wait_quiet(None)
    server.start()
    first = server.wait_first_success(list(requests.values()))
    sv.verify(server, requests, expected)
    log(f"{server.name}: serving after {max(first.values())} s")
    return {"rss_after_start_mb": server.rss_mb()["rss_mb"]}


def wrk_point(server: Server, req: Request, opts: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    def measure() -> dict[str, Any]:
        p = sv.run_wrk(server, req, opts, tmp)
        if p["status"] != "ok":
            raise RuntimeError(f"wrk: {p['status']}")
        return p

    p = sv.quietly(measure, server, opts)
    log(f"{server.name} mlp c=32 (wrk): {p['rps']} req/s, p50 {p['p50_ms']} ms, p99 "
        f"{p['p99_ms']} ms, non-2xx {p['non_2xx']}, wrk CPU {p['client_cpu']:.0%}, server CPU "
        f"{p['server_cpu']:.0%}, other {p['other_cpu']:.0%}")  # fmt: skip
    return p


def overload(server: Server, req: Request, capacity: float, opts: argparse.Namespace,
             tmp: Path) -> dict[str, Any]:  # fmt: skip
    """Open-loop arrivals at OVERLOAD x `capacity` req/s; RSS sampled every 0.5 s meanwhile."""
    body = tmp / "overload.body"
    body.write_bytes(req.body)
    rate = round(OVERLOAD * capacity, 1)
    cmd = [sys.executable, str(BENCH / "_openloop.py"), "--port", str(server.port),
           "--path", req.path, "--body", str(body), "--rate", str(rate),
           "--duration", str(opts.overload_s), "--deadline-ms", str(DEADLINE_MS)]  # fmt: skip
    for k, v in req.headers.items():
        cmd += ["--header", f"{k}: {v}"]
    opts.patience.wait_quiet(server)
    rss: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            rss.append(server.rss_mb()["rss_mb"])

    before = server.rss_mb()["rss_mb"]
    sampler = threading.Thread(target=sample, daemon=True)
    log(f"overload: {rate} req/s open loop for {opts.overload_s} s "
        f"({OVERLOAD:g}x the measured {capacity} req/s), deadline {DEADLINE_MS:g} ms")  # fmt: skip
    sampler.start()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=opts.overload_s + DEADLINE_MS / 1e3 + 120)  # fmt: skip
    finally:
        done.set()
        sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"open-loop client failed:\n{proc.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(proc.stdout)
    time.sleep(2.0)  # the queue has drained; let replies and GC settle
    after = server.rss_mb()["rss_mb"]
    # The median of the last quarter against the second (the first is the ramp-up to a full queue
    # and many open connections) moves with the bodies in flight at the time; a leak shows as what
    # a second overload adds (run() runs two).
    q = max(1, len(rss) // 4)
    second, last = statistics.median(rss[q : 2 * q] or rss), statistics.median(rss[-q:] or rss)
    out["rss_mb"] = {"before": before, "second_quarter": second, "last_quarter": last,
                     "max_during": max(rss, default=before), "after": after,
                     "growth": round((last - second) / second, 4), "samples": rss}  # fmt: skip
    log(f"overload: status {out['status']}, accepted p99 {out['accepted_p99_ms']} ms (max "
        f"{out['accepted_max_ms']}), {out['accepted_after_deadline']} late, "
        f"{out['silent_timeouts']} silent timeouts, health max {out['health_max_ms']} ms, "
        f"RSS {before} -> {after} MB, client CPU {out['client_cpu']:.0%}")  # fmt: skip
    return out


def run(opts: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from edgeinfer.testing import models

    res: dict[str, Any] = {
        "benchmark": "batching", "mode": "quick" if opts.quick else "full",
        "machine": sv.machine_info(),
        "settings": {"duration_s": opts.duration, "warmup_s": opts.warmup,
                     "overload_s": opts.overload_s, "overload_factor": OVERLOAD,
                     "deadline_ms": DEADLINE_MS, "noisy_other_cpu": sv.NOISY},
        "clients": {"mlp": "wrk -t1 -c32, KServe v2 JSON [1,16] -> [1,4]",
                    "resnet18": "bench/_load.py closed loop, binary tensors [1,3,224,224]",
                    "overload": "bench/_openloop.py, fixed-rate arrivals, keep-alive pool"},
    }  # fmt: skip
    log("building models")
    onnx = {"mlp": models.mlp(tmp / "build" / "mlp.onnx"),
            "resnet18": models.resnet18_like(tmp / "build" / "resnet18.onnx")}  # fmt: skip
    rng = np.random.default_rng(0)
    x = {"mlp": rng.standard_normal((1, 16)).astype(np.float32),
         "resnet18": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}  # fmt: skip
    requests = sv.make_requests(x["mlp"], x["resnet18"])

    log("raw ORT session.run loops")
    probe = {t: raw_batches(onnx["resnet18"], "resnet18", CNN_OFF.format(t), x["resnet18"],
                            "input", (8,), opts)["8"] for t in (1, 2)}  # fmt: skip
    threads = max(probe, key=lambda t: probe[t]["rows_per_s"])
    log(f"ResNet-18 keeps intra_op_threads = {threads}")
    raw = {
        "mlp": raw_batches(onnx["mlp"], "mlp", MLP_OFF, x["mlp"], "x", (1, 8, 16), opts),
        "resnet18": {"8": probe[threads], **raw_batches(
            onnx["resnet18"], "resnet18", CNN_OFF.format(threads), x["resnet18"], "input",
            (1, 16), opts)},
    }  # fmt: skip
    res["raw_ort"] = raw
    res["cnn_threads"] = {"probe_rows_per_s": {t: p["rows_per_s"] for t, p in probe.items()},
                          "chosen": threads}  # fmt: skip
    expected = {
        "mlp": _reference(onnx["mlp"], {"x": x["mlp"]}),
        "resnet18": _reference(onnx["resnet18"], {"input": x["resnet18"]}),
    }
    res["configs"] = {"mlp_on": MLP_ON, "mlp_off": MLP_OFF,
                      "resnet18_on": CNN_ON.format(threads), "resnet18_off": CNN_OFF.format(threads)}  # fmt: skip

    sides: dict[str, dict[str, Any]] = {}
    for side, mlp_cfg, cnn_cfg in (("on", MLP_ON, CNN_ON), ("off", MLP_OFF, CNN_OFF)):
        repo = tmp / f"repo_{side}"
        models.publish(repo, "mlp", onnx["mlp"], mlp_cfg)
        models.publish(repo, "resnet18", onnx["resnet18"], cnn_cfg.format(threads))
        server = sv.ours(repo, tmp)
        server.name = f"edgeinfer (batching {side})"
        try:
            out = start(server, requests, expected, opts)
            out["mlp_c32_wrk"] = wrk_point(server, requests["mlp"], opts, tmp)
            for c in (8, 32):
                out[f"resnet18_c{c}"] = sv.load_point(server, requests["resnet18"], c, opts, tmp)
            if side == "on":
                capacity = out["resnet18_c32"]["rps"]
                req = cnn_request(x["resnet18"], int(DEADLINE_MS * 1e3))
                out["overload"] = overload(server, req, capacity, opts, tmp)
                # The same overload again: the first sets the allocator's high-water mark (full
                # queue, many connections); memory that is flat adds nothing the second time.
                again = overload(server, req, capacity, opts, tmp)
                first_peak = out["overload"]["rss_mb"]["max_during"]
                out["overload"]["rss_mb"]["second_overload"] = {
                    **again["rss_mb"], "status": again["status"],
                    "accepted_after_deadline": again["accepted_after_deadline"],
                    "peak_growth": round((again["rss_mb"]["max_during"] - first_peak) / first_peak, 4),
                }  # fmt: skip
            out.update(server.rss_mb())
        finally:
            server.stop()
        sides[side] = out
    res["edgeinfer_on"], res["edgeinfer_off"] = sides["on"], sides["off"]
    res["cnn_paired"] = cnn_paired(onnx["resnet18"], x["resnet18"], requests["resnet18"], opts, tmp)

    repo = tmp / "repo_off"
    peer = sv.peer(repo, tmp)
    try:
        res["fastapi"] = start(peer, requests, expected, opts)
        res["fastapi"]["mlp_c32_wrk"] = wrk_point(peer, requests["mlp"], opts, tmp)
    finally:
        peer.stop()
    res["targets"] = targets(res)
    return res


def _reference(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feeds)[0])


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    on, off, fa = res["edgeinfer_on"], res["edgeinfer_off"], res["fastapi"]
    raw8 = res["raw_ort"]["resnet18"]["8"]["rows_per_s"]
    ov = on["overload"]
    rss = ov["rss_mb"]
    rows: list[tuple[str, float | None, str, bool]] = []

    def add(name: str, value: float | None, limit: str, met: bool) -> None:
        rows.append((name, value, limit, met))

    v = _ratio(on["mlp_c32_wrk"]["rps"], fa["mlp_c32_wrk"]["rps"])
    add("MLP c=32 (wrk): batching on vs FastAPI", v, ">= 2x", v is not None and v >= 2)
    v = _ratio(on["mlp_c32_wrk"]["rps"], off["mlp_c32_wrk"]["rps"])
    add("MLP c=32 (wrk): batching on vs off", v, ">= 3x", v is not None and v >= 3)
    paired = res.get("cnn_paired", {})
    for c in (8, 32):
        p = on[f"resnet18_c{c}"]
        if paired.get("status") == "ok":  # one core each, at the same time (see cnn_paired)
            v = round(paired[f"c{c}_ratio_pooled"], 3)
            name = f"CNN c={c}: batching on vs raw ORT batch 8, paired on one core each"
        else:
            v, name = _ratio(p["rps"], raw8), f"CNN c={c}: batching on vs raw ORT batch 8"
        add(name, v, ">= 0.95", v is not None and v >= 0.95)
        v = _ratio(p["p99_ms"], p["p50_ms"])
        add(f"CNN c={c}: p99 / p50", v, "<= 2", v is not None and v <= 2)
    add("overload: health max (ms)", ov["health_max_ms"], "< 50",
        ov["health_max_ms"] is not None and ov["health_max_ms"] < 50 and not ov["health_failed"])  # fmt: skip
    add("overload: accepted replies after their deadline", ov["accepted_after_deadline"], "0",
        ov["accepted_after_deadline"] == 0 and ov["accepted"] > 0)  # fmt: skip
    unexplained = (
        ov["silent_timeouts"]
        + ov["connection_errors"]
        + sum(n for s, n in ov["status"].items() if s not in ("200", "429", "504"))
    )
    add("overload: requests neither served nor refused with 429/504", unexplained, "0",
        unexplained == 0 and ov["status"].get("429", 0) > 0)  # fmt: skip
    # Flat: a second identical overload peaks where the first did. Single samples swing by ~30 MB
    # with the batch buffers in flight at that instant; a leak raises the peak every time.
    second = rss.get("second_overload")
    grew = second["peak_growth"] if second else rss["growth"]
    add("overload: peak RSS of a second overload vs the first", grew, "<= 0.02", grew <= 0.02)
    return [{"target": t, "value": v, "limit": lim, "met": bool(m)} for t, v, lim, m in rows]


def table(res: dict[str, Any]) -> str:
    on, off, fa, raw = res["edgeinfer_on"], res["edgeinfer_off"], res["fastapi"], res["raw_ort"]

    def wrk(side: dict[str, Any]) -> str:
        p = side["mlp_c32_wrk"]
        return (f"{p['rps']:,.0f} req/s, p50/p99 {p['p50_ms']:.2f}/{p['p99_ms']:.2f} ms, "
                f"wrk CPU {p['client_cpu']:.0%}, server CPU {p['server_cpu']:.0%}")  # fmt: skip

    def cnn(p: dict[str, Any]) -> str:
        return f"{p['rps']:,.1f} req/s, p50/p99 {p['p50_ms']:.0f}/{p['p99_ms']:.0f} ms"

    raw_m, raw_c = raw["mlp"], raw["resnet18"]
    lines = [
        "| Case | edgeinfer, batching on | edgeinfer, batching off | Baseline |",
        "|---|---|---|---|",
        f"| MLP, c=32 (wrk) | {wrk(on)} | {wrk(off)} | FastAPI + ORT: {wrk(fa)} |",
        f"| ResNet-18, c=8 | {cnn(on['resnet18_c8'])} | {cnn(off['resnet18_c8'])} | raw ORT "
        f"batch 8: {raw_c['8']['rows_per_s']:,.1f} rows/s |",
        f"| ResNet-18, c=32 | {cnn(on['resnet18_c32'])} | {cnn(off['resnet18_c32'])} | raw ORT "
        f"batch 16: {raw_c['16']['rows_per_s']:,.1f} rows/s |",
        f"| raw ORT rows/s at batch 1 / 8 / 16 | MLP {raw_m['1']['rows_per_s']:,.0f} / "
        f"{raw_m['8']['rows_per_s']:,.0f} / {raw_m['16']['rows_per_s']:,.0f} | ResNet-18 "
        f"{raw_c['1']['rows_per_s']:,.1f} / {raw_c['8']['rows_per_s']:,.1f} / "
        f"{raw_c['16']['rows_per_s']:,.1f} | |",
    ]  # fmt: skip
    paired = res.get("cnn_paired", {})
    if paired.get("status") == "ok":
        lines += [
            "",
            "ResNet-18 paired (server and raw ORT batch 8 on one core each, at the same time, "
            f"CPU per row, raw over served, pooled over the rounds): {paired['c8_ratio_pooled']:.3f} at "
            f"c=8 (range {paired['c8_ratio_range'][0]:.3f}-{paired['c8_ratio_range'][1]:.3f}), "
            f"{paired['c32_ratio_pooled']:.3f} at c=32 (range "
            f"{paired['c32_ratio_range'][0]:.3f}-{paired['c32_ratio_range'][1]:.3f}); two raw "
            f"loops paired the same way (A/A): {paired['aa_ratio_pooled']:.3f} (range "
            f"{paired['aa_ratio_range'][0]:.3f}-{paired['aa_ratio_range'][1]:.3f}).",
        ]  # fmt: skip
    ov = on["overload"]
    lines += [
        "",
        f"Overload ({ov['rate_target']} req/s open loop = {OVERLOAD:g}x capacity, "
        f"{res['settings']['overload_s']:g} s, deadline {ov['deadline_ms']:g} ms): replies "
        f"{ov['status']}, accepted p50/p99/max {ov['accepted_p50_ms']}/{ov['accepted_p99_ms']}/"
        f"{ov['accepted_max_ms']} ms, {ov['accepted_after_deadline']} late, "
        f"{ov['silent_timeouts']} silent timeouts; health p99/max {ov['health_p99_ms']}/"
        f"{ov['health_max_ms']} ms over {ov['health_probes']} probes; RSS "
        f"{ov['rss_mb']['before']} MB before, {ov['rss_mb']['second_quarter']} → "
        f"{ov['rss_mb']['last_quarter']} MB from its second to its last quarter (max "
        f"{ov['rss_mb']['max_during']}, the requests in flight), {ov['rss_mb']['after']} MB after"
        + (f"; a second identical overload peaked at "
           f"{ov['rss_mb']['second_overload']['max_during']} MB."
           if "second_overload" in ov["rss_mb"] else "."),
        "",
    ]  # fmt: skip
    met = sum(t["met"] for t in res["targets"])
    lines.append(f"Targets met: {met}/{len(res['targets'])} — " + "; ".join(
        f"{'✓' if t['met'] else '✗'} {t['target']} ({t['value']}, {t['limit']})"
        for t in res["targets"]
    ))  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description="edgeinfer dynamic batching benchmark",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    p.add_argument("--quick", action="store_true", help="3 s per point, 8 s overload")
    p.add_argument("--duration", type=float, help="seconds per load point (default 10, quick 3)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per point (default 2, quick 1)")
    p.add_argument("--overload-s", type=float, help="overload seconds (default 20, quick 8)")
    add_output_args(p, "batching")
    opts = p.parse_args()
    opts.duration = opts.duration or (3.0 if opts.quick else 10.0)
    opts.warmup = opts.warmup if opts.warmup is not None else (1.0 if opts.quick else 2.0)
    opts.overload_s = opts.overload_s or (8.0 if opts.quick else 20.0)
    opts.quiet_wait = 5.0 if opts.quick else 10.0
    opts.patience = Patience(30.0 if opts.quick else 90.0, opts.quiet_wait)
    return run_and_write("batching", opts, run, table)


if __name__ == "__main__":
    sys.exit(main())

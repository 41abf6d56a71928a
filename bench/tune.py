"""Tuning benchmark: `edgeinfer tune` on the ResNet-18-shaped CNN, then the naive, the default
and the tuned configuration served over HTTP, each measured in its own server in the same run.

    python bench/tune.py             # full run (~12 min on 2 cores) -> bench/results/tune.json
    python bench/tune.py --quick     # smoke run -> bench/results/tune-quick.json
    python bench/tune.py --table bench/results/tune.json

Targets (issue: tune): tuned >= 1.5x the naive configuration (one intra-op thread, one instance,
no dynamic batching, written out explicitly) at concurrency 8 with outputs unchanged; the new
defaults (no settings beyond max_batch_size) >= 0.8x tuned; the served figure within 15 % of what
tune predicted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
from _proc import Patience, Request, Server, free_port, run_load
from _report import add_output_args, run_and_write

CONCURRENCY = 8
NAIVE = "max_batch_size = 16\ninstance_count = 1\n\n[onnxruntime]\nintra_op_threads = 1\n"
DEFAULTS = "max_batch_size = 16\n"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def publish(repo: Path, onnx: Path, config: str) -> None:
    from edgeinfer.testing import models

    models.publish(repo, "cnn", onnx, config)


def request(image: int) -> Request:
    """One image in Triton's binary tensor extension, as tritonclient sends it (a 224x224x3
    FP32 tensor as JSON numbers would be over --max-json-bytes)."""
    x = np.random.default_rng(0).standard_normal((1, 3, image, image)).astype(np.float32)
    tensor = {
        "name": "input",
        "shape": list(x.shape),
        "datatype": "FP32",
        "parameters": {"binary_data_size": x.nbytes},
    }
    header = json.dumps({"inputs": [tensor]}).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return Request("cnn", header + x.tobytes(), headers)


def serve(repo: Path, tmp: Path, req: Request, opts: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "edgeinfer.cli",
        "serve",
        "--repository",
        str(repo),
        "--host",
        "127.0.0.1",
        "--http-port",
        str(port),
        "--grpc-port",
        "0",
        "--log-level",
        "warning",
    ]
    server = Server("edgeinfer", cmd, port, tmp / f"serve-{repo.name}.log")
    server.start()
    try:
        server.wait_first_success([req], timeout=120)
        rounds = [
            run_load(server, req, CONCURRENCY, opts.duration, opts.warmup, tmp)
            for _ in range(opts.rounds)
        ]
        rps = sorted(float(r["rps"]) for r in rounds)
        return {
            "rps": rps[len(rps) // 2],
            "rounds": rps,
            "p99_ms": sorted(float(r["p99_ms"]) for r in rounds)[len(rps) // 2],
        }
    finally:
        server.stop()


def run(opts: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from edgeinfer.testing import models

    onnx = models.resnet18_like(tmp / "cnn.onnx", image=opts.image)
    req = request(opts.image)
    repos = {name: tmp / name for name in ("naive", "defaults", "tuned")}
    publish(repos["naive"], onnx, NAIVE)
    publish(repos["defaults"], onnx, DEFAULTS)
    publish(repos["tuned"], onnx, NAIVE)  # tune starts from the naive configuration
    log("tuning (the naive configuration is tune's default trial)")
    started = time.perf_counter()
    cmd = [
        sys.executable,
        "-m",
        "edgeinfer.cli",
        "tune",
        str(repos["tuned"]),
        "cnn",
        "--concurrency",
        f"1,{CONCURRENCY}",
        "--precision",
        "fp32",
        "--seconds",
        str(opts.tune_seconds),
        "--budget-minutes",
        str(opts.budget_minutes),
        "--apply",
        "--json",
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=opts.budget_minutes * 60 + 600
    )
    if done.returncode != 0:
        raise RuntimeError(f"tune failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout)
    tune_s = time.perf_counter() - started
    report = json.loads((repos["tuned"] / "cnn" / "tune" / "report.json").read_text())
    winner = result["decision"].get("winner", "default")
    predicted = next(
        lv["throughput"]
        for t in report["trials"]
        if t["key"] == winner
        for lv in t["levels"]
        if lv["concurrency"] == CONCURRENCY
    )
    served = {}
    for name, repo in repos.items():
        log(f"serving the {name} configuration at concurrency {CONCURRENCY}")
        served[name] = serve(repo, tmp, req, opts)
    tuned_config = tomllib.loads((repos["tuned"] / "cnn" / "config.toml").read_text())
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "model": f"resnet18-like {opts.image}x{opts.image}",
        "tune": {
            "seconds": round(tune_s, 1),
            "trials": len(report["trials"]),
            "pruned": len(report["pruned"]),
            "summary": report["summary"],
            "winner": winner,
            "config": tuned_config,
            "predicted_rps": round(predicted, 1),
        },
        "served": served,
        "ratios": {
            "tuned_over_naive": round(served["tuned"]["rps"] / served["naive"]["rps"], 3),
            "defaults_over_tuned": round(served["defaults"]["rps"] / served["tuned"]["rps"], 3),
            "served_over_predicted": round(served["tuned"]["rps"] / predicted, 3),
        },
    }


def table(res: dict[str, Any]) -> str:
    s, r = res["served"], res["ratios"]
    rows = [
        f"| configuration ({res['model']}, c={CONCURRENCY}) | req/s | p99 ms |",
        "|---|---|---|",
        *(f"| {k} | {v['rps']:.1f} | {v['p99_ms']:.1f} |" for k, v in s.items()),
        "",
        f"tuned / naive **{r['tuned_over_naive']:.2f}x** (target >= 1.5), defaults / tuned "
        f"**{r['defaults_over_tuned']:.2f}** (target >= 0.8), served / predicted "
        f"**{r['served_over_predicted']:.2f}** (target 0.85-1.15); winner: {res['tune']['winner']} "
        f"after {res['tune']['trials']} trials in {res['tune']['seconds']:.0f} s",
    ]
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true")
    add_output_args(p, "tune")
    opts = p.parse_args()
    quick = opts.quick
    opts.image = 64 if quick else 224
    opts.budget_minutes = 2 if quick else 8
    opts.tune_seconds = 0.5 if quick else 2.0
    opts.duration, opts.warmup, opts.rounds = (3.0, 1.0, 1) if quick else (15.0, 3.0, 3)
    opts.patience = Patience(0, 0)
    return run_and_write("tune", opts, run, table)


if __name__ == "__main__":
    raise SystemExit(main())

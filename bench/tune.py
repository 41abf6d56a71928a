"""Tuning benchmark: `edgeinfer tune` on the ResNet-18-shaped CNN, the demo MiniLM and the bench
Llama (GGUF), then the naive, the default and the tuned configuration of each served over HTTP,
each in its own server in the same run. What tune predicted is the winner's figure in its report:
served over HTTP by tune's confirmation for the tensor models (the in-process one is recorded
beside it), in-process through the generation loop for the LLM.

    python bench/tune.py                  # full run (~40 min on 2 cores) -> bench/results/tune.json
    python bench/tune.py --quick          # smoke run -> bench/results/tune-quick.json
    python bench/tune.py --models cnn     # some of cnn, minilm, llm
    python bench/tune.py --table bench/results/tune.json

Targets (issue: tune): tuned >= 1.5x the naive configuration (one intra-op thread, one instance,
no dynamic batching, written out explicitly; for the LLM one thread and one slot) at concurrency
8 for the CNN with outputs unchanged; the new defaults (no settings beyond the tuned backend and
the batch size) >= 0.8x tuned; the served figure within 15 % of what tune predicted.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _proc import Patience, Request, Server, free_port, run_load
from _report import add_output_args, run_and_write

CNN_NAIVE = "max_batch_size = 16\ninstance_count = 1\n\n[onnxruntime]\nintra_op_threads = 1\n"
CNN_DEFAULTS = "max_batch_size = 16\n"
LLM_NAIVE = 'backend = "llama.cpp"\n[llm]\ncontext_length = 512\nn_threads = 1\nslots = 1\n'
LLM_DEFAULTS = 'backend = "llama.cpp"\n[llm]\ncontext_length = 512\n'
LLM_PROMPT, LLM_NEW = 128, 32  # the shape of tune's LLM trials (edgeinfer.tune.llm)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Completion(Request):
    """An OpenAI completion request (the load generator posts it like an infer request)."""

    @property
    def path(self) -> str:
        return "/v1/completions"


@dataclass(frozen=True)
class Case:
    """One model to tune: how to publish it with a config, the request the server gets, the
    concurrency the targets use and what one request is worth (1 reply, or LLM_NEW tokens)."""

    name: str
    label: str
    files: dict[str, Path]
    naive: str
    defaults: str
    request: Request
    concurrency: int
    tune_args: tuple[str, ...]
    budget_minutes: float
    unit: str = "req/s"
    per_request: int = 1

    def publish(self, repo: Path, config: str) -> None:
        from edgeinfer.repository import add_version

        model = repo / self.name
        model.mkdir(parents=True, exist_ok=True)
        add_version(model, self.files)
        (model / "config.toml").write_text(config)


def cnn_case(tmp: Path, opts: argparse.Namespace) -> Case:
    from edgeinfer.testing import models

    onnx = models.resnet18_like(tmp / "cnn.onnx", image=opts.image)
    return Case("cnn", f"resnet18-like {opts.image}x{opts.image}", {"model.onnx": onnx},
                CNN_NAIVE, CNN_DEFAULTS, image_request(opts.image), 8,
                ("--concurrency", "1,8", "--precision", "fp32"), opts.budget_minutes)  # fmt: skip


def minilm_case(tmp: Path, opts: argparse.Namespace) -> Case:
    from _backend_models import SENTENCE, TEXT_CONFIG, text_request

    from edgeinfer.demo import ensure_demo_repository

    version = ensure_demo_repository() / "minilm" / "1"
    files = {"model.onnx": version / "model.onnx", "tokenizer.json": version / "tokenizer.json"}
    # tune's requests are the served one (its own sample sentences are shorter)
    sentences = tmp / "sentences.txt"
    sentences.write_text((SENTENCE + "\n") * 32)
    return Case("minilm", "MiniLM-L6 (demo, one sentence)", files, CNN_NAIVE + TEXT_CONFIG,
                CNN_DEFAULTS + TEXT_CONFIG, text_request("minilm"), 8,
                ("--concurrency", "1,8", "--precision", "fp32", "--eval", str(sentences)),
                opts.budget_minutes * 0.75)  # fmt: skip


def llm_case(tmp: Path, opts: argparse.Namespace) -> Case:
    from llm import bench_model

    path, _ = bench_model()
    prompt = np.random.default_rng(0).integers(3, 1000, LLM_PROMPT).tolist()
    body = {"model": "llm", "prompt": prompt, "max_tokens": LLM_NEW, "temperature": 0,
            "ignore_eos": True, "cache_prompt": False}  # fmt: skip
    req = Completion("llm", json.dumps(body).encode(), {"Content-Type": "application/json"})
    return Case("llm", "bench Llama 336M Q4_0 (random weights)", {"model.gguf": path},
                LLM_NAIVE, LLM_DEFAULTS, req, 4, ("--concurrency", "1,4"),
                opts.budget_minutes * 0.75, "tok/s", LLM_NEW)  # fmt: skip


CASES: dict[str, Callable[[Path, argparse.Namespace], Case]] = {
    "cnn": cnn_case,
    "minilm": minilm_case,
    "llm": llm_case,
}


def image_request(image: int) -> Request:
    """One image in Triton's binary tensor extension, as tritonclient sends it (a 224x224x3
    FP32 tensor as JSON numbers would be over --max-json-bytes)."""
    x = np.random.default_rng(0).standard_normal((1, 3, image, image)).astype(np.float32)
    tensor = {
        "name": "input",
        "shape": list(x.shape),
        "datatype": "FP32",
        "parameters": {"binary_data_size": x.nbytes},
    }
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return Request("cnn", header + x.tobytes(), headers)


def serve(repo: Path, case: Case, tmp: Path, opts: argparse.Namespace) -> dict[str, Any]:
    """The configuration in `repo` served over HTTP at the case's concurrency, `opts.rounds`
    rounds: the median rate in the case's unit and p99 request latency."""
    port = free_port()
    cmd = [sys.executable, "-m", "edgeinfer.cli", "serve", "--repository", str(repo),
           "--host", "127.0.0.1", "--http-port", str(port), "--grpc-port", "0",
           "--log-level", "warning"]  # fmt: skip
    server = Server("edgeinfer", cmd, port, tmp / f"serve-{case.name}-{repo.name}.log")
    server.start()
    try:
        server.wait_first_success([case.request], timeout=180)
        rounds = [
            run_load(server, case.request, case.concurrency, opts.duration, opts.warmup, tmp)
            for _ in range(opts.rounds)
        ]
    finally:
        server.stop()
    rates = sorted(float(r["rps"]) * case.per_request for r in rounds)  # type: ignore[arg-type]
    p99 = sorted(float(r["p99_ms"]) for r in rounds)  # type: ignore[arg-type]
    client = sorted(float(r.get("client_cpu", 0.0)) for r in rounds)  # type: ignore[arg-type]
    return {"rate": rates[len(rates) // 2], "rounds": rates, "p99_ms": p99[len(p99) // 2],
            "client_cpu": client[len(client) // 2]}  # fmt: skip


def tune(case: Case, repo: Path, opts: argparse.Namespace) -> dict[str, Any]:
    """`edgeinfer tune --apply` on the case's model in `repo` (published with the naive config,
    tune's default trial): its report, winner and what it predicted at the case's concurrency."""
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "edgeinfer.cli", "tune", str(repo), case.name, *case.tune_args,
           "--seconds", str(opts.tune_seconds), "--budget-minutes", str(case.budget_minutes),
           "--apply", "--json"]  # fmt: skip
    timeout = case.budget_minutes * 60 + 600
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"tune {case.name} failed:\n{done.stderr[-3000:]}")
    decision = json.loads(done.stdout)["decision"]
    report = json.loads((repo / case.name / "tune" / "report.json").read_text())
    winner = decision.get("winner", "default")
    trial = next(t for t in report["trials"] if t["key"] == winner)

    def at(levels: list[dict[str, Any]]) -> float | None:
        return next((lv["throughput"] for lv in levels if lv["concurrency"] == case.concurrency),
                    None)  # fmt: skip

    # What tune reports: served over HTTP for tensor models (the in-process figure beside it).
    predicted = at(trial["levels"])
    in_process = at(trial.get("in_process") or [])
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "trials": len(report["trials"]),
        "pruned": len(report["pruned"]),
        "summary": report["summary"],
        "winner": winner,
        "config": tomllib.loads((repo / case.name / "config.toml").read_text()),
        "predicted": round(predicted or 0.0, 2),
        "predicted_served": bool(trial.get("served")),
        "in_process": None if in_process is None else round(in_process, 2),
    }


def run_case(case: Case, tmp: Path, opts: argparse.Namespace) -> dict[str, Any]:
    repos = {name: tmp / case.name / name for name in ("naive", "defaults", "tuned")}
    case.publish(repos["naive"], case.naive)
    case.publish(repos["tuned"], case.naive)  # tune starts from the naive configuration
    log(f"{case.name}: tuning (the naive configuration is tune's default trial)")
    tuned = tune(case, repos["tuned"], opts)
    # The defaults: no settings beyond the backend, which is the tuned one's (the target asks
    # how close the device-derived thread, instance and batching defaults come on it).
    backend = tuned["config"].get("backend")
    defaults = case.defaults
    if backend and "backend =" not in defaults:
        defaults = f'backend = "{backend}"\n{defaults}'
    case.publish(repos["defaults"], defaults)
    tuned["defaults_config"] = defaults
    served = {}
    for name, repo in repos.items():
        log(f"{case.name}: serving the {name} configuration at concurrency {case.concurrency}")
        served[name] = serve(repo, case, tmp, opts)
    rate = {k: v["rate"] for k, v in served.items()}
    return {
        "model": case.label,
        "unit": case.unit,
        "concurrency": case.concurrency,
        "tune": tuned,
        "served": served,
        "ratios": {
            "tuned_over_naive": round(rate["tuned"] / rate["naive"], 3),
            "defaults_over_tuned": round(rate["defaults"] / rate["tuned"], 3),
            "served_over_predicted": round(rate["tuned"] / tuned["predicted"], 3),
        },
    }


def run(opts: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    cases = {}
    for name in opts.models:
        cases[name] = run_case(CASES[name](tmp, opts), tmp, opts)
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_after": os.getloadavg(),
        "cases": cases,
    }


def table(res: dict[str, Any]) -> str:
    rows = [
        "| model | concurrency | naive | defaults | tuned | tuned / naive | defaults / tuned "
        "| served / predicted |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for name, c in res["cases"].items():
        s, r = c["served"], c["ratios"]
        rows.append(
            f"| {c['model']} | {c['concurrency']} | {s['naive']['rate']:.1f} {c['unit']} "
            f"| {s['defaults']['rate']:.1f} | {s['tuned']['rate']:.1f} "
            f"| **{r['tuned_over_naive']:.2f}x** | {r['defaults_over_tuned']:.2f} "
            f"| {r['served_over_predicted']:.2f} |"
        )
        t = c["tune"]
        how = (f"served over HTTP by tune (in-process it measured {t['in_process']:.1f})"
               if t.get("predicted_served") and t.get("in_process") else "in-process")  # fmt: skip
        notes.append(f"- {name}: winner `{t['winner']}` after {t['trials']} trials in "
                     f"{t['seconds']:.0f} s, predicted {t['predicted']:.1f} {c['unit']} {how}; "
                     f"{t['summary']}")  # fmt: skip
    targets = ("Targets: tuned / naive >= 1.5 (CNN), defaults / tuned >= 0.8, "
               "served / predicted 0.85-1.15.")  # fmt: skip
    return "\n".join([*rows, "", targets, *notes])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--models", default="cnn,minilm,llm", help="comma-separated: cnn,minilm,llm")
    add_output_args(p, "tune")
    opts = p.parse_args()
    opts.models = [m for m in opts.models.split(",") if m]
    if unknown := set(opts.models) - set(CASES):
        p.error(f"unknown model(s): {', '.join(sorted(unknown))}")
    quick = opts.quick
    opts.image = 64 if quick else 224
    opts.budget_minutes = 2 if quick else 8
    opts.tune_seconds = 0.5 if quick else 2.0
    opts.duration, opts.warmup, opts.rounds = (3.0, 1.0, 1) if quick else (15.0, 3.0, 3)
    opts.patience = Patience(0, 0)
    return run_and_write("tune", opts, run, table)


if __name__ == "__main__":
    raise SystemExit(main())

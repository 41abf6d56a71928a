"""Backend benchmark: each tensor backend (ONNX Runtime, OpenVINO, LiteRT) served by edgeinfer
against the same backend run in-process, all in one run on the same models and thread settings.

    python bench/backends.py              # full run -> bench/results/backends.json
    python bench/backends.py --quick      # smoke run -> bench/results/backends-quick.json
    python bench/backends.py --table bench/results/backends.json   # README markdown table

Models: a tiny MLP, ResNet-18- and MobileNetV2-shaped CNNs (random weights, 224x224; INT8 is
static QDQ) and the demo's MiniLM (INT8 dynamic; served with text tokenized in the server,
in-process on the token ids of the same sentence). LiteRT runs the MLP and the ResNet only.

Per (model, precision, backend): the in-process floor (the backend class the server runs, its
`run()` in a loop at batch 1 and batch 8, one thread, after timing its load: OpenVINO's twice,
compiling and then from its cache); then a server with only that model (one
instance, one thread, dynamic batching up to 8): cold start to the first reply, RSS, and a
closed-loop load at concurrency 1 and 8 (KServe binary tensors). OpenVINO starts twice: with an
empty compiled-model cache, then from it. Ratios: served over the same backend's in-process
rate (c=1 over batch 1, c=8 over batch 8), and each in-process rate over ONNX Runtime FP32.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import _backend_models
import numpy as np
from _load import machine_busy_s, self_cpu_s
from _proc import Patience, Request
from _report import add_output_args, run_and_write
from serving import cold_start, load_point, log, machine_info, ours, quietly

CASES = (  # (model, precision, backend)
    ("mlp", "fp32", "onnxruntime"), ("mlp", "fp32", "openvino"), ("mlp", "fp32", "litert"),
    ("resnet18", "fp32", "onnxruntime"), ("resnet18", "fp32", "openvino"),
    ("resnet18", "fp32", "litert"),
    ("resnet18", "int8", "onnxruntime"), ("resnet18", "int8", "openvino"),
    ("mobilenetv2", "fp32", "onnxruntime"), ("mobilenetv2", "fp32", "openvino"),
    ("mobilenetv2", "int8", "onnxruntime"), ("mobilenetv2", "int8", "openvino"),
    ("minilm", "fp32", "onnxruntime"), ("minilm", "fp32", "openvino"),
    ("minilm", "int8", "onnxruntime"),
)  # fmt: skip
CONFIG = """backend = "{backend}"
max_batch_size = 8
[dynamic_batching]
max_queue_delay_us = 2000
[onnxruntime]
intra_op_threads = 1
nice = 0
[openvino]
intra_op_threads = 1
[litert]
intra_op_threads = 1
"""
SHAPES = {  # model -> backend layout -> (input name, shape of one row)
    "mlp": {"onnx": ("x", (16,)), "tflite": ("x", (16,))},
    "resnet18": {"onnx": ("input", (3, 224, 224)), "tflite": ("input", (224, 224, 3))},
    "mobilenetv2": {"onnx": ("input", (3, 224, 224))},
}


def build(tmp: Path) -> dict[tuple[str, str, str], dict[str, Path]]:
    """The model files of every case."""
    from edgeinfer.testing import models, tflite

    b = tmp / "build"
    onnx = {"mlp": models.mlp(b / "mlp.onnx"), "resnet18": models.resnet18_like(b / "r18.onnx")}
    rng = np.random.default_rng(1)
    calib = [{"input": rng.random((1, 3, 224, 224), dtype=np.float32)} for _ in range(8)]
    int8 = {"resnet18": models.qdq_int8(onnx["resnet18"], b / "r18_int8.onnx", calib)}
    onnx["mobilenetv2"], int8["mobilenetv2"] = _backend_models.mobilenetv2(b, calib)
    onnx["minilm"], int8["minilm"], tokenizer = _backend_models.minilm(b)
    lite = {"mlp": tflite.mlp(b / "mlp.tflite"), "resnet18": tflite.resnet18_like(b / "r18.tflite")}
    files: dict[tuple[str, str, str], dict[str, Path]] = {}
    for model, precision, backend in CASES:
        src = int8[model] if precision == "int8" else onnx[model]
        if backend == "litert":
            files[model, precision, backend] = {"model.tflite": lite[model]}
        elif backend == "openvino":
            xml = b / f"{model}_{precision}.xml"
            files[model, precision, backend] = models.openvino_ir(src, xml)
        else:
            files[model, precision, backend] = {"model.onnx": src}
        if model == "minilm":
            files[model, precision, backend]["tokenizer.json"] = tokenizer
    return files


def feeds(model: str, backend: str, rows: int) -> dict[str, np.ndarray]:
    name, shape = SHAPES[model]["tflite" if backend == "litert" else "onnx"]
    return {name: np.random.default_rng(0).random((rows, *shape), dtype=np.float32)}


def request(model: str, backend: str) -> Request:
    if model == "minilm":
        return _backend_models.text_request(model)
    ((name, x),) = feeds(model, backend, 1).items()
    blob = x.tobytes()
    head = json.dumps({"inputs": [{"name": name, "datatype": "FP32", "shape": list(x.shape),
                                   "parameters": {"binary_data_size": len(blob)}}],
                       "outputs": [{"name": "y" if model == "mlp" else "logits",
                                    "parameters": {"binary_data": True}}]}).encode()  # fmt: skip
    return Request(model, head + blob, {"Content-Type": "application/octet-stream",
                                        "Inference-Header-Content-Length": str(len(head))})  # fmt: skip


def in_process(version_dir: Path, config_text: str, model: str, backend: str,
               opts: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    """Rows/s of the backend class the server runs, at batch 1 and batch 8."""
    import tomllib

    from edgeinfer import runtime
    from edgeinfer.config import ModelConfig

    config = ModelConfig.from_dict(tomllib.loads(config_text), model)
    out: dict[str, Any] = {}
    for load in ("load_s", "cached_load_s") if backend == "openvino" else ("load_s",):
        start = time.perf_counter()
        instance = runtime.load(version_dir, config)  # OpenVINO: compiles, then from its cache
        out[load] = round(time.perf_counter() - start, 3)
        if load == "load_s" and backend == "openvino":
            instance.close()
    try:
        for rows in (1, 8):
            x = (_backend_models.text_feeds(version_dir / "tokenizer.json", rows)
                 if model == "minilm" else feeds(model, backend, rows))  # fmt: skip
            instance.run(x)
            out[f"b{rows}"] = quietly(lambda x=x, rows=rows: _loop(instance, x, rows, opts), None,
                                      opts)  # fmt: skip
    finally:
        instance.close()
    return out


def _loop(instance: Any, x: dict[str, np.ndarray], rows: int,
          opts: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    end = time.perf_counter() + opts.warmup
    while time.perf_counter() < end:
        instance.run(x)
    n, c0, m0, t0 = 0, self_cpu_s(), machine_busy_s(), time.perf_counter()
    while time.perf_counter() - t0 < opts.duration:
        instance.run(x)
        n += 1
    wall = time.perf_counter() - t0
    cpu = (self_cpu_s() - c0) / wall
    return {"rows_per_s": round(n * rows / wall, 1), "runs": n, "cpu": round(cpu, 3),
            "other_cpu": round((machine_busy_s() - m0) / wall - cpu, 3)}  # fmt: skip


def served(repo: Path, model: str, backend: str, home: Path, opts: argparse.Namespace,
           tmp: Path, starts: tuple[str, ...]) -> dict[str, Any]:  # fmt: skip
    """Cold start (and cached start), RSS and load at concurrency 1 and 8."""
    req = request(model, backend)
    out: dict[str, Any] = {}
    os.environ["EDGEINFER_HOME"] = str(home)  # OpenVINO's cache; the servers inherit it
    for i, start in enumerate(starts):
        server = ours(repo, tmp)
        try:
            out[start] = cold_start(server, {model: req}, opts)["cold_start_s"]
            if i < len(starts) - 1:
                continue
            out["rss_mb"] = server.rss_mb()["rss_mb"]
            for c in (1, 8):
                out[f"c{c}"] = load_point(server, req, c, opts, tmp)
        finally:
            server.stop()
    return out


def case(files: dict[str, Path], key: tuple[str, str, str], opts: argparse.Namespace,
         tmp: Path) -> dict[str, Any]:  # fmt: skip
    from edgeinfer.repository import add_version

    model, precision, backend = key
    name = f"{model}_{precision}_{backend}"
    repo = tmp / f"repo_{name}"
    (repo / model).mkdir(parents=True)
    config = CONFIG.format(backend=backend)  # in-process: MiniLM runs on token ids, no [text]
    text = _backend_models.TEXT_CONFIG if model == "minilm" else ""
    (repo / model / "config.toml").write_text(config + text)
    version = add_version(repo / model, files)
    log(f"{name}: in-process")
    os.environ["EDGEINFER_HOME"] = str(tmp / f"home_in_process_{name}")  # a cache of its own
    raw = in_process(version, config, model, backend, opts)
    starts = ("cold", "cached") if backend == "openvino" else ("cold",)
    work = tmp / f"work_{name}"  # the load generator keeps its request body here
    work.mkdir()
    srv = served(repo, model, backend, tmp / f"home_{name}", opts, work, starts)
    return {"model": model, "precision": precision, "backend": backend, "in_process": raw,
            "served": srv,
            "served_over_in_process": {
                "c1": round(srv["c1"]["rps"] / raw["b1"]["rows_per_s"], 3),
                "c8": round(srv["c8"]["rps"] / raw["b8"]["rows_per_s"], 3)}}  # fmt: skip


def run(opts: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    log("building models")
    files = build(tmp)
    only = opts.models.split(",") if opts.models else [k[0] for k in CASES]
    results = [case(files[key], key, opts, tmp) for key in CASES if key[0] in only]
    base = {
        r["model"]: r for r in results if (r["precision"], r["backend"]) == ("fp32", "onnxruntime")
    }
    for r in results:
        b = base[r["model"]]["in_process"]
        r["in_process_over_ort_fp32"] = {
            k: round(r["in_process"][k]["rows_per_s"] / b[k]["rows_per_s"], 3) for k in ("b1", "b8")
        }
    return {"benchmark": "backends", "mode": "quick" if opts.quick else "full",
            "machine": machine_info(), "settings": {"duration_s": opts.duration,
            "warmup_s": opts.warmup, "threads": 1, "config": CONFIG}, "results": results,
            "fastest": fastest(results)}  # fmt: skip


def fastest(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model: the backend and precision with the most in-process rows/s at batch 8, and its
    margin over the runner-up."""
    out = {}
    for model in sorted({r["model"] for r in results}):
        ranked = sorted((r for r in results if r["model"] == model),
                        key=lambda r: -r["in_process"]["b8"]["rows_per_s"])  # fmt: skip
        top, second = ranked[0], ranked[1]
        out[model] = {"backend": top["backend"], "precision": top["precision"],
                      "margin_over_next": round(top["in_process"]["b8"]["rows_per_s"]
                                                / second["in_process"]["b8"]["rows_per_s"], 3),
                      "next": f"{second['backend']} {second['precision']}"}  # fmt: skip
    return out


def table(res: dict[str, Any]) -> str:
    lines = ["| model | backend | in-process rows/s b1 / b8 | vs ORT FP32 (b1) | served c=1 / c=8 "
             "req/s | served / in-process c=1 / c=8 | load s (cached) | cold start s | RSS MB |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in res["results"]:
        raw, srv, ratio = r["in_process"], r["served"], r["served_over_in_process"]
        cold = f"{srv['cold']}" + (f" (cached {srv['cached']})" if "cached" in srv else "")
        load = f"{raw['load_s']}" + (f" / {raw['cached_load_s']}" if "cached_load_s" in raw else "")
        lines.append(
            f"| {r['model']} {r['precision'].upper()} | {r['backend']} | "
            f"{raw['b1']['rows_per_s']} / {raw['b8']['rows_per_s']} | "
            f"{r['in_process_over_ort_fp32']['b1']}x | {srv['c1']['rps']} / {srv['c8']['rps']} | "
            f"{ratio['c1']} / {ratio['c8']} | {load} | {cold} | {srv['rss_mb']} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description="edgeinfer backend benchmark",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    p.add_argument("--quick", action="store_true", help="2 s per point, 1 s warm-up")
    p.add_argument("--duration", type=float, help="seconds per point (default 6, quick 2)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per point (default 2, quick 1)")
    p.add_argument("--patience", type=float, default=60.0,
                   help="total extra seconds spent waiting for a quiet machine (default 60)")  # fmt: skip
    p.add_argument("--models", help="comma-separated subset of mlp,resnet18,mobilenetv2,minilm")
    add_output_args(p, "backends")
    opts = p.parse_args()
    opts.duration = opts.duration or (2.0 if opts.quick else 6.0)
    opts.warmup = opts.warmup if opts.warmup is not None else (1.0 if opts.quick else 2.0)
    opts.patience = Patience(opts.patience, 5.0)
    return run_and_write("backends", opts, run, table)


if __name__ == "__main__":
    sys.exit(main())

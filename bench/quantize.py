"""Quantization benchmark: `edgeinfer quantize` on the demo models and two ImageNet-shaped CNNs,
each point a separate `python -m edgeinfer.cli quantize ... --json` process (so peak RSS is the
point's own), FP32 and quantized timed in the same process with the same session options.

    python bench/quantize.py                 # -> bench/results/quantize.json and quantize.md
    python bench/quantize.py --only minilm   # one group of points (digits|minilm|cnn)
    python bench/quantize.py --table bench/results/quantize.json   # README table

Points: digits CNN static INT8 (minmax/entropy/percentile) against the sklearn test labels;
MiniLM dynamic INT8 per-tensor, per-channel, per-channel + --auto, and int4, on
src/edgeinfer/demo/sentences_eval.txt at batch 16; ResNet-18- and MobileNetV2-shaped CNNs
(random weights, 224x224) static INT8 at batch 8, output agreement as cosine to FP32.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SENTENCES = ROOT / "src" / "edgeinfer" / "demo" / "sentences_eval.txt"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- a MobileNetV2-shaped model (onnx.helper, random weights) --------------------------------
def mobilenetv2_like(path: Path, image: int = 224, seed: int = 0) -> Path:
    """MobileNetV2's layout (inverted residuals, depthwise 3x3, ReLU6, BatchNorm folded):
    `input` FP32 [N,3,image,image] -> `logits` FP32 [N,1000]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes: list[Any] = []
    inits: list[Any] = [numpy_helper.from_array(np.array(0, np.float32), "zero"),
                        numpy_helper.from_array(np.array(6, np.float32), "six")]  # fmt: skip

    def conv(x: str, name: str, cin: int, cout: int, k: int, stride: int, group: int = 1,
             relu6: bool = True) -> str:  # fmt: skip
        fan_in = cin // group * k * k
        w = rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan_in)
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"{name}_w"))
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}_b"))
        nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [f"{name}_c"],
                                      name=name, kernel_shape=[k, k], strides=[stride] * 2,
                                      pads=[k // 2] * 4, group=group))  # fmt: skip
        if not relu6:
            return f"{name}_c"
        nodes.append(helper.make_node("Clip", [f"{name}_c", "zero", "six"], [f"{name}_r"]))
        return f"{name}_r"

    x, cin = conv("input", "stem", 3, 32, 3, 2), 32
    blocks = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1)]  # fmt: skip
    for b, (t, c, n, s) in enumerate(blocks):
        for i in range(n):
            stride, name, hidden = (s if i == 0 else 1), f"b{b}_{i}", cin * t
            h = conv(x, name + "e", cin, hidden, 1, 1) if t != 1 else x
            h = conv(h, name + "d", hidden, hidden, 3, stride, group=hidden)
            h = conv(h, name + "p", hidden, c, 1, 1, relu6=False)
            if stride == 1 and cin == c:
                nodes.append(helper.make_node("Add", [h, x], [name + "_sum"]))
                h = name + "_sum"
            x, cin = h, c
    x = conv(x, "last", cin, 1280, 1, 1)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1))
    fc = (rng.standard_normal((1280, 1000)) * 0.03).astype(np.float32)
    inits += [numpy_helper.from_array(fc, "fc_w"),
              numpy_helper.from_array(np.zeros(1000, np.float32), "fc_b")]  # fmt: skip
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc"))
    graph = helper.make_graph(
        nodes, "mobilenetv2_like",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, image, image])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# ---- data -----------------------------------------------------------------------------------
def digits_data(tmp: Path) -> tuple[Path, Path]:
    """The demo's test split (eval, with labels) and the first 256 training images (calib)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    x_train, x_test, _, y_test = train_test_split(
        images, labels, test_size=0.25, random_state=0, stratify=labels
    )
    np.savez(tmp / "digits_eval.npz", image=x_test, labels=y_test)
    np.savez(tmp / "digits_calib.npz", image=x_train[:256])
    return tmp / "digits_calib.npz", tmp / "digits_eval.npz"


def image_data(tmp: Path, name: str, n: int, seed: int) -> Path:
    x = np.random.default_rng(seed).standard_normal((n, 3, 224, 224)).astype(np.float32)
    np.savez(tmp / f"{name}.npz", input=x)
    return tmp / f"{name}.npz"


# ---- points ---------------------------------------------------------------------------------
def point(label: str, model: Path, *args: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "edgeinfer.cli", "quantize", str(model), *args, "--json"]
    log(f"{label}: {' '.join(cmd[3:])}")
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{label}: exit {proc.returncode}: {proc.stderr.strip()}")
    r = json.loads(proc.stdout)
    r["label"], r["exit_code"] = label, proc.returncode
    r["wall_s"] = round(time.perf_counter() - started, 1)
    log(f"{label}: {r['status']} ({r['gate']['reason']}) in {r['wall_s']} s")
    return r


def run_points(only: str | None, tmp: Path) -> list[dict[str, Any]]:
    from edgeinfer.demo import ensure_demo_repository
    from edgeinfer.testing.models import resnet18_like

    out: list[dict[str, Any]] = []
    demo = ensure_demo_repository(tmp / "demo")
    n = 0

    def dest() -> str:
        nonlocal n
        n += 1
        return str(tmp / f"out{n}")

    if only in (None, "digits"):
        calib, ev = digits_data(tmp)
        for method in ("minmax", "entropy", "percentile"):
            out.append(point(f"digits static INT8 {method}", demo / "digits" / "1",
                             "--mode", "static", "--calibration", str(calib), "--method", method,
                             "--eval", str(ev), "--max-drop", "0.005", "--output", dest(),
                             "--bench-seconds", "1.5"))  # fmt: skip
    if only in (None, "minilm"):
        common = ["--eval", str(SENTENCES), "--metric", "cosine", "--max-drop", "0.005",
                  "--min-agreement", "0.95", "--bench-batch", "16", "--bench-seconds", "3"]  # fmt: skip
        minilm = demo / "minilm" / "1"
        out.append(point("minilm dynamic INT8 per-tensor", minilm, "--mode", "dynamic",
                         "--no-per-channel", *common, "--output", dest()))  # fmt: skip
        out.append(point("minilm dynamic INT8 per-channel", minilm, "--mode", "dynamic",
                         *common, "--output", dest()))  # fmt: skip
        out.append(point("minilm dynamic INT8 per-channel --auto", minilm, "--mode", "dynamic",
                         "--auto", *common, "--output", dest()))  # fmt: skip
        out.append(point("minilm int4 (block 32)", minilm, "--mode", "int4", *common,
                         "--output", dest()))  # fmt: skip
    if only in (None, "cnn"):
        calib = image_data(tmp, "calib224", 32, 1)
        ev = image_data(tmp, "eval224", 32, 2)
        cnns = {"resnet18-like": resnet18_like(tmp / "resnet18.onnx"),
                "mobilenetv2-like": mobilenetv2_like(tmp / "mobilenetv2.onnx")}  # fmt: skip
        for name, path in cnns.items():
            for fmt in ("qdq", "qoperator"):
                out.append(point(f"{name} static INT8 {fmt}", path, "--mode", "static",
                                 "--calibration", str(calib), "--format", fmt, "--eval", str(ev),
                                 "--metric", "cosine", "--max-drop", "0.01", "--output", dest(),
                                 "--batch-size", "8", "--bench-seconds", "4"))  # fmt: skip
    return out


# ---- summary --------------------------------------------------------------------------------
def _pt(res: list[dict[str, Any]], label: str) -> dict[str, Any] | None:
    return next((r for r in res if r["label"] == label), None)


def targets(res: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(target: str, value: Any, limit: str, met: bool) -> None:
        rows.append({"target": target, "value": value, "limit": limit, "met": bool(met)})

    if d := _pt(res, "digits static INT8 minmax"):
        drop = d["accuracy"]["drop"] * 100
        add("digits static INT8: accuracy drop", round(drop, 2), "<= 0.5 pp", drop <= 0.5)
        add("digits static INT8: throughput b8 vs FP32", d["speed"]["throughput_speedup"],
            "report", True)  # fmt: skip
    if m := _pt(res, "minilm dynamic INT8 per-channel --auto"):
        acc, spd = m["accuracy"], m["speed"]
        add("minilm --auto: mean cosine", round(acc["mean_cosine"], 5), ">= 0.995",
            acc["mean_cosine"] >= 0.995)  # fmt: skip
        add("minilm --auto: nearest-neighbour agreement", round(acc["nn_agreement"], 4), ">= 0.95",
            acc["nn_agreement"] >= 0.95)  # fmt: skip
        add("minilm --auto: smaller than FP32", m["size"]["ratio"], ">= 2.5x",
            m["size"]["ratio"] >= 2.5)  # fmt: skip
        add("minilm --auto: throughput b16 vs FP32", spd["throughput_speedup"], "> 1.0x",
            spd["throughput_speedup"] > 1.0)  # fmt: skip
    for name in ("resnet18-like", "mobilenetv2-like"):
        best = max((r for r in res if r["label"].startswith(name)),
                   key=lambda r: r["speed"]["throughput_speedup"], default=None)  # fmt: skip
        if best:
            add(f"{name} static INT8 ({best['settings']['format']}): throughput b8 vs FP32",
                best["speed"]["throughput_speedup"], ">= 2.0x",
                best["speed"]["throughput_speedup"] >= 2.0)  # fmt: skip
    return rows


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _ms(x: float) -> str:
    return f"{x:.1f} ms" if x >= 1 else f"{x * 1e3:.0f} µs"


def table(res: list[dict[str, Any]]) -> str:
    lines = [
        "| Model, quantization | Size FP32 → INT | Batch-1 latency FP32 → INT | Throughput FP32 → "
        "INT | Accuracy vs FP32 | Gate | Peak RSS |",
        "|---|---:|---:|---:|---|---|---:|",
    ]
    for r in res:
        size, spd, acc = r["size"], r["speed"], r["accuracy"] or {}
        key = next(k for k in spd["fp32"] if k.startswith("throughput_b"))
        if acc.get("metric") == "top1" and "accuracy" in acc:
            quality = f"top-1 {acc['accuracy_fp32']:.2%} → {acc['accuracy']:.2%}"
        elif acc.get("metric") == "cosine":
            quality = f"cosine {acc['mean_cosine']:.4f}"
            if r["label"].startswith("minilm"):  # random CNN inputs have no neighbours
                quality += f", NN agreement {acc['nn_agreement']:.3f}"
        else:
            quality = "-"
        if r.get("auto") and r["auto"]["passed"]:
            quality += f" ({len(r['auto']['kept_fp32'])} MatMuls kept FP32)"
        lines.append(
            f"| {r['label']} | {_size(size['fp32_bytes'])} → {_size(size['optimized_bytes'])}"
            f" ({size['ratio']:.2f}x) | {_ms(spd['fp32']['latency_b1_ms'])} → "
            f"{_ms(spd['optimized']['latency_b1_ms'])} | {spd['fp32'][key]:,.0f} → "
            f"{spd['optimized'][key]:,.0f}/s at b{key.removeprefix('throughput_b')} "
            f"({spd['throughput_speedup']:.2f}x) | {quality} | {r['status']} "
            f"| {r['peak_rss_mb']:.0f} MB |"
        )
    return "\n".join(lines) + "\n"


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    out = [f"# Quantization benchmark ({m['date']}, {m['cpu']}, {m['nproc']} cores, "
           f"onnxruntime {m['onnxruntime']})", "", table(doc["points"]), "## Targets", "",
           "| target | value | limit | met |", "|---|---:|---:|---|"]  # fmt: skip
    out += [f"| {t['target']} | {t['value']} | {t['limit']} | {'yes' if t['met'] else 'NO'} |"
            for t in doc["targets"]]  # fmt: skip
    out += ["", "One thread per session (the models' `intra_op_threads = 1`), spinning off, "
            "FP32 and INT8 timed alternately in the same process, on a 2-core machine shared "
            "with other jobs (load average at start: "
            f"{', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}). The digits CNN runs in "
            "~10 µs, so its speed ratio is mostly per-call overhead and noise. The ResNet-18 and "
            "MobileNetV2 shapes have random weights: their accuracy column is cosine to FP32 "
            "on random inputs. Peak RSS is the whole quantize process; ONNX Runtime's "
            "`quantize_dynamic` alone peaks at ~495 MB on MiniLM."]  # fmt: skip
    return "\n".join(out) + "\n"


def machine() -> dict[str, Any]:
    from importlib import metadata

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    return {"cpu": cpu, "nproc": os.cpu_count(), "date": datetime.now(UTC).isoformat(
            timespec="seconds"), "python": platform.python_version(),
            "onnxruntime": metadata.version("onnxruntime"), "git_commit": commit,
            "loadavg_at_start": os.getloadavg()}  # fmt: skip


def _slim(r: dict[str, Any]) -> dict[str, Any]:
    keep = ("label", "status", "exit_code", "gate", "settings", "data", "accuracy", "size",
            "speed", "peak_rss_mb", "seconds", "wall_s", "auto")  # fmt: skip
    out = {k: r.get(k) for k in keep}
    if out["auto"]:
        out["auto"] = {k: v for k, v in out["auto"].items() if k != "ranking"}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("digits", "minilm", "cnn"))
    p.add_argument("--table", type=Path, help="print the README table of a results file")
    p.add_argument("--out", type=Path, default=RESULTS / "quantize.json")
    args = p.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text())["points"]), end="")
        return 0
    with tempfile.TemporaryDirectory(prefix="edgeinfer-qbench.") as tmp:
        doc: dict[str, Any] = {"benchmark": "quantize", "machine": machine()}
        points = [_slim(r) for r in run_points(args.only, Path(tmp))]
    if args.only and args.out.exists():  # merge: replace this group's points only
        old = json.loads(args.out.read_text())["points"]
        labels = {r["label"] for r in points}
        points = [r for r in old if r["label"] not in labels] + points
        order = ("digits", "minilm", "resnet18", "mobilenetv2")
        points.sort(key=lambda r: next(i for i, o in enumerate(order) if r["label"].startswith(o)))
    doc["points"] = points
    doc["targets"] = targets(points)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

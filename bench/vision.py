"""Vision benchmark: the demo's EfficientNet-Lite0 served from JPEG bytes against an in-process
pipeline with the same decoder and the same model, in one run.

    python bench/vision.py                       # -> bench/results/vision.json
    python bench/vision.py --quick               # shorter windows (a smoke run)
    python bench/vision.py --table bench/results/vision.json   # README rows

Points, for FP32 (version 1) and INT8 (version 2):
- served: `edgeinfer serve` with the demo config (2 instances of 1 thread, dynamic batching);
  the load generator (bench/_load.py, its own process) sends scikit-learn's flower.jpg (640x427,
  JPEG bytes, binary tensor extension) and asks for the top 3 classes, at concurrency 1 and 8;
- pipeline: in this process, threads that each decode the same JPEG with Pillow (draft mode on,
  as the server), resize, crop, normalize and `session.run` it; 1 thread (the c=1 baseline)
  and one per core (the c=8 baseline: every core busy, no serving at all);
- raw: `session.run` alone on the ready tensor, one per core, so the share of time spent
  decoding shows.
Also: JPEG decoding with and without Pillow's draft mode on a 640x427 photo and on 4032x3024
versions of the photos (what a phone sends), with FP32 top-1 agreement between the two.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _proc import Request, Server, free_port, run_load, wait_quiet  # noqa: E402

RESULTS = BENCH / "results"
MODEL = "efficientnet-lite0"
VERSIONS = {"fp32": "1", "int8": "2"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def jpeg(img: Any, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def infer_request(version: str, photo: bytes, top: int = 3) -> Request:
    head = json.dumps({
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                    "parameters": {"binary_data_size": len(photo) + 4}}],
        "outputs": [{"name": "logits", "parameters": {"classification": top,
                                                      "binary_data": False}}],
    }).encode()  # fmt: skip
    body = head + len(photo).to_bytes(4, "little") + photo
    return Request(f"{MODEL}/versions/{version}", body,
                   {"Content-Type": "application/octet-stream",
                    "Inference-Header-Content-Length": str(len(head))})  # fmt: skip


# ---- the in-process pipeline ------------------------------------------------------------------
class Pipeline:
    """Pillow decode (draft) + resize/crop + normalize + ONNX Runtime, written out here with
    Pillow and numpy only, as someone serving this model in their own process would."""

    def __init__(self, model_path: Path) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(model_path), so, ["CPUExecutionProvider"])

    @staticmethod
    def tensor(data: bytes, draft: bool = True) -> np.ndarray:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            s = 256 / min(w, h)
            if draft:
                img.draft("RGB", (round(w * s), round(h * s)))
            rgb = img.convert("RGB")
        w, h = rgb.size
        s = 256 / min(w, h)
        cw, ch = 224 / s, 224 / s
        box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
        x = np.asarray(rgb.resize((224, 224), Image.Resampling.BICUBIC, box=box), np.float32)
        return np.ascontiguousarray(((x - 127.0) / 128.0).transpose(2, 0, 1)[None])

    def classify(self, data: bytes) -> int:
        return int(self.session.run(None, {"image": self.tensor(data)})[0].argmax())


def closed_loop(work: Callable[[], object], threads: int, warmup: float,
                duration: float) -> dict[str, float]:  # fmt: skip
    """`threads` threads each running `work` back to back; items/s and latency over `duration`."""
    lats: list[list[float]] = [[] for _ in range(threads)]
    stop = threading.Event()
    counting = threading.Event()

    def loop(mine: list[float]) -> None:
        while not stop.is_set():
            t = time.perf_counter()
            work()
            if counting.is_set():
                mine.append(time.perf_counter() - t)

    ts = [threading.Thread(target=loop, args=(lats[i],), daemon=True) for i in range(threads)]
    for t in ts:
        t.start()
    time.sleep(warmup)
    counting.set()
    t0 = time.perf_counter()
    time.sleep(duration)
    stop.set()
    elapsed = time.perf_counter() - t0
    for t in ts:
        t.join()
    all_lats = sorted(x for mine in lats for x in mine)
    return {"images_per_s": round(len(all_lats) / elapsed, 2),
            "p50_ms": round(1e3 * all_lats[len(all_lats) // 2], 2) if all_lats else None,
            "p99_ms": round(1e3 * all_lats[int(0.99 * (len(all_lats) - 1))], 2)
            if all_lats else None}  # fmt: skip


def pipeline_point(p: Pipeline, photo: bytes, cores: int,
                   opts: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    ready = p.tensor(photo)
    wait_quiet(None, opts.quiet_wait)
    decode = closed_loop(lambda: p.tensor(photo), 1, opts.warmup, opts.duration)
    one = closed_loop(lambda: p.classify(photo), 1, opts.warmup, opts.duration)
    wait_quiet(None, opts.quiet_wait)
    every = closed_loop(lambda: p.classify(photo), cores, opts.warmup, opts.duration)
    raw = closed_loop(lambda: p.session.run(None, {"image": ready}), cores, opts.warmup,
                      opts.duration)  # fmt: skip
    # Decoding's share of one thread's time per image: 1/decode-rate over 1/pipeline-rate.
    share = one["images_per_s"] / decode["images_per_s"]
    return {"pipeline_1_thread": one, f"pipeline_{cores}_threads": every,
            "raw_session_run": raw, "decode_only_1_thread": decode,
            "decode_share_1_thread": round(share, 3)}  # fmt: skip


def pipeline_points(repo: Path, photo: bytes, opts: argparse.Namespace) -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0))
    out: dict[str, Any] = {"threads_all_cores": cores}
    for kind, version in VERSIONS.items():
        point = pipeline_point(Pipeline(repo / MODEL / version / "model.onnx"), photo, cores, opts)
        out[kind] = point
        log(f"pipeline {kind}: 1 thread {point['pipeline_1_thread']['images_per_s']}/s, "
            f"{cores} threads {point[f'pipeline_{cores}_threads']['images_per_s']}/s, "
            f"raw {point['raw_session_run']['images_per_s']}/s")  # fmt: skip
    return out


# ---- served -----------------------------------------------------------------------------------
def served_points(repo: Path, photo: bytes, opts: argparse.Namespace,
                  tmp: Path) -> dict[str, Any]:  # fmt: skip
    port = free_port()
    cmd = [sys.executable, "-m", "edgeinfer.cli", "serve", "--repository", str(repo),
           "--http-port", str(port), "--grpc-port", "0", "--load-model", MODEL,
           "--log-level", "warning"]  # fmt: skip
    server = Server("edgeinfer", cmd, port, tmp / "server.log")
    server.start()
    (tmp / MODEL / "versions").mkdir(parents=True)  # run_load names body files after the path
    out: dict[str, Any] = {}
    try:
        reqs = {kind: infer_request(v, photo) for kind, v in VERSIONS.items()}
        out["first_reply_s"] = server.wait_first_success(list(reqs.values()), timeout=180)
        for kind, req in reqs.items():
            for c in (1, 8):
                wait_quiet(server, opts.quiet_wait)
                r = run_load(server, req, c, opts.duration, opts.warmup, tmp)
                out[f"{kind}_c{c}"] = {"images_per_s": round(float(r["rps"]), 2),
                                       **{k: r[k] for k in ("p50_ms", "p99_ms", "errors",
                                                            "server_cpu", "machine_cpu")
                                          if k in r}}  # fmt: skip
                log(f"served {kind} c={c}: {out[f'{kind}_c{c}']}")
        out.update(server.rss_mb())
    finally:
        server.stop()
    return out


# ---- draft mode -------------------------------------------------------------------------------
def draft_points(repo: Path, opts: argparse.Namespace) -> dict[str, Any]:
    from edgeinfer.demo.imagenet import OUT_OF_DOMAIN, photos

    pics = {n: img for n, img in photos().items() if n not in OUT_OF_DOMAIN}
    small = jpeg(pics["flower.jpg"])
    phone = {n: jpeg(img.resize((4032, 3024), resample=3)) for n, img in pics.items()}

    def per_decode(data: bytes, draft: bool) -> float:
        times = []
        for _ in range(opts.decode_repeats):
            t = time.perf_counter()
            Pipeline.tensor(data, draft)
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e3

    out: dict[str, Any] = {}
    for name, data in (("640x427", small), ("4032x3024", phone["flower.jpg"])):
        full, fast = per_decode(data, False), per_decode(data, True)
        out[name] = {"full_ms": round(full, 2), "draft_ms": round(fast, 2),
                     "speedup": round(full / fast, 2), "jpeg_bytes": len(data)}  # fmt: skip
    p = Pipeline(repo / MODEL / "1" / "model.onnx")
    same = [int(p.session.run(None, {"image": Pipeline.tensor(d, False)})[0].argmax())
            == int(p.session.run(None, {"image": Pipeline.tensor(d, True)})[0].argmax())
            for d in phone.values()]  # fmt: skip
    out["4032x3024"]["fp32_top1_agreement_draft_vs_full"] = round(sum(same) / len(same), 3)
    out["4032x3024"]["photos"] = len(same)
    log(f"draft: {out}")
    return out


def summarize(res: dict[str, Any]) -> dict[str, Any]:
    s, p = res["served"], res["pipeline"]
    cores = p["threads_all_cores"]
    out = {}
    for kind in VERSIONS:
        out[f"{kind}_c1_over_pipeline_1_thread"] = round(
            s[f"{kind}_c1"]["images_per_s"] / p[kind]["pipeline_1_thread"]["images_per_s"], 3
        )
        out[f"{kind}_c8_over_pipeline_all_cores"] = round(
            s[f"{kind}_c8"]["images_per_s"] / p[kind][f"pipeline_{cores}_threads"]["images_per_s"],
            3)  # fmt: skip
    out["int8_over_fp32_served_c8"] = round(s["int8_c8"]["images_per_s"]
                                            / s["fp32_c8"]["images_per_s"], 3)  # fmt: skip
    out["int8_over_fp32_raw"] = round(p["int8"]["raw_session_run"]["images_per_s"]
                                      / p["fp32"]["raw_session_run"]["images_per_s"], 3)  # fmt: skip
    return out


def table(res: dict[str, Any]) -> str:
    s, p, r = res["served"], res["pipeline"], res["ratios"]
    cores = p["threads_all_cores"]
    rows = []
    for kind in VERSIONS:
        rows.append(f"| EfficientNet-Lite0 {kind.upper()} from JPEG, c=8, img/s "
                    f"(`bench/vision.py`) | {s[f'{kind}_c8']['images_per_s']:.1f} | in-process "
                    f"Pillow + ORT, {cores} threads {p[kind][f'pipeline_{cores}_threads']['images_per_s']:.1f}"
                    f" | {r[f'{kind}_c8_over_pipeline_all_cores']:.2f} |")  # fmt: skip
    return "\n".join(rows)


def run(opts: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import sklearn.datasets
    from PIL import Image

    from edgeinfer.demo import ensure_demo_repository

    repo = ensure_demo_repository(opts.repo)
    with Image.open(Path(sklearn.datasets.__file__).parent / "images" / "flower.jpg") as img:
        photo = jpeg(img.convert("RGB"))
    res: dict[str, Any] = {
        "bench": "vision", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
        "photo": {"name": "flower.jpg", "size": [640, 427], "jpeg_bytes": len(photo)},
        "duration_s": opts.duration, "warmup_s": opts.warmup,
    }  # fmt: skip
    res["pipeline"] = pipeline_points(repo, photo, opts)
    res["served"] = served_points(repo, photo, opts, tmp)
    res["draft"] = draft_points(repo, opts)
    res["ratios"] = summarize(res)
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=None, help="demo repository (built if missing)")
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--quiet-wait", type=float, default=20.0,
                   help="at most this long, wait for other processes to leave the cores")  # fmt: skip
    p.add_argument("--decode-repeats", type=int, default=20)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--output", type=Path, default=RESULTS / "vision.json")
    p.add_argument("--table", type=Path, help="print the README rows of a results file")
    opts = p.parse_args()
    if opts.table:
        print(table(json.loads(opts.table.read_text())))
        return 0
    if opts.quick:
        opts.duration, opts.warmup, opts.quiet_wait, opts.decode_repeats = 4.0, 1.0, 2.0, 5
        if opts.output == RESULTS / "vision.json":
            opts.output = RESULTS / "vision-quick.json"
    with tempfile.TemporaryDirectory(prefix="edgeinfer-vision-") as tmp:
        res = run(opts, Path(tmp))
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.write_text(json.dumps(res, indent=2) + "\n")
    log(f"wrote {opts.output}")
    print(json.dumps(res["ratios"], indent=2))
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())

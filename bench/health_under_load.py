"""Health latency while the worst single request of each route is in flight, and RSS after.

    python bench/health_under_load.py                  # -> bench/results/health_under_load.json
    python bench/health_under_load.py --source DIR     # serve another checkout's src/ (a baseline)
    python bench/health_under_load.py --skip-slow      # leave out requests that take minutes

A server on the demo repository (digits, minilm, llm-demo) gets one request at a time: the refused
reproductions of the adversarial test (a 16 MB embedding string, a 30 MB prompt, 8 x 1 MB strings over KServe,
a 60 MB JSON body, huge shapes, over HTTP and gRPC) and the largest request each route accepts
(or parses before refusing). Meanwhile a second connection polls `/v2/health/ready`
back to back. Reported per request: its status and duration, the slowest and median health
answer while it was in flight, and RSS before, at the peak and after (lowest within 5 s).
The baseline is the health latency of the same server with nothing in flight, in the same run.
Targets: health < 50 ms while any single request is in flight; RSS within 10 % after.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "health_under_load.json"
HOST = "127.0.0.1"
MB = 1 << 20
HEALTH_TARGET_MS = 50.0
RSS_TARGET = 0.10


def _rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out["VmRSS"], out["VmHWM"]


def _reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


class HealthPoller(threading.Thread):
    """GET /v2/health/ready back to back on one kept-alive connection; latencies in ms."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.samples, self.failures = port, [], 0
        self._halt = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
        while not self._halt.is_set():
            t0 = time.perf_counter()
            try:
                conn.request("GET", "/v2/health/ready")
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except OSError:
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
            self.samples.append((time.perf_counter() - t0) * 1e3)
            self.failures += not ok
            time.sleep(0.002)
        conn.close()

    def stop(self) -> dict[str, Any]:
        self._halt.set()
        self.join()
        s = sorted(self.samples) or [float("nan")]
        return {"health_max_ms": round(s[-1], 1), "health_p50_ms": round(statistics.median(s), 2),
                "health_p99_ms": round(s[min(len(s) - 1, int(0.99 * len(s)))], 1),
                "health_over_50ms": sum(x >= HEALTH_TARGET_MS for x in s),
                "health_polls": len(self.samples), "health_failures": self.failures}  # fmt: skip


# ---- the requests -----------------------------------------------------------------------------


def _binary_strings(name: str, items: list[bytes]) -> tuple[bytes, dict[str, str]]:
    raw = b"".join(len(b).to_bytes(4, "little") + b for b in items)
    head = orjson.dumps({"inputs": [{"name": name, "datatype": "BYTES", "shape": [len(items)],
                                     "parameters": {"binary_data_size": len(raw)}}]})  # fmt: skip
    return head + raw, {"Inference-Header-Content-Length": str(len(head)),
                        "Content-Type": "application/octet-stream"}  # fmt: skip


def _binary_fp32(rows: int) -> tuple[bytes, dict[str, str]]:
    raw = np.ones((rows, 1, 8, 8), np.float32).tobytes()
    head = orjson.dumps({"inputs": [{"name": "image", "datatype": "FP32",
                                     "shape": [rows, 1, 8, 8],
                                     "parameters": {"binary_data_size": len(raw)}}]})  # fmt: skip
    return head + raw, {"Inference-Header-Content-Length": str(len(head)),
                        "Content-Type": "application/octet-stream"}  # fmt: skip


def _json_floats(size: int) -> bytes:
    """A KServe JSON body of about `size` bytes of floats for digits (too many rows)."""
    rows = size // (64 * 6)
    data = np.round(np.random.default_rng(0).random(rows * 64), 3).tolist()
    return orjson.dumps({"inputs": [{"name": "image", "datatype": "FP32",
                                     "shape": [rows, 1, 8, 8], "data": data}]})  # fmt: skip


HttpBuild = Callable[[], tuple[str, bytes, dict[str, str]]]


def http_requests(json_limit: int) -> dict[str, HttpBuild]:
    """name -> builder of (path, body, headers); built just before sending."""
    word = b"word "
    text_max = 64 * 256  # minilm: max_length 256 -> [text] max_bytes 16 KB

    def emb(texts: list[str]) -> HttpBuild:
        return lambda: ("/v1/embeddings", orjson.dumps({"model": "minilm", "input": texts}),
                        {"Content-Type": "application/json"})  # fmt: skip

    def kserve(model: str, build: Callable[[], tuple[bytes, dict[str, str]]]) -> HttpBuild:
        def make() -> tuple[str, bytes, dict[str, str]]:
            body, headers = build()
            return f"/v2/models/{model}/infer", body, headers

        return make

    def json_body(model: str, build: Callable[[], bytes]) -> HttpBuild:
        return lambda: (f"/v2/models/{model}/infer", build(), {"Content-Type": "application/json"})

    def llm(route: str, doc: dict[str, Any]) -> HttpBuild:
        return lambda: (f"/v1/{route}", orjson.dumps({"model": "llm-demo", "max_tokens": 16,
                                                       **doc}),
                        {"Content-Type": "application/json"})  # fmt: skip

    words = (word * ((json_limit - 1024) // 5)).decode()  # a body just under --max-json-bytes
    huge = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [2**40, 2**40, 8, 8],
                        "data": []}]}  # fmt: skip
    return {
        "http embeddings: one 16 MB string": emb(["word " * (16 * MB // 5)]),
        "http embeddings: 64 strings of 16 KB (largest accepted)":
            emb([(word * (text_max // 5)).decode()] * 64),
        "http kserve text: 8 x 1 MB strings": kserve(
            "minilm", lambda: _binary_strings("text", [word * (MB // 5)] * 8)),
        "http kserve text: 64 strings of 16 KB (largest accepted)": kserve(
            "minilm", lambda: _binary_strings("text", [word * (text_max // 5)] * 64)),
        "http kserve JSON: 60 MB body": json_body("digits", lambda: _json_floats(60 * MB)),
        "http kserve JSON: body at --max-json-bytes": json_body(
            "digits", lambda: _json_floats(json_limit - 4096)),
        "http kserve binary: 60 MB FP32 tensor": kserve("digits", lambda: _binary_fp32(245_000)),
        "http kserve: huge shape": json_body("digits", lambda: orjson.dumps(huge)),
        "http completions: 30 MB prompt": llm("completions", {"prompt": "word " * (6 * MB)}),
        "http completions: prompt at --max-json-bytes": llm("completions", {"prompt": words}),
        "http chat: message at --max-json-bytes": llm(
            "chat/completions", {"messages": [{"role": "user", "content": words}]}),
        "http completions: a prompt filling the context (accepted)": llm(
            "completions", {"prompt": "word " * 150}),  # ~450 of the 512 tokens
    }  # fmt: skip


def grpc_requests() -> dict[str, Callable[[], Any]]:
    from tritonclient.grpc import service_pb2

    def strings(items: list[bytes]) -> Callable[[], Any]:
        def build() -> Any:
            req = service_pb2.ModelInferRequest(model_name="minilm")
            req.inputs.add(name="text", datatype="BYTES", shape=[len(items)])
            req.raw_input_contents.append(b"".join(len(b).to_bytes(4, "little") + b
                                                   for b in items))  # fmt: skip
            return req

        return build

    def fp32(rows: int) -> Callable[[], Any]:
        def build() -> Any:
            req = service_pb2.ModelInferRequest(model_name="digits")
            req.inputs.add(name="image", datatype="FP32", shape=[rows, 1, 8, 8])
            req.raw_input_contents.append(np.ones((rows, 1, 8, 8), np.float32).tobytes())
            return req

        return build

    return {
        "grpc kserve text: 8 x 1 MB strings": strings([b"word " * (MB // 5)] * 8),
        "grpc kserve text: 64 strings of 16 KB (largest accepted)":
            strings([b"word " * (64 * 256 // 5)] * 64),
        "grpc kserve binary: 60 MB FP32 tensor": fp32(245_000),
        "grpc kserve binary: a tensor just under --max-grpc-message-bytes (16 MiB)":
            fp32((16 * MB - 4096) // 256),
    }  # fmt: skip


# ---- measuring --------------------------------------------------------------------------------


def _measure(pid: int, port: int, send: Callable[[], int]) -> dict[str, Any]:
    rss_before, _ = _rss_mb(pid)
    _reset_peak(pid)
    poller = HealthPoller(port)
    poller.start()
    time.sleep(0.1)
    t0 = time.perf_counter()
    status = send()
    seconds = time.perf_counter() - t0
    health = poller.stop()
    _, peak = _rss_mb(pid)
    after = rss_before * 10
    for _ in range(50):  # the lowest RSS within 5 s: freed memory may take a moment
        after = min(after, _rss_mb(pid)[0])
        if after <= rss_before * (1 + RSS_TARGET):
            break
        time.sleep(0.1)
    return {"status": status, "seconds": round(seconds, 3), **health,
            "rss_before_mb": round(rss_before, 1), "rss_peak_mb": round(peak, 1),
            "rss_after_mb": round(after, 1),
            "rss_after_ratio": round(after / rss_before, 3),
            "health_ok": health["health_max_ms"] < HEALTH_TARGET_MS and not health[
                "health_failures"],
            "rss_ok": after <= rss_before * (1 + RSS_TARGET)}  # fmt: skip


def _http_sender(port: int, build: HttpBuild) -> Callable[[], int]:
    path, body, headers = build()

    def send() -> int:
        conn = http.client.HTTPConnection(HOST, port, timeout=600)
        try:
            conn.request("POST", path, body, headers)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        except OSError:  # the server may close the connection after a 413
            return -1
        finally:
            conn.close()

    return send


def _grpc_sender(port: int, build: Callable[[], Any]) -> Callable[[], int | str]:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    request = build()

    def send() -> str:
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        with grpc.insecure_channel(f"{HOST}:{port}", options=options) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            try:
                stub.ModelInfer(request, timeout=600)
            except grpc.RpcError as e:
                return str(e.code().name)
            return "OK"

    return send  # type: ignore[return-value]


def _start(
    repo: Path, source: Path, log: Path, extra: list[str]
) -> tuple[subprocess.Popen[bytes], int, int]:
    from _proc import free_port

    http_port, grpc_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(source), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "edgeinfer.cli", "serve", "--repository", str(repo),
           "--http-port", str(http_port), "--grpc-port", str(grpc_port), *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection(HOST, http_port, timeout=2)
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                return proc, http_port, grpc_port
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server not ready in 180 s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--demo", type=Path, default=None, help="demo repository (default: built)")
    ap.add_argument("--source", type=Path, default=ROOT / "src", help="src/ of the code to serve")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--skip", action="append", default=[], help="leave out requests whose name "
                    "contains this (repeatable)")  # fmt: skip
    ap.add_argument("--json-limit", type=int, default=MB, help="the server's --max-json-bytes")
    args = ap.parse_args()
    sys.path.insert(0, str(args.source))
    from edgeinfer.demo import ensure_demo_repository

    repo = ensure_demo_repository(args.demo)
    log = Path(tempfile.mkdtemp(prefix="edgeinfer-health-")) / "server.log"
    proc, http_port, grpc_port = _start(repo, args.source, log, [])
    results: dict[str, Any] = {}
    try:
        idle = HealthPoller(http_port)
        idle.start()
        time.sleep(2.0)
        results["idle (baseline)"] = idle.stop()
        senders: dict[str, Callable[[], Any]] = {}
        for name, build in http_requests(args.json_limit).items():
            senders[name] = lambda b=build: _http_sender(http_port, b)
        for name, gbuild in grpc_requests().items():
            senders[name] = lambda b=gbuild: _grpc_sender(grpc_port, b)
        for name, make in senders.items():
            if any(s in name for s in args.skip):
                continue
            send = make()
            results[name] = _measure(proc.pid, http_port, send)
            print(f"{name}: {results[name]}", flush=True)
            del send
    finally:
        proc.terminate()
        proc.wait(30)
    doc = {"machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()},
           "source": str(args.source), "targets": {"health_max_ms": HEALTH_TARGET_MS,
                                                   "rss_after_ratio": 1 + RSS_TARGET},
           "requests": results}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

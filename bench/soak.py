"""Soak test: a real server under mixed traffic for N minutes, then the invariants.

    python bench/soak.py                   # 60 minutes -> bench/results/soak-60m.json
    python bench/soak.py --minutes 3       # the CI run (tests/e2e/test_soak.py)
    python bench/soak.py --demo PATH       # also serve the demo repository's models
    python bench/soak.py --adversarial     # and the adversarial reproductions (-adversarial.json)

Traffic, all at once: KServe infer over HTTP (JSON and binary tensors) and gRPC on `mlp`
(dynamic batching) and `ids` (INT32/FP64/BYTES); KServe infer over HTTP and gRPC on two
LoRA-ready MLPs (ORT per-run adapters, and one stacked run for rows of different adapters),
switching at random between the base model and its adapters (the `adapter` parameter) and
checking every output against numpy; OpenAI embeddings and tensor inference on the demo models
when given; a new `mlp` version published and hot-loaded every --reload-every seconds; malformed
requests; clients that disconnect mid-body, mid-request and mid-stream; pipelined raw HTTP/1.1;
and, when an LLM (backend "llama.cpp") is served, streaming chats with random disconnects
through the `openai` client, switching at random between the base model and its LoRA adapters
(`llm-demo:demo-adapter` in the demo repository). Base and adapter requests are tallied as
kinds of their own (`llm_chat` / `llm_chat_adapter`, `http_lora` / `http_lora_adapter`, ...).

Invariants (the exit code is 1 when one fails): no 5xx; no hang (every call has a timeout, and
reaching it is a failure); every accepted request got exactly one complete reply or an explicit
error (a malformed request must get a 4xx with an error body); every reload goes live; the
server's RSS, open file descriptors and threads (from /proc/<pid>/) stay within 10% after
warm-up (median of the first interval against the last) plus a small absolute allowance for
sample-to-sample noise (32 MB of RSS, 4 fds, 2 threads); no traceback in the server log.
p99 latency of the first and last interval is reported, not judged: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

HOST = "127.0.0.1"
TIMEOUT = 30.0  # seconds: a reply slower than this is a hang
LLM_TIMEOUT = 120.0
MAX_BODY = 256 * 1024  # --max-request-bytes, so a 413 costs little to provoke
MLP_CONFIG = """max_batch_size = 8
[dynamic_batching]
preferred_batch_sizes = [4, 8]
max_queue_delay_us = 500
[lifecycle]
auto_rollback = false  # a latency blip on a shared machine must not undo a soak reload
"""
LORA_MODELS = ("mlp-lora", "mlp-stacked")  # per_run, stacked
LORA_ADAPTERS = {"a": 2, "b": 4, "c": 8}  # name -> rank (the stacked model pads them to 8)
LORA_CONFIG = """max_batch_size = 8
[dynamic_batching]
max_queue_delay_us = 500
"""
RESULTS = Path(__file__).resolve().parent / "results"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Broken(Exception):
    """A reply that is not a complete response nor an explicit error."""


class Tally:
    """Outcomes per kind of request; latencies of successful ones; the first failures."""

    FAIL = ("hang", "broken")

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.latencies: list[tuple[float, str, float]] = []  # (since start, kind, latency)
        self.failures: list[dict[str, Any]] = []

    def record(self, kind: str, outcome: str, start: float, detail: str = "") -> None:
        now = time.monotonic()
        self.outcomes[(kind, outcome)] += 1
        if outcome == "ok":
            self.latencies.append((start - self.t0, kind, now - start))
        if self.is_failure(outcome) and len(self.failures) < 50:
            self.failures.append({"t": round(now - self.t0, 1), "kind": kind,
                                  "outcome": outcome, "detail": detail[:300]})  # fmt: skip

    @classmethod
    def is_failure(cls, outcome: str) -> bool:
        return outcome in cls.FAIL or outcome.startswith("5xx")


async def call(tally: Tally, kind: str, work: Any, timeout: float = TIMEOUT) -> str:
    """Run one client call under a timeout and record what came of it."""
    start, detail = time.monotonic(), ""
    try:
        outcome = await asyncio.wait_for(work, timeout)
    except TimeoutError:
        outcome = "hang"
    except Broken as e:
        outcome, detail = "broken", str(e)
    except Exception as e:  # a transport error on a request we did not abort
        outcome, detail = "broken", f"{type(e).__name__}: {e}"
    if outcome.startswith("5xx"):
        outcome, _, detail = outcome.partition("|")
    tally.record(kind, outcome, start, detail)
    return outcome


def judge(r: httpx.Response, openai: bool = False) -> str | None:
    """'error:<code>' / '5xx:<code>|text' for an error reply (which must carry an error body),
    None for a 2xx the caller checks further."""
    if r.status_code >= 500:
        return f"5xx:{r.status_code}|{r.text[:200]}"
    if r.status_code < 300:
        return None
    try:
        err = r.json()["error"]
    except (ValueError, KeyError, TypeError) as e:
        raise Broken(f"{r.status_code} without an error body: {r.text[:100]!r}") from e
    if openai and not (isinstance(err, dict) and "message" in err):
        raise Broken(f"OpenAI error not in OpenAI's shape: {err!r}")
    return f"error:{r.status_code}"


# ---- the repository and the server ------------------------------------------------------------


def build_repository(root: Path, build: Path, demo: Path | None) -> list[str]:
    """mlp + ids from edgeinfer.testing.models, plus the demo's models (hard-linked: the server
    writes state.json into its own copy only). Returns the demo model names."""
    from edgeinfer.testing import models

    models.publish(root, "mlp", models.mlp(build / "mlp1.onnx", seed=1), MLP_CONFIG)
    models.publish(root, "ids", models.identity_multi(build / "ids.onnx"))
    names = []
    if demo is not None:
        for src in sorted(p for p in demo.iterdir() if (p / "config.toml").is_file()):
            shutil.copytree(src, root / src.name, copy_function=_link)
            names.append(src.name)
    return names


class LoraRef:
    """The LoRA models' base weights and each adapter's (A [in, r], B [r, out]) per target:
    what every reply must equal."""

    def __init__(self, weights: dict[str, np.ndarray],
                 adapters: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]) -> None:  # fmt: skip
        self.weights, self.adapters = weights, adapters

    def check(self, model: str, adapter: str | None, x: np.ndarray, y: np.ndarray) -> None:
        w = dict(self.weights)
        for target, (a, b) in self.adapters[adapter].items() if adapter else ():
            w[target] = w[target] + a @ b
        want = np.maximum(x @ w["w1"] + w["b1"], 0) @ w["w2"]
        if y.shape != want.shape or not np.allclose(y, want, rtol=1e-3, atol=1e-3):
            raise Broken(f"{model} with adapter {adapter}: output {y.shape} is not the "
                         "reference (another adapter's rows, or none?)")  # fmt: skip


def build_lora_models(root: Path, build: Path) -> LoraRef:
    """`mlp-lora` and `mlp-stacked`, each with adapters a, b, c of different ranks."""
    import onnx
    from onnx import numpy_helper

    from edgeinfer.adapters.convert import convert_graph
    from edgeinfer.adapters.store import add_adapter
    from edgeinfer.runtime.lora_onnx import export_onnx_adapter
    from edgeinfer.testing import models

    base = models.mlp(build / "mlp-base.onnx", seed=11)
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(base)).graph.initializer}
    rng = np.random.default_rng(12)
    adapters = {}
    for name, rank in LORA_ADAPTERS.items():
        adapters[name] = {t: ((rng.standard_normal((d_in, rank)) * 0.3).astype(np.float32),
                              (rng.standard_normal((rank, d_out)) * 0.3).astype(np.float32))
                          for t, (d_in, d_out) in {"w1": (16, 32), "w2": (32, 4)}.items()}  # fmt: skip
        export_onnx_adapter(build / f"{name}.onnx_adapter", adapters[name])
    for model, stacked in zip(LORA_MODELS, (False, True), strict=True):
        graph = convert_graph(base, build / model, ["w1", "w2"], stacked, rank=8)
        models.publish(root, model, graph / "model.onnx", LORA_CONFIG,
                       extra={"lora.json": graph / "lora.json"})  # fmt: skip
        for name in LORA_ADAPTERS:
            add_adapter(root / model, name, build / f"{name}.onnx_adapter")
    return LoraRef(weights, adapters)


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_server(repo: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    http_port, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "edgeinfer.cli", "serve", "--repository", str(repo),
           "--host", HOST, "--http-port", str(http_port), "--grpc-port", str(grpc_port),
           "--max-request-bytes", str(MAX_BODY), "--log-level", "warning"]  # fmt: skip
    with log_path.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"http://{HOST}:{http_port}/v2/health/ready", timeout=2).is_success:
                return proc, http_port, grpc_port
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server not ready after 180 s:\n{log_path.read_text()}")


# ---- traffic ------------------------------------------------------------------------------------


def _x(batch: int) -> np.ndarray:
    return np.random.default_rng().standard_normal((batch, 16), dtype=np.float32)


async def mlp_json(c: httpx.AsyncClient) -> str:
    b = random.randint(1, 4)
    r = await c.post("/v2/models/mlp/infer", json={"inputs": [
        {"name": "x", "shape": [b, 16], "datatype": "FP32", "data": _x(b).ravel().tolist()}]})  # fmt: skip
    if (e := judge(r)) is not None:
        return e
    out = r.json()["outputs"][0]
    if out["shape"] != [b, 4] or len(out["data"]) != 4 * b:
        raise Broken(f"mlp reply for batch {b}: shape {out['shape']}, {len(out['data'])} values")
    return "ok"


async def mlp_binary(c: httpx.AsyncClient) -> str:
    b = random.randint(1, 8)
    head = json.dumps({"inputs": [{"name": "x", "shape": [b, 16], "datatype": "FP32",
                                   "parameters": {"binary_data_size": b * 64}}],
                       "parameters": {"binary_data_output": True}}).encode()  # fmt: skip
    r = await c.post("/v2/models/mlp/infer", content=head + _x(b).tobytes(),
                     headers={"Inference-Header-Content-Length": str(len(head)),
                              "Content-Type": "application/octet-stream"})  # fmt: skip
    if (e := judge(r)) is not None:
        return e
    n = int(r.headers["inference-header-content-length"])
    out = json.loads(r.content[:n])["outputs"][0]
    if out["parameters"]["binary_data_size"] != b * 16 or len(r.content) != n + b * 16:
        raise Broken(f"binary reply of {len(r.content)} bytes for batch {b}")
    return "ok"


async def ids_json(c: httpx.AsyncClient) -> str:
    b = random.randint(1, 3)
    s = [random.choice(["", "x", "héllo", "a" * 100]) for _ in range(b)]
    a = np.random.default_rng().integers(-(2**31), 2**31 - 1, (b, 3)).tolist()
    r = await c.post("/v2/models/ids/infer", json={"inputs": [
        {"name": "a", "shape": [b, 3], "datatype": "INT32", "data": a},
        {"name": "b", "shape": [b, 2], "datatype": "FP64", "data": [0.5] * (2 * b)},
        {"name": "s", "shape": [b], "datatype": "BYTES", "data": s}]})  # fmt: skip
    if (e := judge(r)) is not None:
        return e
    outs = {o["name"]: o["data"] for o in r.json()["outputs"]}
    if outs["s_out"] != s or outs["a_out"] != [v for row in a for v in row]:
        raise Broken("ids did not echo its inputs")
    return "ok"


def _adapter() -> str:
    return random.choice(list(LORA_ADAPTERS))


async def lora_http(c: httpx.AsyncClient, ref: LoraRef, adapter: str | None) -> str:
    model, b = random.choice(LORA_MODELS), random.randint(1, 4)
    x = _x(b)
    body: dict[str, Any] = {"inputs": [{"name": "x", "shape": [b, 16], "datatype": "FP32",
                                        "data": x.ravel().tolist()}]}  # fmt: skip
    if adapter:
        body["parameters"] = {"adapter": adapter}
    r = await c.post(f"/v2/models/{model}/infer", json=body)
    if (e := judge(r)) is not None:
        return e
    out = r.json()["outputs"][0]
    ref.check(model, adapter, x, np.array(out["data"], np.float32).reshape(out["shape"]))
    return "ok"


async def grpc_infer(g: Any, model: str, ref: LoraRef | None = None,
                     adapter: str | None = None) -> str:  # fmt: skip
    """`mlp`, `ids`, or with `ref` a LoRA model (with `adapter`, or the base model)."""
    import tritonclient.grpc as gc
    from tritonclient.utils import InferenceServerException

    b = random.randint(1, 4)
    x = _x(b)
    if model != "ids":
        inp = gc.InferInput("x", [b, 16], "FP32")
        inp.set_data_from_numpy(x)
        inputs = [inp]
    else:
        inputs = [gc.InferInput("a", [b, 3], "INT32"), gc.InferInput("b", [b, 2], "FP64"),
                  gc.InferInput("s", [b], "BYTES")]  # fmt: skip
        inputs[0].set_data_from_numpy(np.ones((b, 3), np.int32))
        inputs[1].set_data_from_numpy(np.ones((b, 2), np.float64))
        inputs[2].set_data_from_numpy(np.array([b"q"] * b, dtype=object))
    try:
        res = await g.infer(model, inputs, client_timeout=TIMEOUT,
                            parameters={"adapter": adapter} if adapter else None)  # fmt: skip
    except InferenceServerException as e:
        code = str(e.status()).removeprefix("StatusCode.")
        if code == "DEADLINE_EXCEEDED":  # our client_timeout: no reply in TIMEOUT seconds
            return "hang"
        if code in ("INTERNAL", "UNKNOWN", "UNAVAILABLE", "None"):  # HTTP's 500 and 503
            return f"5xx:{code}|{e.message()}"
        return f"error:{code}"
    out = res.as_numpy("s_out" if model == "ids" else "y")
    if out is None or out.shape[0] != b:
        raise Broken(f"gRPC {model} reply has no batch of {b}")
    if ref is not None:
        ref.check(model, adapter, x, out)
    return "ok"


async def embeddings(c: httpx.AsyncClient, model: str) -> str:
    texts = random.sample(["a cat", "the weather is nice", "édge ïnference", "x " * 300], 2)
    r = await c.post("/v1/embeddings", json={"model": model, "input": texts})
    if (e := judge(r, openai=True)) is not None:
        return e
    data = r.json()["data"]
    if len(data) != 2 or not all(len(d["embedding"]) > 0 for d in data):
        raise Broken("embeddings reply incomplete")
    return "ok"


async def demo_tensor(c: httpx.AsyncClient, model: str, spec: list[dict[str, Any]]) -> str:
    inputs = []
    for s in spec:
        shape = [1 if d < 0 else d for d in s["shape"]]
        n = int(np.prod(shape))
        data: list[Any] = ["soak"] * n if s["datatype"] == "BYTES" else [0] * n
        inputs.append({"name": s["name"], "shape": shape, "datatype": s["datatype"], "data": data})
    r = await c.post(f"/v2/models/{model}/infer", json={"inputs": inputs})
    if (e := judge(r)) is not None:
        return e
    if not r.json()["outputs"]:
        raise Broken(f"{model}: no outputs")
    return "ok"


# Malformed requests and the status each must get (an error body is checked by judge()).
_BAD_HEAD = json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                                    "parameters": {"binary_data_size": 64}}]}).encode()  # fmt: skip
MALFORMED: list[tuple[str, dict[str, Any], int]] = [
    ("/v2/models/mlp/infer", {"content": b"{not json"}, 400),
    ("/v2/models/mlp/infer", {"json": {"inputs": [{"name": "x", "shape": [1, 16],
                                                   "datatype": "INT8", "data": [1] * 16}]}}, 400),
    ("/v2/models/mlp/infer", {"json": {"inputs": [{"name": "x", "shape": [2**31, 2**31],
                                                   "datatype": "FP64", "data": [1]}]}}, 400),
    ("/v2/models/mlp/infer", {"content": _BAD_HEAD + b"\0" * 10,
                              "headers": {"Inference-Header-Content-Length": str(len(_BAD_HEAD))}}, 400),
    ("/v2/models/mlp/infer", {"content": b"\x1f\x8bgarbage",
                              "headers": {"Content-Encoding": "gzip"}}, 400),
    ("/v2/models/mlp/infer", {"content": b"0" * (MAX_BODY + 1)}, 413),
    ("/v2/models/nope/infer", {"json": {"inputs": [{"name": "x", "shape": [1],
                                                    "datatype": "FP32", "data": [1]}]}}, 404),
    ("/v2/models/ids/infer", {"json": {"inputs": [{"name": "s", "shape": [1], "datatype": "BYTES",
                                                   "data": [[[["deep"]]]]}], "id": 7}}, 400),
    ("/v1/embeddings", {"json": {"model": "mlp", "input": []}}, 400),
    ("/v2/repository/models/mlp/canary", {"json": {"version": "x"}}, 400),
    ("/v2/models/mlp-stacked/infer", {"json": {"inputs": [{"name": "x", "shape": [1, 16],
                                                         "datatype": "FP32", "data": [0] * 16}],
                                               "parameters": {"adapter": "nope"}}}, 404),
]  # fmt: skip


async def malformed(c: httpx.AsyncClient) -> str:
    path, kwargs, want = random.choice(MALFORMED)
    r = await c.post(path, **kwargs)
    outcome = judge(r, openai=path.startswith("/v1/"))
    if outcome is None or (not outcome.startswith("5xx") and r.status_code != want):
        raise Broken(f"malformed POST {path} answered {r.status_code} (want {want})")
    return outcome


async def raw_exchange(port: int, payload: bytes, read: bool) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(payload)
        await writer.drain()
        return await reader.read(-1) if read else b""
    finally:
        writer.close()
        await writer.wait_closed()


def _http(
    method: str, path: str, body: bytes = b"", close: bool = False, length: int = -1
) -> bytes:
    n = len(body) if length < 0 else length
    head = (f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {n}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n")  # fmt: skip
    return head.encode() + body


def _mlp_body(b: int) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "shape": [b, 16], "datatype": "FP32",
                                   "data": [0.1] * (16 * b)}]}).encode()  # fmt: skip


async def disconnect(c: httpx.AsyncClient, port: int) -> str:
    """Leave mid-body, right after sending, or while waiting (httpx timeout)."""
    style = random.randrange(3)
    if style == 0:
        body = _mlp_body(8)
        await raw_exchange(port, _http("POST", "/v2/models/mlp/infer", body[: len(body) // 2],
                                       length=len(body)), read=False)  # fmt: skip
    elif style == 1:
        await raw_exchange(port, _http("POST", "/v2/models/mlp/infer", _mlp_body(8)), read=False)
    else:
        with contextlib.suppress(httpx.TimeoutException):
            await c.post("/v2/models/mlp/infer", content=_mlp_body(8),
                         timeout=httpx.Timeout(TIMEOUT, read=0.0005))  # fmt: skip
    return "aborted"


async def pipelined(port: int) -> str:
    """Three requests on one connection: exactly three complete responses, in order."""
    payload = (_http("GET", "/v2/health/live") + _http("POST", "/v2/models/mlp/infer", _mlp_body(1))
               + _http("GET", "/v2", close=True))  # fmt: skip
    data = await raw_exchange(port, payload, read=True)
    codes: list[int] = []
    rest = data
    for _ in range(3):
        head, sep, rest = rest.partition(b"\r\n\r\n")
        if not sep or not head.startswith(b"HTTP/1.1 "):
            raise Broken(f"pipelined: {len(codes)} responses then {head[:60]!r}")
        codes.append(int(head[9:12]))
        length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n")
                       if h.lower().startswith(b"content-length:")), 0)  # fmt: skip
        if len(rest) < length:
            raise Broken("pipelined: a body was cut short")
        rest = rest[length:]
    if rest or codes != [200, 200, 200]:
        raise Broken(f"pipelined: codes {codes}, {len(rest)} stray bytes")
    return "ok"


async def chat(url: str, model: str) -> str:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0,
                                timeout=LLM_TIMEOUT)  # fmt: skip
    leave_after = random.choice([None, None, 1, 3])  # sometimes walk away mid-stream
    try:
        stream = await client.chat.completions.create(
            model=model, stream=True, max_tokens=random.randint(4, 24),
            messages=[{"role": "user", "content": random.choice(["Hi", "Count to five."])}])  # fmt: skip
        chunks, finished = 0, False
        async for chunk in stream:
            chunks += 1
            if chunk.choices and chunk.choices[0].finish_reason:
                finished = True
            if leave_after is not None and chunks >= leave_after:
                await stream.close()
                return "aborted"
        if not finished:
            raise Broken(f"stream ended after {chunks} chunks without a finish_reason")
        return "ok"
    except openai.APIStatusError as e:
        return (
            f"5xx:{e.status_code}|{e.message}" if e.status_code >= 500 else f"error:{e.status_code}"
        )
    finally:
        await client.close()


# ---- the run -----------------------------------------------------------------------------------


class Soak:
    def __init__(self, opts: argparse.Namespace, repo: Path, build: Path, proc: Any,
                 http_port: int, grpc_port: int, demo_models: list[str],
                 lora: LoraRef) -> None:  # fmt: skip
        self.opts, self.repo, self.build, self.proc = opts, repo, build, proc
        self.http_port, self.grpc_port, self.demo_models = http_port, grpc_port, demo_models
        self.lora = lora
        self.url = f"http://{HOST}:{http_port}"
        self.tally = Tally()
        self.samples: list[dict[str, float]] = []
        self.reloads: list[dict[str, Any]] = []
        self.end = self.tally.t0 + opts.minutes * 60

    def running(self) -> bool:
        return time.monotonic() < self.end

    async def loop(
        self, kind: str, make: Any, pause: float = 0.0, timeout: float = TIMEOUT
    ) -> None:
        await self.mix([(kind, make)], pause, timeout)

    async def mix(
        self, choices: list[tuple[str, Any]], pause: float = 0.0, timeout: float = TIMEOUT
    ) -> None:
        """One worker: each call one of `choices` (kind, make) at random, tallied as its kind."""
        while self.running():
            kind, make = random.choice(choices)
            await call(self.tally, kind, make(), timeout)
            await asyncio.sleep(random.uniform(0, 2 * pause) if pause else 0)

    async def sampler(self) -> None:
        pid = self.proc.pid
        while self.running() and self.proc.poll() is None:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                fds = len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:  # it exited between poll() and the read
                return
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            self.samples.append({
                "t": round(time.monotonic() - self.tally.t0, 1),
                "rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
                "threads": int(fields["Threads"]), "fds": fds,
                "load1": os.getloadavg()[0]})  # fmt: skip
            await asyncio.sleep(self.opts.sample_every)

    async def reloader(self, c: httpx.AsyncClient) -> None:
        from edgeinfer.repository import add_version
        from edgeinfer.testing import models

        while True:
            await asyncio.sleep(min(self.opts.reload_every, max(0.0, self.end - time.monotonic())))
            if time.monotonic() > self.end - 20:  # leave time for it to go live
                return
            start = time.monotonic()
            seed = len(self.reloads) + 2
            onnx = models.mlp(self.build / f"mlp{seed}.onnx", seed=seed)
            version = int(add_version(self.repo / "mlp", {"model.onnx": onnx}).name)
            entry: dict[str, Any] = {"t": round(start - self.tally.t0, 1), "version": version}
            outcome = await call(self.tally, "reload", self._load_and_wait(c, version), 90)
            entry.update(outcome=outcome, seconds=round(time.monotonic() - start, 2))
            self.reloads.append(entry)
            log(f"reload to mlp v{version}: {outcome} in {entry['seconds']} s")

    async def _load_and_wait(self, c: httpx.AsyncClient, version: int) -> str:
        r = await c.post("/v2/repository/models/mlp/load", timeout=90)
        if (e := judge(r)) is not None:
            return e
        while True:
            status = (await c.get("/v2/repository/models/mlp/status")).json()
            if status["live"] == str(version):
                return "ok"
            await asyncio.sleep(0.2)

    async def llm_models(self, c: httpx.AsyncClient) -> dict[str, list[str]]:
        """The llama.cpp models served, each with its adapters (`model:adapter`)."""
        listing = (await c.get("/v1/models")).json()["data"]
        out = {}
        for name in sorted(m["id"] for m in listing if "parent" not in m):
            cfg = self.repo / name / "config.toml"
            if cfg.is_file() and tomllib.loads(cfg.read_text()).get("backend") == "llama.cpp":
                out[name] = sorted(m["id"] for m in listing if m.get("parent") == name)
        return out

    async def run(self) -> None:
        import tritonclient.grpc.aio as grpc_aio

        limits = httpx.Limits(max_connections=32, max_keepalive_connections=16)
        async with httpx.AsyncClient(base_url=self.url, timeout=TIMEOUT, limits=limits) as c:
            g = grpc_aio.InferenceServerClient(f"{HOST}:{self.grpc_port}")
            p = self.opts.pause
            tasks = [self.loop("http_mlp_json", lambda: mlp_json(c), p),
                     self.loop("http_mlp_json", lambda: mlp_json(c), p),
                     self.loop("http_mlp_binary", lambda: mlp_binary(c), p),
                     self.loop("http_ids_json", lambda: ids_json(c), p),
                     self.loop("grpc_mlp", lambda: grpc_infer(g, "mlp"), p),
                     self.loop("grpc_ids", lambda: grpc_infer(g, "ids"), p),
                     self.mix([("http_lora", lambda: lora_http(c, self.lora, None)),
                               ("http_lora_adapter",
                                lambda: lora_http(c, self.lora, _adapter()))], p),
                     self.mix([("grpc_lora", lambda: grpc_infer(g, random.choice(LORA_MODELS),
                                                                self.lora)),
                               ("grpc_lora_adapter",
                                lambda: grpc_infer(g, random.choice(LORA_MODELS), self.lora,
                                                   _adapter()))], p),
                     self.loop("malformed", lambda: malformed(c), 0.2),
                     self.loop("disconnect", lambda: disconnect(c, self.http_port), 0.5),
                     self.loop("pipelined", lambda: pipelined(self.http_port), 1.0),
                     self.loop("control", lambda: self._control(c), 1.0),
                     self.sampler(), self.reloader(c)]  # fmt: skip
            if self.opts.adversarial:
                tasks += self._adversarial(c)
            llms = await self.llm_models(c)
            for name in self.demo_models:
                if name in llms:
                    continue
                md = (await c.get(f"/v2/models/{name}")).json()
                if len(md.get("inputs", [])) == 1 and md["inputs"][0]["datatype"] == "BYTES":
                    tasks.append(self.loop("embeddings", lambda n=name: embeddings(c, n), p))
                elif "inputs" in md:
                    tasks.append(self.loop("demo_tensor", lambda n=name, s=md["inputs"]:
                                           demo_tensor(c, n, s), p))  # fmt: skip
            for name, adapters in llms.items():
                choices = [("llm_chat", lambda n=name: chat(self.url, n))]
                if adapters:  # base model and adapters in turn: the engine switches adapters
                    choices.append(("llm_chat_adapter",
                                    lambda a=adapters: chat(self.url, random.choice(a))))  # fmt: skip
                tasks.append(self.mix(choices, 0.5, timeout=LLM_TIMEOUT))
            log(f"traffic on mlp, ids, {', '.join(LORA_MODELS)} (adapters "
                f"{', '.join(LORA_ADAPTERS)}), {self.demo_models or 'no demo models'}; "
                f"LLM: {llms or 'none served'}")  # fmt: skip
            try:
                await asyncio.gather(*tasks)
            finally:
                await g.close()

    def _adversarial(self, c: httpx.AsyncClient) -> list[Any]:
        """--adversarial: the adversarial test's reproductions among the traffic, and health
        polled every 0.1 s (its latency is reported like any other kind's)."""
        from _adversarial import Adversary

        from edgeinfer.testing.adversarial import Target

        text = "minilm" if "minilm" in self.demo_models else "ids"
        adv = Adversary(Target("mlp", "x", (16,), text, "text"), f"{HOST}:{self.grpc_port}")
        return [self.loop("adversarial_http", lambda: adv.http_case(c, Broken), 0.1),
                self.loop("adversarial_grpc", lambda: adv.grpc_case(Broken), 0.2),
                self.loop("health", lambda: self._health(c), 0.1)]  # fmt: skip

    async def _health(self, c: httpx.AsyncClient) -> str:
        r = await c.get("/v2/health/ready")
        return "ok" if r.status_code == 200 else f"5xx:{r.status_code}|not ready"

    async def _control(self, c: httpx.AsyncClient) -> str:
        path = random.choice(["/v2/health/ready", "/v2/models/mlp/stats", "/metrics", "/v2",
                              "/v2/models/ids/config", "/openapi.json"])  # fmt: skip
        r = await c.get(path)
        if (e := judge(r)) is not None:
            return e
        return "ok"


# ---- the report --------------------------------------------------------------------------------


def _p(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 2)


def report(soak: Soak, log_text: str, alive: bool, exit_code: int | None) -> dict[str, Any]:
    total = soak.opts.minutes * 60
    warmup = min(300.0, max(30.0, 0.1 * total))
    width = max(30.0, (total - warmup) / 10)
    intervals = []
    start = warmup
    kinds = sorted({k for _, k, _ in soak.tally.latencies} - {"reload"})
    while start + width <= total + 1e-6:
        row: dict[str, Any] = {"from_s": start, "to_s": start + width}
        for kind in kinds:
            lat = [
                s for t, k, s in soak.tally.latencies if k == kind and start <= t < start + width
            ]
            row[kind] = {"ok": len(lat), "p50_ms": _p(lat, 0.5), "p99_ms": _p(lat, 0.99)}
        intervals.append(row)
        start += width
    resources: dict[str, Any] = {}
    first = [s for s in soak.samples if warmup <= s["t"] < warmup + width]
    last = [s for s in soak.samples if s["t"] >= total - width]
    # Absolute noise: RSS moves by +-20 MB from one 5-s sample to the next (allocator arenas,
    # the LLM KV cache, batch-shaped ORT buffers), which a 3-minute run cannot average away;
    # fds and threads are small counts.
    slack = {"rss_mb": 32.0, "fds": 4, "threads": 2}
    for key in ("rss_mb", "fds", "threads"):
        if not first or not last:
            continue
        a, b = statistics.median(s[key] for s in first), statistics.median(s[key] for s in last)
        resources[key] = {"after_warmup": a, "end": b, "max": max(s[key] for s in soak.samples),
                          "growth": round((b - a) / a, 4) if a else None,
                          "flat": b <= a * 1.10 + slack[key]}  # fmt: skip
    by_kind: dict[str, dict[str, int]] = {}
    for (kind, outcome), n in sorted(soak.tally.outcomes.items()):
        by_kind.setdefault(kind, {})[outcome] = n
    failures = sum(n for (_, o), n in soak.tally.outcomes.items() if Tally.is_failure(o))
    fivexx = {f"{k}:{o}": n for (k, o), n in soak.tally.outcomes.items() if o.startswith("5xx")}
    tracebacks = log_text.count("Traceback")
    drift = {}  # p99 of the last interval over the first, per kind of request
    for kind in kinds:
        first_p99, last_p99 = (
            (intervals[0][kind]["p99_ms"], intervals[-1][kind]["p99_ms"])
            if intervals
            else (None, None)
        )
        drift[kind] = round(last_p99 / first_p99, 2) if first_p99 and last_p99 else None
    invariants = {
        "no_5xx": not fivexx,
        "no_hang_or_broken_reply": failures - sum(fivexx.values()) == 0,
        "every_reload_went_live": all(r["outcome"] == "ok" for r in soak.reloads)
        and bool(soak.reloads or total < soak.opts.reload_every + 20),  # none were due
        "resources_flat": bool(resources) and all(v["flat"] for v in resources.values()),
        "server_survived": alive,
        "clean_shutdown": exit_code in (0, -signal.SIGTERM),  # uvicorn re-raises SIGTERM
        "no_traceback_in_log": tracebacks == 0,
    }  # fmt: skip
    loads = [s["load1"] for s in soak.samples]
    return {
        "minutes": soak.opts.minutes, "warmup_s": warmup, "interval_s": width,
        "requests_total": sum(soak.tally.outcomes.values()), "requests": by_kind,
        "failures": failures, "five_xx": fivexx, "first_failures": soak.tally.failures,
        "latency_intervals": intervals,
        "p99_drift": drift,
        "resources": resources, "reloads": soak.reloads, "server_exit_code": exit_code,
        "log_tracebacks": tracebacks,
        "load_avg": {"min": min(loads, default=None), "mean":
                     round(statistics.fmean(loads), 2) if loads else None,
                     "max": max(loads, default=None)},
        "cpus": os.cpu_count(), "invariants": invariants, "passed": all(invariants.values()),
        "samples": soak.samples[:: max(1, len(soak.samples) // 120)],
    }  # fmt: skip


def stop(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None
    return proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--demo", default="auto",
                    help="demo repository to serve as well: a path, 'auto' (the built demo in "
                         "~/.cache/edgeinfer/demo if complete) or 'none'")  # fmt: skip
    ap.add_argument("--reload-every", type=float, default=60.0, help="seconds between reloads")
    ap.add_argument("--sample-every", type=float, default=5.0, help="seconds between /proc reads")
    ap.add_argument("--pause", type=float, default=0.01, help="mean think time per worker (s)")
    ap.add_argument("--out", type=Path, help="default bench/results/soak-<minutes>m.json")
    ap.add_argument("--adversarial", action="store_true",
                    help="also send the adversarial test's reproductions (bench/_adversarial.py) "
                         "and poll health every 0.1 s")  # fmt: skip
    opts = ap.parse_args()
    demo: Path | None = None
    if opts.demo != "none":
        from edgeinfer.demo import demo_home, is_complete

        demo = demo_home() if opts.demo == "auto" else Path(opts.demo)
        demo = demo if is_complete(demo) else None
    suffix = "-adversarial" if opts.adversarial else ""
    out = opts.out or RESULTS / f"soak-{opts.minutes:g}m{suffix}.json"
    # SIGTERM (and SIGINT, which a background job ignores) unwinds through `finally`: the
    # server subprocess is stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="edgeinfer-soak.") as d:
        tmp = Path(d)
        demo_models = build_repository(tmp / "repo", tmp / "build", demo)
        lora = build_lora_models(tmp / "repo", tmp / "build")
        proc, http_port, grpc_port = start_server(tmp / "repo", tmp / "server.log")
        log(f"server pid {proc.pid} on :{http_port} / grpc :{grpc_port}; {opts.minutes:g} min")
        soak = Soak(opts, tmp / "repo", tmp / "build", proc, http_port, grpc_port, demo_models,
                    lora)  # fmt: skip
        try:
            asyncio.run(soak.run())
        finally:
            alive = proc.poll() is None
            code = stop(proc)
        doc = report(soak, (tmp / "server.log").read_text(errors="replace"), alive, code)
        if not doc["passed"]:
            print((tmp / "server.log").read_text(errors="replace")[-4000:], file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    summary = {k: doc[k] for k in ("requests_total", "failures", "five_xx", "p99_drift",
                                   "resources", "load_avg", "invariants")}  # fmt: skip
    print(json.dumps(summary, indent=1))
    log(f"{'PASSED' if doc['passed'] else 'FAILED'}; wrote {out}")
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""OpenTelemetry tracing: the span tree of batched requests, W3C traceparent over HTTP and gRPC,
the OTLP exporter behind --otlp-endpoint, and no opentelemetry import when tracing is off.

The span-tree tests run the Engine and the Starlette app in this process (httpx's ASGITransport;
gRPC on a loopback port in the same event loop) so spans land in an InMemorySpanExporter. The
--otlp-endpoint test runs the real server process against a tiny OTLP/HTTP receiver.
"""

from __future__ import annotations

import asyncio
import http.server
import subprocess
import sys
import textwrap
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from edgeinfer.config import ServerSettings
from edgeinfer.lifecycle import Engine
from edgeinfer.repository import Repository, add_version
from edgeinfer.server.app import build_app
from edgeinfer.telemetry.tracing import Tracer
from edgeinfer.testing import models
from tests.helpers import free_port, serve, wait_until

BATCHED = "mlp_batched"  # dynamic batching: four requests make one run
PLAIN = "mlp_plain"  # no batching: a single request runs at once
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
HTTP_SPAN = "POST /v2/models/{model}/infer"
GRPC_SPAN = "inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trace-repo")
    onnx = models.mlp(tmp_path_factory.mktemp("trace-build") / "mlp.onnx")
    models.publish(root, BATCHED, onnx, "max_batch_size = 8\n[dynamic_batching]\n"
                   "preferred_batch_sizes = [4]\nmax_queue_delay_us = 2000000\n")  # fmt: skip
    models.publish(root, PLAIN, onnx, "max_batch_size = 8\n")
    return root


def _body(rows: int = 1, seed: int = 0) -> dict[str, Any]:
    x = np.random.default_rng(seed).standard_normal((rows, 16)).astype(np.float32)
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 16],
                        "data": x.ravel().tolist()}]}  # fmt: skip


def _run_with_engine(repo: Path, work: Callable[[Engine], Awaitable[None]],
                     grpc_port: int = 0) -> list[ReadableSpan]:  # fmt: skip
    """Start an Engine with an in-memory span exporter, run `work`, return the finished spans."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = ServerSettings(repository=repo, grpc_port=grpc_port)

    async def main() -> None:
        engine = Engine(Repository(repo), settings, Tracer(provider))
        await engine.start()
        try:
            await work(engine)
        finally:
            await engine.close()

    asyncio.run(main())
    provider.shutdown()
    return list(exporter.get_finished_spans())


def _client(engine: Engine, repo: Path) -> httpx.AsyncClient:
    app = build_app(engine, ServerSettings(repository=repo))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edgeinfer")


def _children(spans: list[ReadableSpan], parent: ReadableSpan) -> dict[str, ReadableSpan]:
    assert parent.context is not None
    out = {}
    for s in spans:
        if s.parent is not None and s.parent.span_id == parent.context.span_id:
            assert s.name not in out, f"two {s.name} spans under one request"
            out[s.name] = s
    return out


def test_batch_of_four_makes_one_linked_batch_span(repo: Path) -> None:
    async def work(engine: Engine) -> None:
        async with _client(engine, repo) as client:
            url = f"/v2/models/{BATCHED}/infer"
            replies = await asyncio.gather(
                *(client.post(url, json=_body(seed=i)) for i in range(4))
            )
        assert [r.status_code for r in replies] == [200] * 4, [r.text for r in replies]
        stats = engine.statistics(BATCHED)[0]
        assert stats["execution_count"] == 1, "the four requests should share one model run"

    spans = _run_with_engine(repo, work)
    servers = [s for s in spans if s.name == HTTP_SPAN]
    batches = [s for s in spans if s.name == "batch execute"]
    assert len(servers) == 4 and len(batches) == 1, sorted(s.name for s in spans)
    batch = batches[0]
    assert batch.attributes is not None and batch.attributes["edgeinfer.batch.size"] == 4
    assert batch.attributes["edgeinfer.batch.requests"] == 4
    assert batch.attributes["edgeinfer.model"] == BATCHED
    # The run is linked to every request it served, and is a child of one of them.
    server_ids = {s.context.span_id for s in servers if s.context is not None}
    assert {link.context.span_id for link in batch.links} == server_ids
    assert batch.parent is not None and batch.parent.span_id in server_ids
    for server in servers:
        assert server.kind == SpanKind.SERVER
        assert server.parent is None  # no traceparent was sent: each request is a new trace
        assert server.attributes is not None
        assert server.attributes["http.response.status_code"] == 200
        assert server.attributes["edgeinfer.model.version"] == "1"
        kids = _children(spans, server)
        assert {"queue", "encode"} <= set(kids), sorted(kids)
        queue, encode = kids["queue"], kids["encode"]
        assert server.context is not None and queue.context is not None
        assert queue.context.trace_id == server.context.trace_id
        # server ⊇ queue → batch execute → encode, in time.
        times = [server.start_time, queue.start_time, queue.end_time, batch.start_time,
                 batch.end_time, encode.start_time, encode.end_time, server.end_time]  # fmt: skip
        assert all(t is not None for t in times)
        assert times == sorted(times), times  # type: ignore[type-var]
    # The requests waited for the batch to fill: the first one queued longest.
    queued = sorted((s.end_time or 0) - (s.start_time or 0) for s in spans if s.name == "queue")
    assert queued[-1] > queued[0]


def test_http_traceparent_becomes_the_parent(repo: Path) -> None:
    async def work(engine: Engine) -> None:
        async with _client(engine, repo) as client:
            r = await client.post(f"/v2/models/{PLAIN}/infer", json=_body(),
                                  headers={"traceparent": TRACEPARENT})  # fmt: skip
            assert r.status_code == 200, r.text
            bad = await client.post(f"/v2/models/{PLAIN}/infer", json={"inputs": []},
                                    headers={"traceparent": TRACEPARENT})  # fmt: skip
            assert bad.status_code == 400

    spans = _run_with_engine(repo, work)
    servers = [s for s in spans if s.name == HTTP_SPAN]
    assert len(servers) == 2
    for server in servers:
        assert server.context is not None and server.parent is not None
        assert f"{server.context.trace_id:032x}" == TRACE_ID
        assert f"{server.parent.span_id:016x}" == PARENT_ID
        assert server.parent.is_remote
    ok = next(
        s for s in servers if s.attributes and s.attributes["http.response.status_code"] == 200
    )
    batch = next(s for s in spans if s.name == "batch execute")
    assert ok.context is not None and batch.parent is not None
    assert batch.parent.span_id == ok.context.span_id
    assert batch.context is not None and f"{batch.context.trace_id:032x}" == TRACE_ID
    failed = next(s for s in servers if s is not ok)
    assert failed.attributes is not None and failed.attributes["error.type"] == "InvalidInput"


def test_grpc_traceparent_becomes_the_parent(repo: Path) -> None:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    from edgeinfer.server.kserve_grpc import start_grpc

    port = free_port()

    async def work(engine: Engine) -> None:
        server = await start_grpc(engine, ServerSettings(repository=repo, grpc_port=port))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                req = service_pb2.ModelInferRequest(model_name=PLAIN)
                req.inputs.add(name="x", datatype="FP32", shape=[1, 16])
                req.raw_input_contents.append(np.zeros((1, 16), np.float32).tobytes())
                reply = await stub.ModelInfer(req, metadata=(("traceparent", TRACEPARENT),))
                assert reply.outputs[0].name == "y"
        finally:
            await server.stop(grace=1)

    spans = _run_with_engine(repo, work, grpc_port=port)
    server_span = next(s for s in spans if s.name == GRPC_SPAN)
    assert server_span.kind == SpanKind.SERVER
    assert server_span.context is not None and server_span.parent is not None
    assert f"{server_span.context.trace_id:032x}" == TRACE_ID
    assert f"{server_span.parent.span_id:016x}" == PARENT_ID
    assert {"queue", "encode"} <= set(_children(spans, server_span))
    batch = next(s for s in spans if s.name == "batch execute")
    assert [link.context.span_id for link in batch.links] == [server_span.context.span_id]


def test_tracing_off_imports_no_opentelemetry(repo: Path) -> None:
    """Without --otlp-endpoint a request goes through HTTP and the scheduler without importing
    opentelemetry (run in a fresh interpreter: this test process has imported it)."""
    script = textwrap.dedent(f"""
        import asyncio, sys
        import httpx
        from pathlib import Path
        from edgeinfer.config import ServerSettings
        from edgeinfer.lifecycle import Engine
        from edgeinfer.repository import Repository
        from edgeinfer.server.app import build_app
        from edgeinfer.telemetry.tracing import from_endpoint

        async def main():
            settings = ServerSettings(repository=Path({str(repo)!r}))
            engine = Engine(Repository(settings.repository), settings, from_endpoint(""))
            await engine.start()
            app = build_app(engine, settings)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://e") as client:
                body = {{"inputs": [{{"name": "x", "datatype": "FP32", "shape": [1, 16],
                                     "data": [0.0] * 16}}]}}
                r = await client.post("/v2/models/{PLAIN}/infer", json=body)
                assert r.status_code == 200, r.text
            await engine.close()
            assert engine.tracer is None
            print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))

        asyncio.run(main())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ---- the real server with --otlp-endpoint ---------------------------------------------------
class _Receiver(http.server.BaseHTTPRequestHandler):
    """A minimal OTLP/HTTP trace receiver: keeps every exported span."""

    spans: list[Any] = []
    paths: list[str] = []

    def do_POST(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        body = self.rfile.read(int(self.headers["Content-Length"]))
        msg = ExportTraceServiceRequest()
        msg.ParseFromString(body)
        type(self).paths.append(self.path)
        for rs in msg.resource_spans:
            for ss in rs.scope_spans:
                type(self).spans.extend(ss.spans)
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    _Receiver.spans, _Receiver.paths = [], []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_otlp_endpoint_exports_spans(repo: Path, receiver: str, tmp_path: Path) -> None:
    every_100ms = {"OTEL_BSP_SCHEDULE_DELAY": "100"}  # export every 100 ms, not 5 s

    def names() -> set[str]:
        return {s.name for s in _Receiver.spans if s.trace_id.hex() == TRACE_ID}

    with serve(repo, tmp_path / "server.log", "--otlp-endpoint", receiver,
               env=every_100ms) as server:  # fmt: skip
        r = httpx.post(f"{server.url}/v2/models/{PLAIN}/infer", json=_body(),
                       headers={"traceparent": TRACEPARENT}, timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text
        wait_until(lambda: len(names()) >= 4, 30,
                   lambda: f"four spans (have {names()}); log:\n{server.log()}", 0.1)  # fmt: skip
    assert names() == {HTTP_SPAN, "queue", "batch execute", "encode"}, server.log()
    assert set(_Receiver.paths) == {"/v1/traces"}
    root = next(s for s in _Receiver.spans if s.name == HTTP_SPAN)
    assert root.parent_span_id.hex() == PARENT_ID


def test_openai_llm_routes_are_traced(tmp_path: Path) -> None:
    from edgeinfer.runtime.gguf_writer import build_gguf

    repo = tmp_path / "repo"
    (repo / "llm").mkdir(parents=True)
    build_gguf(tmp_path / "tiny.gguf", "tiny", "f32", seed=0)
    (repo / "llm" / "config.toml").write_text(
        'backend = "llama.cpp"\n[llm]\ncontext_length = 256\nslots = 1\n'
    )
    add_version(repo / "llm", {"model.gguf": tmp_path / "tiny.gguf"})

    async def work(engine: Engine) -> None:
        async with _client(engine, repo) as client:
            body = {"model": "llm", "prompt": "hello", "max_tokens": 2, "temperature": 0}
            r = await client.post(
                "/v1/completions", json=body, headers={"traceparent": TRACEPARENT}
            )
            assert r.status_code == 200, r.text
            chat = {
                "model": "llm",
                "max_tokens": 2,
                "messages": [{"role": "user", "content": "hi"}],
            }
            r = await client.post("/v1/chat/completions", json=chat)
            assert r.status_code == 200, r.text

    spans = _run_with_engine(repo, work)
    completion = next(s for s in spans if s.name == "POST /v1/completions")
    assert completion.parent is not None and f"{completion.parent.span_id:016x}" == PARENT_ID
    assert completion.attributes is not None
    assert completion.attributes["http.response.status_code"] == 200
    assert any(s.name == "POST /v1/chat/completions" for s in spans)

"""A refused request frees its memory at once, not at the next full garbage collection.

Under overload most requests are refused (400, 429, 504). When the error's traceback held a frame
that held the task or future that held the error, every refused request, with its decoded input
(for an image model, the ~600 KB body), became cyclic garbage; the server freezes its start-up
heap and collects the oldest generation rarely, so RSS climbed for as long as the overload lasted
(bench/batching.py, 20 s at 4x capacity: +10 %). The app runs in this process here, behind
httpx's ASGI transport (and the gRPC server on a local port, with an asyncio gRPC client), so the
test can ask the cycle collector what it would have to free.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import grpc
import httpx
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from edgeinfer.config import ServerSettings
from edgeinfer.lifecycle import Engine
from edgeinfer.repository import Repository
from edgeinfer.server.app import build_app
from edgeinfer.server.kserve_grpc import start_grpc
from edgeinfer.testing import models
from tests.conftest import infer_body
from tests.helpers import free_port

# A batch waits up to 2 s for company: a lone request with a 50 ms timeout expires in the queue.
CONFIG = """backend = "onnxruntime"
max_batch_size = 8

[dynamic_batching]
max_queue_delay_us = 2000000
"""


def _cycles() -> list[str]:
    """Collect with DEBUG_SAVEALL: our objects, requests and our frames the collector found."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return sorted({
            f"{type(o).__module__}.{type(o).__qualname__}" if type(o).__name__ != "frame"
            else f"frame {o.f_code.co_name}" for o in gc.garbage
            if type(o).__module__.startswith("edgeinfer") or type(o).__name__ == "ModelInferRequest"
            or (type(o).__name__ == "frame" and "edgeinfer" in o.f_code.co_filename)
        })  # fmt: skip
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def _grpc_status(stub: service_pb2_grpc.GRPCInferenceServiceStub, n_in: int,
                       timeout_us: int) -> grpc.StatusCode:  # fmt: skip
    x = np.ones((1, n_in), np.float32)
    req = service_pb2.ModelInferRequest(model_name="mlp", raw_input_contents=[x.tobytes()])
    req.inputs.add(name="x", datatype="FP32", shape=[1, n_in])
    if timeout_us:
        req.parameters["timeout"].int64_param = timeout_us
    try:
        await stub.ModelInfer(req)
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


async def _refusals_leave_no_cycles(repo: Path) -> None:
    settings = ServerSettings(grpc_port=free_port())
    engine = Engine(Repository(repo), settings)
    await engine.start()
    grpc_server = await start_grpc(engine, settings)
    try:
        transport = httpx.ASGITransport(app=build_app(engine, settings))
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://edge") as client,
            grpc.aio.insecure_channel(f"127.0.0.1:{settings.grpc_port}") as channel,
        ):
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            url = "/v2/models/mlp/infer"
            # Served requests first: whatever is created once per process exists now.
            assert (
                await client.post(
                    url, json=infer_body(np.ones((1, 16), np.float32), timeout=5_000_000)
                )
            ).status_code == 200
            assert await _grpc_status(stub, 16, 5_000_000) == grpc.StatusCode.OK
            gc.collect()
            gc.disable()
            try:
                bad = await client.post(url, json=infer_body(np.ones((1, 3), np.float32)))
                late = await client.post(
                    url, json=infer_body(np.ones((1, 16), np.float32), timeout=50_000)
                )
                assert bad.status_code == 400, bad.text
                assert late.status_code == 504 and "timed out" in late.json()["error"], late.text
                http_cycles = _cycles()
                assert await _grpc_status(stub, 3, 0) == grpc.StatusCode.INVALID_ARGUMENT
                assert await _grpc_status(stub, 16, 50_000) == grpc.StatusCode.DEADLINE_EXCEEDED
                grpc_cycles = _cycles()
            finally:
                gc.enable()
            assert not http_cycles, f"refused HTTP requests left cycles: {http_cycles}"
            assert not grpc_cycles, f"refused gRPC requests left cycles: {grpc_cycles}"
    finally:
        await grpc_server.stop(None)
        await engine.close()


def test_refused_requests_leave_no_cyclic_garbage(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    models.publish(repo, "mlp", models.mlp(tmp_path / "mlp.onnx"), CONFIG)
    asyncio.run(_refusals_leave_no_cycles(repo))

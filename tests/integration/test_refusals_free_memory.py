"""A refused request frees its memory at once, not at the next full garbage collection.

Under overload most requests are refused (400, 429, 504). When the error's traceback held a frame
that held the task or future that held the error, every refused request, with its decoded input
(for an image model, the ~600 KB body), became cyclic garbage; the server freezes its start-up
heap and collects the oldest generation rarely, so RSS climbed for as long as the overload lasted
(bench/batching.py, 20 s at 4x capacity: +10 %). The app runs in this process here, behind
httpx's ASGI transport, so the test can ask the cycle collector what it would have to free.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import httpx
import numpy as np

from edgeinfer.config import ServerSettings
from edgeinfer.lifecycle import Engine
from edgeinfer.repository import Repository
from edgeinfer.server.app import build_app
from edgeinfer.testing import models

# A batch waits up to 2 s for company: a lone request with a 50 ms timeout expires in the queue.
CONFIG = """backend = "onnxruntime"
max_batch_size = 8

[dynamic_batching]
max_queue_delay_us = 2000000
"""


def _doc(rows: int, n_in: int = 16, timeout_us: int = 0) -> dict[str, object]:
    x = np.ones((rows, n_in), np.float32)
    tensor = {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
    doc: dict[str, object] = {"inputs": [tensor]}
    if timeout_us:
        doc["parameters"] = {"timeout": timeout_us}
    return doc


async def _refusals_leave_no_cycles(repo: Path) -> None:
    settings = ServerSettings()
    engine = Engine(Repository(repo), settings)
    await engine.start()
    try:
        transport = httpx.ASGITransport(app=build_app(engine, settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            url = "/v2/models/mlp/infer"
            # A served request first: whatever is created once per process exists now.
            assert (await client.post(url, json=_doc(1, timeout_us=5_000_000))).status_code == 200
            gc.collect()
            gc.disable()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                bad = await client.post(url, json=_doc(1, n_in=3))
                late = await client.post(url, json=_doc(1, timeout_us=50_000))
                assert bad.status_code == 400, bad.text
                assert late.status_code == 504 and "timed out" in late.json()["error"], late.text
                gc.collect()
                ours = sorted({f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage
                               if type(o).__module__.startswith("edgeinfer")})  # fmt: skip
                frames = sorted({o.f_code.co_name for o in gc.garbage
                                 if type(o).__name__ == "frame"
                                 and "edgeinfer" in o.f_code.co_filename})  # fmt: skip
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
                gc.enable()
            assert not ours and not frames, f"refused requests left cycles: {ours} {frames}"
    finally:
        await engine.close()


def test_refused_requests_leave_no_cyclic_garbage(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    models.publish(repo, "mlp", models.mlp(tmp_path / "mlp.onnx"), CONFIG)
    asyncio.run(_refusals_leave_no_cycles(repo))

"""Dynamic batching, bounded queues, deadlines, priorities and cancellation on a real server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from edgeinfer.testing import models
from tests.conftest import infer_body
from tests.helpers import ServerProcess, metric, samples, serve, wait_until

SLOW_QUEUE = """max_batch_size = 4
[queue]
max_queue_size = {size}
priority_levels = 2
default_priority_level = 2
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batching-repo")
    build = tmp_path_factory.mktemp("batching-build")
    mlp = models.mlp(build / "mlp.onnx", seed=5)
    models.publish(root, "batched", mlp, "max_batch_size = 8\n[dynamic_batching]\n"
                   "preferred_batch_sizes = [8]\nmax_queue_delay_us = 2000000\n")  # fmt: skip
    models.publish(root, "unbatched", mlp, "max_batch_size = 8\n")
    slow = models.slow(build / "slow.onnx", depth=150)
    for name, size in (("slow_full", 2), ("slow_admit", 8)):
        models.publish(root, name, slow, SLOW_QUEUE.format(size=size))
    # ~2 s per run: the requests these tests send must queue behind the busy run while it
    # still runs, on a busy machine too (a gRPC request once missed a 0.3 s run in CI).
    slower = models.slow(build / "slower.onnx", depth=1000)
    for name in ("slow_priority", "slow_deadline", "slow_cancel", "slow_grpc_cancel"):
        models.publish(root, name, slower, SLOW_QUEUE.format(size=8))
    models.publish(root, "slow_two", slow, "max_batch_size = 4\ninstance_count = 2\n")
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serve(repo, tmp_path_factory.mktemp("batching-logs") / "server.log") as s:
        yield s


def infer(server: ServerProcess, model: str, x: np.ndarray, **params: object) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v2/models/{model}/infer", json=infer_body(x, **params), timeout=60
    )


def stats(server: ServerProcess, model: str) -> dict:
    return httpx.get(f"{server.url}/v2/models/{model}/stats").json()["model_stats"][0]


def pending(server: ServerProcess, model: str) -> float:
    name = "nv_inference_pending_request_count"
    return samples(server.url, name).value(name, model=model, version="1")


def occupy(server: ServerProcess, model: str) -> threading.Thread:
    """Start one request on the model's only instance and return once it is executing."""
    t = threading.Thread(target=infer, args=(server, model, np.ones((4, 16), np.float32)))
    t.start()
    wait_until(lambda: metric(server.url, "edgeinfer_inference_executing", model=model,
                              version="1") == 1)  # fmt: skip
    return t


def test_concurrent_requests_share_one_run_and_get_their_own_rows(
    server: ServerProcess, repo: Path
) -> None:
    sess = ort.InferenceSession(str(repo / "batched" / "1" / "model.onnx"))
    xs = [np.random.default_rng(i).standard_normal((1, 16)).astype(np.float32) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda x: infer(server, "batched", x), xs))
    for x, r in zip(xs, responses, strict=True):
        assert r.status_code == 200, r.text
        got = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(1, 4)
        np.testing.assert_allclose(got, sess.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
    s = stats(server, "batched")
    assert s["inference_count"] == 8
    assert s["execution_count"] == 1  # the preferred size 8 was reached before the 2 s delay
    assert s["batch_stats"][0]["batch_size"] == 8


def test_without_dynamic_batching_each_request_runs_alone(server: ServerProcess) -> None:
    with ThreadPoolExecutor(8) as pool:
        rs = list(pool.map(lambda i: infer(server, "unbatched", np.ones((2, 16), np.float32)),
                           range(8)))  # fmt: skip
    assert all(r.status_code == 200 for r in rs)
    s = stats(server, "unbatched")
    assert (s["inference_count"], s["execution_count"]) == (16, 8)


def test_full_queue_rejects_at_once_with_retry_after(server: ServerProcess) -> None:
    x = np.ones((1, 16), np.float32)
    with ThreadPoolExecutor(12) as pool:
        rs = list(pool.map(lambda i: infer(server, "slow_full", x), range(12)))
    codes = [r.status_code for r in rs]
    assert codes.count(200) >= 3  # one running + two queued
    rejected = [r for r in rs if r.status_code == 429]
    assert len(rejected) >= 5
    for r in rejected:
        assert int(r.headers["Retry-After"]) >= 1
        assert "queue is full" in r.json()["error"]
    assert metric(server.url, "nv_inference_request_failure", model="slow_full", version="1",
                  reason="REJECTED") == len(rejected)  # fmt: skip
    # gRPC: RESOURCE_EXHAUSTED.
    client = grpcclient.InferenceServerClient(server.grpc_addr)

    def grpc_infer(_: int) -> str:
        inp = grpcclient.InferInput("x", [1, 16], "FP32")
        inp.set_data_from_numpy(x)
        try:
            client.infer("slow_full", [inp])
            return "OK"
        except InferenceServerException as e:
            return str(e.status())

    with ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(grpc_infer, range(12)))
    assert statuses.count("StatusCode.RESOURCE_EXHAUSTED") >= 5
    assert infer(server, "slow_full", x).status_code == 200  # recovers


def test_request_whose_deadline_passes_in_queue_never_runs(server: ServerProcess) -> None:
    busy = occupy(server, "slow_deadline")
    before = stats(server, "slow_deadline")["inference_count"]
    r = infer(server, "slow_deadline", np.ones((1, 16), np.float32), timeout=20_000)
    assert r.status_code == 504
    assert "timed out in the queue" in r.json()["error"]
    busy.join()
    assert stats(server, "slow_deadline")["inference_count"] == before + 4  # only the busy one
    # gRPC carries the timeout as a request parameter too.
    busy = occupy(server, "slow_deadline")
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    inp = grpcclient.InferInput("x", [1, 16], "FP32")
    inp.set_data_from_numpy(np.ones((1, 16), np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("slow_deadline", [inp], timeout=20_000)
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    busy.join()


def test_higher_priority_runs_first(server: ServerProcess) -> None:
    busy = occupy(server, "slow_priority")
    done: list[str] = []

    def send(name: str, priority: int) -> None:
        r = infer(server, "slow_priority", np.ones((1, 16), np.float32), priority=priority)
        assert r.status_code == 200
        done.append(name)

    low = threading.Thread(target=send, args=("low", 2))
    low.start()
    wait_until(lambda: pending(server, "slow_priority") == 1)
    high = threading.Thread(target=send, args=("high", 1))
    high.start()
    wait_until(lambda: pending(server, "slow_priority") == 2)
    for t in (busy, low, high):
        t.join()
    assert done == ["high", "low"]
    r = infer(server, "slow_priority", np.ones((1, 16), np.float32), priority=5)
    assert r.status_code == 400 and "priority 5" in r.json()["error"]


def test_http_disconnect_removes_the_request_from_the_queue(server: ServerProcess) -> None:
    busy = occupy(server, "slow_cancel")
    before = stats(server, "slow_cancel")["inference_count"]
    payload = httpx.Request("POST", f"{server.url}/v2/models/slow_cancel/infer",
                            json=infer_body(np.ones((2, 16), np.float32)))  # fmt: skip
    raw = (f"POST /v2/models/slow_cancel/infer HTTP/1.1\r\nHost: x\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(payload.content)}\r\n\r\n")  # fmt: skip
    sock = socket.create_connection(("127.0.0.1", server.http_port))
    sock.sendall(raw.encode() + payload.content)
    wait_until(lambda: pending(server, "slow_cancel") == 1)
    sock.close()
    wait_until(lambda: pending(server, "slow_cancel") == 0)
    busy.join()
    assert stats(server, "slow_cancel")["inference_count"] == before + 4  # never ran
    wait_until(lambda: metric(server.url, "nv_inference_request_failure", model="slow_cancel",
                              version="1", reason="CANCELED") == 1)  # fmt: skip
    assert infer(server, "slow_cancel", np.ones((1, 16), np.float32)).status_code == 200


def test_grpc_cancel_removes_the_request_from_the_queue(server: ServerProcess) -> None:
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    busy = occupy(server, "slow_grpc_cancel")
    before = stats(server, "slow_grpc_cancel")["inference_count"]
    channel = grpc.insecure_channel(server.grpc_addr)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    req = service_pb2.ModelInferRequest(model_name="slow_grpc_cancel")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    req.raw_input_contents.append(np.ones((1, 16), np.float32).tobytes())
    future = stub.ModelInfer.future(req)
    wait_until(lambda: pending(server, "slow_grpc_cancel") == 1)
    future.cancel()
    wait_until(lambda: pending(server, "slow_grpc_cancel") == 0)
    busy.join()
    assert stats(server, "slow_grpc_cancel")["inference_count"] == before + 4
    channel.close()


def test_admission_rejects_when_the_predicted_wait_exceeds_the_timeout(
    server: ServerProcess,
) -> None:
    x = np.ones((4, 16), np.float32)
    for _ in range(3):  # let the server measure the service rate
        assert infer(server, "slow_admit", x).status_code == 200
    busy = occupy(server, "slow_admit")
    queued = [threading.Thread(target=infer, args=(server, "slow_admit", x)) for _ in range(3)]
    for t in queued:
        t.start()
    wait_until(lambda: pending(server, "slow_admit") >= 1)  # rows are waiting ahead of us
    # 50 ms: far below one ~0.3 s run ahead, yet enough to read and decode the request on a busy
    # machine (with 1 ms it sometimes expired before admission: 504, not this 429).
    r = infer(server, "slow_admit", np.ones((1, 16), np.float32), timeout=50_000)
    assert r.status_code == 429, r.text
    assert "predicted time to a reply" in r.json()["error"]
    assert "Retry-After" in r.headers
    for t in (busy, *queued):
        t.join()


def test_two_instances_run_two_requests_at_once(server: ServerProcess) -> None:
    x = np.ones((4, 16), np.float32)
    threads = [threading.Thread(target=infer, args=(server, "slow_two", x)) for _ in range(2)]
    for t in threads:
        t.start()
    # With one instance this would never exceed 1.
    wait_until(lambda: metric(server.url, "edgeinfer_inference_executing", model="slow_two",
                              version="1") == 2)  # fmt: skip
    for t in threads:
        t.join()
    s = stats(server, "slow_two")
    assert (s["execution_count"], s["inference_count"]) == (2, 8)

"""Adversarial reproductions against a real server: one bad request or one failed load must not
stop a model or change the server's readiness (issue 16, defects 1 and 4), over HTTP and gRPC.

Every call has a client deadline: before the fixes, the zero-batch request and every later
request to the model hung."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from edgeinfer.testing import models
from tests.helpers import ServerProcess, samples, serve, wait_until

DEADLINE_S = 15.0
ZERO_BATCH = {"inputs": [{"name": "x", "shape": [0, 16], "datatype": "FP32", "data": []}]}


def _x(rows: int) -> dict[str, object]:
    return {"inputs": [{"name": "x", "shape": [rows, 16], "datatype": "FP32",
                        "data": [0.5] * (16 * rows)}]}  # fmt: skip


def _broken(root: Path, build: Path, name: str = "broken") -> None:
    bad = build / f"{name}.onnx"
    bad.write_bytes(b"this is not an onnx model")
    models.publish(root, name, bad)


@pytest.fixture(scope="module")
def repo(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sup") / "repo"
    shutil.copytree(tiny_repo, root)
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serve(repo, tmp_path_factory.mktemp("sup-logs") / "server.log") as s:
        yield s


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=DEADLINE_S) as c:
        yield c


@pytest.fixture
def grpc(server: ServerProcess) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(server.grpc_addr)


def _serving(http: httpx.Client, grpc: grpcclient.InferenceServerClient) -> None:
    """The server and mlp are ready over both protocols, and the next request is served."""
    assert http.get("/v2/health/ready").status_code == 200
    assert http.get("/v2/models/mlp/ready").status_code == 200
    assert grpc.is_server_ready(client_timeout=DEADLINE_S)
    assert grpc.is_model_ready("mlp", client_timeout=DEADLINE_S)
    r = http.post("/v2/models/mlp/infer", json=_x(2))
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [2, 4]
    x = grpcclient.InferInput("x", [3, 16], "FP32")
    x.set_data_from_numpy(np.ones((3, 16), np.float32))
    assert grpc.infer("mlp", [x], client_timeout=DEADLINE_S).as_numpy("y").shape == (3, 4)


def test_a_zero_batch_is_refused_over_http_and_the_model_keeps_serving(
    http: httpx.Client, grpc: grpcclient.InferenceServerClient
) -> None:
    for _ in range(4):  # the service rate has samples: the old crash needed a prediction
        assert http.post("/v2/models/mlp/infer", json=_x(2)).status_code == 200
    r = http.post("/v2/models/mlp/infer", json=ZERO_BATCH)
    assert r.status_code == 400
    assert "has a dimension of size 0" in r.json()["error"]
    _serving(http, grpc)


def test_a_zero_batch_is_refused_over_grpc_and_the_model_keeps_serving(
    http: httpx.Client, grpc: grpcclient.InferenceServerClient
) -> None:
    for _ in range(4):
        assert http.post("/v2/models/mlp/infer", json=_x(1)).status_code == 200
    x = grpcclient.InferInput("x", [0, 16], "FP32")
    x.set_data_from_numpy(np.zeros((0, 16), np.float32))
    with pytest.raises(InferenceServerException) as info:
        grpc.infer("mlp", [x], client_timeout=DEADLINE_S)
    assert str(info.value.status()) == "StatusCode.INVALID_ARGUMENT"
    assert "has a dimension of size 0" in info.value.message()
    _serving(http, grpc)


def test_loading_an_unknown_model_is_404_and_readiness_stays(
    http: httpx.Client, grpc: grpcclient.InferenceServerClient
) -> None:
    r = http.post("/v2/repository/models/digitz/load")
    assert r.status_code == 404 and "digitz" in r.json()["error"]
    _serving(http, grpc)
    with pytest.raises(InferenceServerException) as info:
        grpc.load_model("digitz", client_timeout=DEADLINE_S)
    assert str(info.value.status()) == "StatusCode.NOT_FOUND"
    _serving(http, grpc)


def test_loading_a_broken_model_is_400_and_readiness_stays(
    repo: Path, http: httpx.Client, grpc: grpcclient.InferenceServerClient, tmp_path: Path
) -> None:
    _broken(repo, tmp_path)
    r = http.post("/v2/repository/models/broken/load")
    assert r.status_code == 400 and "could not load" in r.json()["error"]
    assert http.get("/v2/models/broken/ready").status_code != 200
    rows = [r for r in http.post("/v2/repository/index", json={}).json() if r["name"] == "broken"]
    assert rows[0]["state"] == "UNAVAILABLE" and "could not load" in rows[0]["reason"]
    _serving(http, grpc)
    with pytest.raises(InferenceServerException) as info:
        grpc.load_model("broken", client_timeout=DEADLINE_S)
    assert str(info.value.status()) == "StatusCode.FAILED_PRECONDITION"
    assert not grpc.is_model_ready("broken", client_timeout=DEADLINE_S)
    _serving(http, grpc)


def test_a_broken_model_dropped_into_a_polled_repository_leaves_readiness_as_it_was(
    tiny_repo: Path, tmp_path: Path
) -> None:
    root = tmp_path / "repo"
    shutil.copytree(tiny_repo, root)
    log = tmp_path / "server.log"
    with (serve(root, log, "--model-control", "poll") as s,
          httpx.Client(base_url=s.url, timeout=DEADLINE_S) as http):  # fmt: skip
        _broken(root, tmp_path)
        wait_until(lambda: _failed_to_load(s.url, "broken"), 60,
                   "the watcher trying (and failing) the new model", 0.1)  # fmt: skip
        assert http.get("/v2/health/ready").status_code == 200
        assert http.get("/v2/models/broken/ready").status_code != 200
        grpc = grpcclient.InferenceServerClient(s.grpc_addr)
        _serving(http, grpc)


def _failed_to_load(url: str, name: str) -> bool:
    failures = samples(url, "edgeinfer_model_load_failures_total")
    return any(f.labels.get("model") == name for f in failures)

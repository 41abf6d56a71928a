"""Every tensor backend (onnxruntime, openvino, litert) held to the same behaviours, through a
real server and real clients: metadata and config, FP32 and INT8 inference over KServe JSON,
binary HTTP and gRPC (compared to the backend's own in-process run and to a numpy reference),
dynamic batching with each request's rows returned exactly, bad inputs refused with 400 while
the server keeps serving, readiness, hot reload and rollback. Differences are declared below
(LiteRT's int8 model takes and returns int8 with scale and zero point in the config)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from edgeinfer import runtime
from edgeinfer.config import ModelConfig
from edgeinfer.repository import add_version
from edgeinfer.testing import models, tflite
from tests.helpers import ServerProcess, serve

BACKENDS = ("onnxruntime", "openvino", "litert")
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "openvino": "openvino", "litert": "litert_tflite"}
FP32_CONFIG = """max_batch_size = 8
instance_count = 2
[dynamic_batching]
max_queue_delay_us = 300000
preferred_batch_sizes = [8]
[lifecycle]
auto_rollback = false
"""


def fp32_files(backend: str, build: Path, seed: int) -> dict[str, Path]:
    onnx_path = models.mlp(build / f"mlp{seed}.onnx", seed=seed)
    if backend == "openvino":
        return models.openvino_ir(onnx_path, build / f"mlp{seed}.xml")
    if backend == "litert":
        return {"model.tflite": tflite.mlp(build / f"mlp{seed}.tflite", seed=seed)}
    return {"model.onnx": onnx_path}


def int8_files(backend: str, build: Path) -> tuple[dict[str, Path], str]:
    """The INT8 model's files and the config that serves it on `backend`."""
    if backend == "litert":
        return {"model.tflite": tflite.mlp_int8(build / "int8.tflite")}, "max_batch_size = 8\n"
    rng = np.random.default_rng(1)
    calibration = [{"x": rng.uniform(-1, 1, (8, 16)).astype(np.float32)} for _ in range(64)]
    qdq = models.qdq_int8(models.mlp(build / "int8src.onnx"), build / "int8.onnx", calibration)
    return {"model.onnx": qdq}, f'backend = "{backend}"\nmax_batch_size = 8\n'


def reference(x: np.ndarray, seed: int = 0) -> np.ndarray:
    w1, w2 = tflite.mlp_weights(seed=seed)
    return np.maximum(x @ w1, 0) @ w2


def publish(root: Path, name: str, files: dict[str, Path], config: str) -> Path:
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "config.toml").write_text(config)
    return add_version(root / name, files)


@pytest.fixture(scope="module", params=BACKENDS)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ServerProcess, Path]]:
    backend: str = request.param
    root = tmp_path_factory.mktemp(f"{backend}-repo")
    build = tmp_path_factory.mktemp(f"{backend}-build")
    publish(root, "fp32", fp32_files(backend, build, 0), FP32_CONFIG)
    publish(root, "int8", *int8_files(backend, build))
    publish(root, "reload", fp32_files(backend, build, 1), FP32_CONFIG)
    home = tmp_path_factory.mktemp(f"{backend}-home")
    # EDGEINFER_HOME: OpenVINO's compiled-model cache goes there.
    with serve(root, home / "server.log", "--model-control", "explicit",
               env={"EDGEINFER_HOME": str(home)}) as server:  # fmt: skip
        yield backend, server, root


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 16)).astype(np.float32)


def in_process(root: Path, name: str, x: np.ndarray) -> np.ndarray:
    entry = root / name
    version = max(int(p.name) for p in entry.iterdir() if p.name.isdigit())
    config = ModelConfig.from_toml(entry / "config.toml", name)
    model = runtime.load(entry / str(version), config)
    try:
        return model.run({"x": x})["y"]
    finally:
        model.close()


def infer_json(server: ServerProcess, model: str, x: np.ndarray) -> httpx.Response:
    dtype = {np.dtype(np.float32): "FP32", np.dtype(np.int8): "INT8"}[x.dtype]
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": dtype,
                        "data": x.ravel().tolist()}]}  # fmt: skip
    return httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=60)


def output(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    return np.array(out["data"], np.float32).reshape(out["shape"])


def close_to(got: np.ndarray, want: np.ndarray, share: float) -> None:
    """Within `share` of the output's range (bf16 on OpenVINO's CPU plugin, int8 everywhere)."""
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= share * np.abs(want).max(), (got, want)


def test_metadata_and_config(served: tuple[str, ServerProcess, Path]) -> None:
    backend, server, _ = served
    meta = httpx.get(f"{server.url}/v2/models/fp32").json()
    assert meta["platform"] == PLATFORMS[backend]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]
    config = httpx.get(f"{server.url}/v2/models/fp32/config").json()
    assert (config["backend"], config["max_batch_size"]) == (backend, 8)
    assert config["instance_group"][0]["count"] == 2
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [16]}]


@pytest.mark.parametrize("n", [1, 3])
def test_fp32_over_json_binary_http_and_grpc(
    served: tuple[str, ServerProcess, Path], n: int
) -> None:
    _, server, root = served
    x = rows(n, seed=n)
    own = in_process(root, "fp32", x)
    close_to(own, reference(x), 0.02)  # across backends: the same model within bf16 error
    np.testing.assert_allclose(output(infer_json(server, "fp32", x)), own, rtol=1e-5, atol=1e-5)
    http = httpclient.InferenceServerClient(server.http_addr)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    got = http.infer(
        "fp32", [inp], outputs=[httpclient.InferRequestedOutput("y", binary_data=True)]
    )
    np.testing.assert_allclose(got.as_numpy("y"), own, rtol=1e-5, atol=1e-5)
    grpc = grpcclient.InferenceServerClient(server.grpc_addr)
    ginp = grpcclient.InferInput("x", list(x.shape), "FP32")
    ginp.set_data_from_numpy(x)
    np.testing.assert_allclose(grpc.infer("fp32", [ginp]).as_numpy("y"), own, rtol=1e-5, atol=1e-5)


def test_int8(served: tuple[str, ServerProcess, Path]) -> None:
    """FP32-in/out QDQ models on ONNX Runtime and OpenVINO; int8-in/out on LiteRT, where the
    client quantizes with the scale and zero point the config publishes."""
    backend, server, _ = served
    x = rows(4, seed=7)
    params = httpx.get(f"{server.url}/v2/models/int8/config").json()["parameters"]
    meta = httpx.get(f"{server.url}/v2/models/int8").json()
    if backend != "litert":
        assert params == {} and meta["inputs"][0]["datatype"] == "FP32"
        close_to(output(infer_json(server, "int8", x)), reference(x), 0.05)
        return
    assert meta["inputs"][0]["datatype"] == meta["outputs"][0]["datatype"] == "INT8"
    sx, zx = float(params["x.scale"]["string_value"]), int(params["x.zero_point"]["string_value"])
    sy, zy = float(params["y.scale"]["string_value"]), int(params["y.zero_point"]["string_value"])
    xq = np.clip(np.round(x / sx) + zx, -128, 127).astype(np.int8)
    r = infer_json(server, "int8", xq)
    assert r.json()["outputs"][0]["datatype"] == "INT8"
    close_to((output(r) - zy) * sy, reference(x), 0.05)


def test_dynamic_batching_returns_each_request_its_rows(
    served: tuple[str, ServerProcess, Path],
) -> None:
    _, server, root = served
    before = httpx.get(f"{server.url}/v2/models/fp32/stats").json()["model_stats"][0]
    xs = [rows(1 + i % 3, seed=100 + i) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda x: output(infer_json(server, "fp32", x)), xs))
    for x, y in zip(xs, got, strict=True):
        np.testing.assert_allclose(y, in_process(root, "fp32", x), rtol=1e-5, atol=1e-5)
    after = httpx.get(f"{server.url}/v2/models/fp32/stats").json()["model_stats"][0]
    requests = after["inference_count"] - before["inference_count"]
    runs = after["execution_count"] - before["execution_count"]
    assert requests == sum(len(x) for x in xs) and runs < len(xs)  # requests shared runs


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "INT32", "data": [0] * 16}]},
         "datatype INT32"),
        ({"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [0.0] * 5}]},
         "shape [1, 5]"),
        ({"inputs": [{"name": "z", "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 16}]},
         "unexpected input 'z'"),
        ({"inputs": [{"name": "x", "shape": [9, 16], "datatype": "FP32", "data": [0.0] * 144}]},
         "max_batch_size 8"),
        ({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 3}]},
         ""),
    ],
)  # fmt: skip
def test_bad_input_is_400_and_the_server_keeps_serving(
    served: tuple[str, ServerProcess, Path], body: dict, needle: str
) -> None:
    _, server, _ = served
    r = httpx.post(f"{server.url}/v2/models/fp32/infer", json=body, timeout=30)
    assert r.status_code == 400 and needle in r.json()["error"], r.text
    assert output(infer_json(server, "fp32", rows(1))).shape == (1, 4)


def test_readiness(served: tuple[str, ServerProcess, Path]) -> None:
    _, server, _ = served
    for model in ("fp32", "int8", "reload"):
        assert httpx.get(f"{server.url}/v2/models/{model}/ready").status_code == 200
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


def test_hot_reload_and_rollback(served: tuple[str, ServerProcess, Path]) -> None:
    backend, server, root = served
    x = rows(2, seed=3)
    v1 = output(infer_json(server, "reload", x))
    add_version(root / "reload", fp32_files(backend, root.parent / f"{root.name}-v2", 2))
    r = httpx.post(f"{server.url}/v2/repository/models/reload/load", timeout=120)
    assert r.status_code == 200, r.text
    r2 = infer_json(server, "reload", x)
    assert r2.json()["model_version"] == "2"
    close_to(output(r2), reference(x, seed=2), 0.02)
    r = httpx.post(f"{server.url}/v2/repository/models/reload/rollback", json={}, timeout=60)
    assert r.status_code == 200 and r.json()["live"] == "1", r.text
    np.testing.assert_allclose(output(infer_json(server, "reload", x)), v1, rtol=1e-5)


def test_stats_and_triton_metric_names(served: tuple[str, ServerProcess, Path]) -> None:
    _, server, _ = served
    datatype = httpx.get(f"{server.url}/v2/models/int8").json()["inputs"][0]["datatype"]
    x = rows(1) if datatype == "FP32" else np.zeros((1, 16), np.int8)  # LiteRT: int8 in
    output(infer_json(server, "int8", x))
    stats = httpx.get(f"{server.url}/v2/models/int8/stats").json()["model_stats"][0]
    assert stats["inference_count"] >= 1 and stats["execution_count"] >= 1
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        "nv_inference_request_success",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
    ):
        assert f'{name}{{model="int8",version="1"}}' in text, name

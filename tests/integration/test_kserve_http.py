"""KServe v2 over HTTP with the real Triton HTTP client and raw httpx, against a real server."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.helpers import ServerProcess


def ort_run(repo: Path, model: str, version: int, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(repo / model / str(version) / "model.onnx"))
    return sess.run(None, feeds)


@pytest.fixture(scope="module")
def client(tiny_server: ServerProcess) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(tiny_server.http_addr)


def test_health_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "edgeinfer"
    assert "binary_tensor_data" in meta["extensions"]
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("mlp", "7")
    assert not client.is_model_ready("nope")
    md = client.get_model_metadata("mlp")
    assert md["versions"] == ["1", "2"]
    assert md["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    assert md["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]
    assert client.get_model_metadata("mlp", "1")["versions"] == ["1"]


def test_model_config_is_triton_shaped(client: httpclient.InferenceServerClient) -> None:
    cfg = client.get_model_config("mlp")
    assert cfg["max_batch_size"] == 8
    assert cfg["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [16]}]
    assert cfg["output"][0]["dims"] == [4]
    assert cfg["platform"] == "onnxruntime_onnx"


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("version", ["", "1", "2"])
def test_infer_matches_onnxruntime(
    client: httpclient.InferenceServerClient, tiny_repo: Path, binary: bool, version: str
) -> None:
    x = np.random.default_rng(7).standard_normal((3, 16)).astype(np.float32)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("y", binary_data=binary)
    result = client.infer("mlp", [inp], model_version=version, outputs=[out], request_id="r-1")
    served = int(version or 2)
    (expected,) = ort_run(tiny_repo, "mlp", served, {"x": x})
    assert np.array_equal(result.as_numpy("y"), expected)
    response = result.get_response()
    assert response["model_version"] == str(served)
    assert response["id"] == "r-1"


def test_versions_give_different_outputs(client: httpclient.InferenceServerClient) -> None:
    x = np.ones((1, 16), np.float32)
    outs = []
    for version in ("1", "2"):
        inp = httpclient.InferInput("x", [1, 16], "FP32")
        inp.set_data_from_numpy(x)
        outs.append(client.infer("mlp", [inp], model_version=version).as_numpy("y"))
    assert not np.array_equal(outs[0], outs[1])


def test_dtypes_round_trip(client: httpclient.InferenceServerClient) -> None:
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    b = np.array([[1.5, -2.25], [1e300, 0.0]], dtype=np.float64)
    s = np.array(["héllo wörld ✓".encode(), b""], dtype=object)
    inputs = []
    for name, arr, dt, binary in (("a", a, "INT32", True), ("b", b, "FP64", False),
                                  ("s", s, "BYTES", True)):  # fmt: skip
        i = httpclient.InferInput(name, list(arr.shape), dt)
        i.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(i)
    result = client.infer("ids", inputs)
    assert np.array_equal(result.as_numpy("a_out"), a)
    assert np.array_equal(result.as_numpy("b_out"), b)
    assert list(result.as_numpy("s_out")) == list(s)


def test_json_only_request_with_raw_httpx(tiny_server: ServerProcess, tiny_repo: Path) -> None:
    body = {"inputs": [{"name": "s", "shape": [2], "datatype": "BYTES", "data": ["a", "ü"]},
                       {"name": "a", "shape": [2, 3], "datatype": "INT32",
                        "data": [[1, 2, 3], [4, 5, 6]]},
                       {"name": "b", "shape": [2, 2], "datatype": "FP64", "data": [1, 2, 3, 4]}]}  # fmt: skip
    r = httpx.post(f"{tiny_server.url}/v2/models/ids/infer", json=body)
    assert r.status_code == 200, r.text
    outs = {o["name"]: o for o in r.json()["outputs"]}
    assert outs["s_out"]["data"] == ["a", "ü"]
    assert outs["a_out"]["data"] == [1, 2, 3, 4, 5, 6]
    assert outs["a_out"]["shape"] == [2, 3]


def test_gzip_request_body(tiny_server: ServerProcess) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}
    r = httpx.post(
        f"{tiny_server.url}/v2/models/mlp/infer",
        content=gzip.compress(json.dumps(body).encode()),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["shape"] == [1, 4]


def test_statistics_count_inferences(client: httpclient.InferenceServerClient) -> None:
    def count() -> int:
        stats = client.get_inference_statistics("mlp", "1")["model_stats"][0]
        return int(stats["inference_count"])

    before = count()
    inp = httpclient.InferInput("x", [2, 16], "FP32")
    inp.set_data_from_numpy(np.zeros((2, 16), np.float32))
    client.infer("mlp", [inp], model_version="1")
    assert count() == before + 2
    all_stats = client.get_inference_statistics()["model_stats"]
    assert {(s["name"], s["version"]) for s in all_stats} >= {("mlp", "1"), ("mlp", "2")}


def test_repository_index(client: httpclient.InferenceServerClient) -> None:
    rows = client.get_model_repository_index()
    assert {(r["name"], r["version"], r["state"]) for r in rows} == {
        ("ids", "1", "READY"), ("mlp", "1", "READY"), ("mlp", "2", "READY")
    }  # fmt: skip


# ---- bad input: each is answered with a clear 4xx and the server keeps serving ----------------
def _post(server: ServerProcess, path: str, **kw: object) -> httpx.Response:
    return httpx.post(server.url + path, timeout=10, **kw)  # type: ignore[arg-type]


def _assert_still_serves(server: ServerProcess) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}]}
    r = _post(server, "/v2/models/mlp/infer", json=body)
    assert r.status_code == 200, r.text


def _x(shape: list[int], datatype: str = "FP32", name: str = "x") -> dict[str, object]:
    n = int(np.prod(shape))
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": [1] * n}]}


BAD_REQUESTS = [
    ("unknown model", "/v2/models/nope/infer", {"json": _x([1, 16])}, 404, "nope"),
    ("unknown version", "/v2/models/mlp/versions/9/infer", {"json": _x([1, 16])}, 404, "version"),
    ("non-numeric version", "/v2/models/mlp/versions/abc/infer", {"json": _x([1, 16])}, 404, "abc"),
    ("wrong input name", "/v2/models/mlp/infer", {"json": _x([1, 16], name="z")}, 400, "'z'"),
    ("wrong dtype", "/v2/models/mlp/infer", {"json": _x([1, 16], "INT32")}, 400, "datatype"),
    ("wrong shape", "/v2/models/mlp/infer", {"json": _x([1, 15])}, 400, "shape"),
    ("wrong rank", "/v2/models/mlp/infer", {"json": _x([16])}, 400, "shape"),
    ("batch above max", "/v2/models/mlp/infer", {"json": _x([9, 16])}, 400, "max_batch_size"),
    ("element count", "/v2/models/mlp/infer",
     {"json": {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [1, 2]}]}},
     400, "16 elements"),
    ("unknown datatype", "/v2/models/mlp/infer", {"json": _x([1, 16], "FLOAT")}, 400, "datatype"),
    ("malformed json", "/v2/models/mlp/infer", {"content": b'{"inputs": [}'}, 400, "JSON"),
    ("not an object", "/v2/models/mlp/infer", {"content": b"[1, 2]"}, 400, "object"),
    ("no inputs", "/v2/models/mlp/infer", {"json": {"inputs": []}}, 400, "inputs"),
    ("missing input", "/v2/models/ids/infer", {"json": _x([1, 3], "INT32", "a")}, 400, "missing"),
    ("non-numeric data", "/v2/models/mlp/infer",
     {"json": {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                           "data": ["a"] * 16}]}}, 400, "FP32"),
    ("huge declared shape", "/v2/models/mlp/infer",
     {"json": {"inputs": [{"name": "x", "shape": [100000, 100000, 16], "datatype": "FP32",
                           "data": [1]}]}}, 400, "elements"),
    ("unknown output", "/v2/models/mlp/infer",
     {"json": {**_x([1, 16]), "outputs": [{"name": "nope"}]}}, 400, "nope"),
    ("bad gzip", "/v2/models/mlp/infer",
     {"content": b"not gzip", "headers": {"Content-Encoding": "gzip"}}, 400, "gzip"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "path", "kw", "status", "needle"), BAD_REQUESTS,
                         ids=[c[0] for c in BAD_REQUESTS])  # fmt: skip
def test_bad_requests_get_clear_errors(
    tiny_server: ServerProcess,
    case: str,
    path: str,
    kw: dict[str, object],
    status: int,
    needle: str,
) -> None:
    r = _post(tiny_server, path, **kw)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]
    _assert_still_serves(tiny_server)


def _binary_body(header: dict[str, object], payload: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + payload, {"Inference-Header-Content-Length": str(len(head))}


@pytest.mark.parametrize(("case", "size", "payload", "header_len", "needle"), [
    ("truncated", 64, b"\0" * 10, None, "truncated"),
    ("size mismatch", 8, b"\0" * 8, None, "binary_data_size"),
    ("extra bytes", 64, b"\0" * 70, None, "not claimed"),
    ("header length past body", 64, b"\0" * 64, "99999", "outside the body"),
    ("header length not a number", 64, b"\0" * 64, "abc", "non-negative integer"),
])  # fmt: skip
def test_bad_binary_payloads(
    tiny_server: ServerProcess,
    case: str,
    size: int,
    payload: bytes,
    header_len: str | None,
    needle: str,
) -> None:
    header = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                          "parameters": {"binary_data_size": size}}]}  # fmt: skip
    body, headers = _binary_body(header, payload)
    if header_len is not None:
        headers["Inference-Header-Content-Length"] = header_len
    r = _post(tiny_server, "/v2/models/mlp/infer", content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]
    _assert_still_serves(tiny_server)


def test_bad_binary_bytes_elements(tiny_server: ServerProcess) -> None:
    # Element claims 100 bytes but only 3 follow.
    payload = struct.pack("<I", 100) + b"abc"
    header = {"inputs": [{"name": "s", "shape": [1], "datatype": "BYTES",
                          "parameters": {"binary_data_size": len(payload)}},
                         {"name": "a", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 3]},
                         {"name": "b", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]}  # fmt: skip
    body, headers = _binary_body(header, payload)
    r = _post(tiny_server, "/v2/models/ids/infer", content=body, headers=headers)
    assert r.status_code == 400
    assert "runs past the end" in r.json()["error"]
    _assert_still_serves(tiny_server)


def test_unknown_route_and_method(tiny_server: ServerProcess) -> None:
    r = httpx.get(tiny_server.url + "/v2/nothing/here")
    assert r.status_code == 404
    assert "no route" in r.json()["error"]
    r = httpx.get(tiny_server.url + "/v2/models/mlp/infer")
    assert r.status_code == 405


def test_triton_client_raises_on_errors(client: httpclient.InferenceServerClient) -> None:
    inp = httpclient.InferInput("x", [1, 15], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 15), np.float32))
    with pytest.raises(InferenceServerException, match="shape"):
        client.infer("mlp", [inp])

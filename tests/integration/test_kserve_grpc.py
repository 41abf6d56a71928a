"""KServe v2 gRPC against a real server process, spoken to by Triton's own client."""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import edgeinfer
from tests.helpers import ServerProcess, serve

RNG = np.random.default_rng(0)


# ---- helpers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tiny_server: ServerProcess) -> Iterator[tgrpc.InferenceServerClient]:
    c = tgrpc.InferenceServerClient(tiny_server.grpc_addr)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(tiny_server: ServerProcess) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(tiny_server.grpc_addr) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def mlp_ref(tiny_repo: Path) -> Callable[[str, np.ndarray], np.ndarray]:
    """Run an mlp version in ONNX Runtime in this process, with the server's thread settings."""
    sessions: dict[str, ort.InferenceSession] = {}

    def run(version: str, x: np.ndarray) -> np.ndarray:
        if version not in sessions:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            path = str(tiny_repo / "mlp" / version / "model.onnx")
            sessions[version] = ort.InferenceSession(path, opts, ["CPUExecutionProvider"])
        return sessions[version].run(["y"], {"x": x})[0]

    return run


def _input(name: str, data: np.ndarray, datatype: str) -> tgrpc.InferInput:
    inp = tgrpc.InferInput(name, list(data.shape), datatype)
    inp.set_data_from_numpy(data)
    return inp


def _x(batch: int = 2) -> np.ndarray:
    return RNG.standard_normal((batch, 16)).astype(np.float32)


def _infer_mlp(client: tgrpc.InferenceServerClient, x: np.ndarray, version: str = "") -> Any:
    return client.infer("mlp", [_input("x", x, "FP32")], model_version=version)


def _assert_serves(client: tgrpc.InferenceServerClient, ref: Callable[..., np.ndarray]) -> None:
    x = _x()
    assert np.array_equal(_infer_mlp(client, x).as_numpy("y"), ref("2", x))


def _status(exc: InferenceServerException) -> str:
    return str(exc.status()).removeprefix("StatusCode.")


# ---- health, metadata, config -----------------------------------------------------------------


def test_server_live_and_ready(client: tgrpc.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()


def test_model_ready(client: tgrpc.InferenceServerClient) -> None:
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1")
    assert client.is_model_ready("mlp", "2")
    assert client.is_model_ready("ids")
    assert not client.is_model_ready("mlp", "3")
    assert not client.is_model_ready("no_such_model")


def test_server_metadata(client: tgrpc.InferenceServerClient) -> None:
    md = client.get_server_metadata(as_json=True)
    assert md["name"] == "edgeinfer"
    assert md["version"] == edgeinfer.__version__
    assert {"model_repository", "statistics", "model_configuration"} <= set(md["extensions"])


def test_model_metadata(client: tgrpc.InferenceServerClient) -> None:
    md = client.get_model_metadata("mlp")
    assert (md.name, list(md.versions)) == ("mlp", ["1", "2"])
    assert [(t.name, t.datatype, list(t.shape)) for t in md.inputs] == [("x", "FP32", [-1, 16])]
    assert [(t.name, t.datatype, list(t.shape)) for t in md.outputs] == [("y", "FP32", [-1, 4])]
    assert list(client.get_model_metadata("mlp", "1").versions) == ["1"]
    ids = client.get_model_metadata("ids")
    assert {t.name: t.datatype for t in ids.inputs} == {"a": "INT32", "b": "FP64", "s": "BYTES"}


def test_model_config(client: tgrpc.InferenceServerClient) -> None:
    config = client.get_model_config("mlp").config
    assert config.name == "mlp"
    assert config.max_batch_size == 8
    assert [(i.name, list(i.dims)) for i in config.input] == [("x", [16])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("y", [4])]
    assert config.input[0].data_type == tgrpc.model_config_pb2.TYPE_FP32
    assert config.version_policy.HasField("all")
    ids = client.get_model_config("ids", as_json=True)["config"]
    assert {i["name"]: i["data_type"] for i in ids["input"]}["s"] == "TYPE_STRING"


# ---- inference --------------------------------------------------------------------------------


def test_infer_mlp_matches_onnxruntime(client: tgrpc.InferenceServerClient, mlp_ref: Any) -> None:
    x = _x(3)
    result = _infer_mlp(client, x)
    assert result.get_response().model_version == "2"
    y = result.as_numpy("y")
    assert y.dtype == np.float32 and y.shape == (3, 4)
    assert np.array_equal(y, mlp_ref("2", x))


def test_infer_mlp_explicit_versions(client: tgrpc.InferenceServerClient, mlp_ref: Any) -> None:
    x = _x(8)
    y1 = _infer_mlp(client, x, "1").as_numpy("y")
    y2 = _infer_mlp(client, x, "2").as_numpy("y")
    assert np.array_equal(y1, mlp_ref("1", x))
    assert np.array_equal(y2, mlp_ref("2", x))
    assert not np.array_equal(y1, y2)


def test_infer_ids_dtypes_and_request_id(client: tgrpc.InferenceServerClient) -> None:
    a = np.array([[1, -2, 2**31 - 1], [0, -(2**31), 7], [3, 4, 5]], dtype=np.int32)
    b = np.array([[0.1, -1e300], [np.pi, 5e-324], [np.inf, -0.0]], dtype=np.float64)
    s = np.array(["héllo ✓".encode(), b"", "日本語".encode()], dtype=object)
    inputs = [_input("a", a, "INT32"), _input("b", b, "FP64"), _input("s", s, "BYTES")]
    result = client.infer("ids", inputs, request_id="req-42")
    assert result.get_response().id == "req-42"
    a_out, b_out, s_out = (result.as_numpy(n) for n in ("a_out", "b_out", "s_out"))
    assert a_out.dtype == np.int32 and np.array_equal(a_out, a)
    assert b_out.dtype == np.float64 and np.array_equal(b_out, b)
    assert s_out.tolist() == s.tolist()


def test_infer_requested_outputs(client: tgrpc.InferenceServerClient) -> None:
    inputs = [
        _input("a", np.zeros((1, 3), np.int32), "INT32"),
        _input("b", np.ones((1, 2), np.float64), "FP64"),
        _input("s", np.array([b"x"], dtype=object), "BYTES"),
    ]
    result = client.infer("ids", inputs, outputs=[tgrpc.InferRequestedOutput("b_out")])
    assert [o.name for o in result.get_response().outputs] == ["b_out"]
    assert np.array_equal(result.as_numpy("b_out"), np.ones((1, 2)))
    assert result.as_numpy("a_out") is None


def test_concurrent_infers(client: tgrpc.InferenceServerClient, mlp_ref: Any) -> None:
    xs = [_x(1 + i % 8) for i in range(64)]
    with ThreadPoolExecutor(8) as pool:
        ys = list(pool.map(lambda x: _infer_mlp(client, x).as_numpy("y"), xs))
    assert all(np.array_equal(y, mlp_ref("2", x)) for x, y in zip(xs, ys, strict=True))


def test_statistics_count_inferences(client: tgrpc.InferenceServerClient) -> None:
    def counts() -> tuple[int, int]:
        stats = client.get_inference_statistics("mlp", "1").model_stats
        assert [(s.name, s.version) for s in stats] == [("mlp", "1")]
        return stats[0].inference_count, stats[0].inference_stats.success.count

    before = counts()
    for _ in range(3):
        _infer_mlp(client, _x(2), "1")
    after = counts()
    assert after == (before[0] + 6, before[1] + 3)
    everything = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {(s["name"], s["version"]) for s in everything} >= {("mlp", "1"), ("mlp", "2")}


def test_repository_index(client: tgrpc.InferenceServerClient) -> None:
    rows = client.get_model_repository_index().models
    ready = {(m.name, m.version) for m in rows if m.state == "READY"}
    assert {("mlp", "1"), ("mlp", "2"), ("ids", "1")} <= ready


# ---- errors: each followed by a request that still succeeds ----------------------------------


@pytest.mark.parametrize(
    ("model", "version", "name", "data", "datatype", "code", "needle"),
    [
        ("no_such_model", "", "x", np.zeros((1, 16), np.float32), "FP32", "NOT_FOUND", "no_such"),
        ("mlp", "7", "x", np.zeros((1, 16), np.float32), "FP32", "NOT_FOUND", "version"),
        ("mlp", "", "z", np.zeros((1, 16), np.float32), "FP32", "INVALID_ARGUMENT", "'z'"),
        ("mlp", "", "x", np.zeros((1, 16), np.float64), "FP64", "INVALID_ARGUMENT", "'x'"),
        ("mlp", "", "x", np.zeros((2, 15), np.float32), "FP32", "INVALID_ARGUMENT", "'x'"),
        ("mlp", "", "x", np.zeros((9, 16), np.float32), "FP32", "INVALID_ARGUMENT", "'x'"),
    ],
    ids=["unknown-model", "unknown-version", "input-name", "dtype", "shape", "batch-9"],
)
def test_infer_errors(client: tgrpc.InferenceServerClient, mlp_ref: Any, model: str,
                      version: str, name: str, data: np.ndarray, datatype: str, code: str,
                      needle: str) -> None:  # fmt: skip
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, [_input(name, data, datatype)], model_version=version)
    assert _status(info.value) == code
    assert needle in info.value.message()
    _assert_serves(client, mlp_ref)


def test_metadata_and_config_of_unknown_model(client: tgrpc.InferenceServerClient) -> None:
    for call in (client.get_model_metadata, client.get_model_config):
        with pytest.raises(InferenceServerException) as info:
            call("no_such_model")
        assert _status(info.value) == "NOT_FOUND"
    with pytest.raises(InferenceServerException) as info:
        client.get_inference_statistics("mlp", "9")
    assert _status(info.value) == "NOT_FOUND"


def _raw_request(**tensor: Any) -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest(model_name="mlp")
    req.inputs.add(name="x", datatype=tensor.get("datatype", "FP32"),
                   shape=tensor.get("shape", [2, 16]))  # fmt: skip
    if "raw" in tensor:
        req.raw_input_contents.extend(tensor["raw"])
    return req


_TWO_ROWS = np.ones((2, 16), np.float32).tobytes()


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (_raw_request(raw=[_TWO_ROWS[:-1]]), "'x'"),
        (_raw_request(raw=[_TWO_ROWS, _TWO_ROWS]), "raw_input_contents"),
        (_raw_request(datatype="FP31", raw=[_TWO_ROWS]), "'x'"),
        (_raw_request(shape=[-2, 16], raw=[_TWO_ROWS]), "'x'"),
        (_raw_request(shape=[1 << 20, 1 << 12], raw=[_TWO_ROWS]), "'x'"),
        (_raw_request(shape=[2, 16]), "'x'"),  # no data at all
        (_raw_request(datatype="BYTES", shape=[1], raw=[struct.pack("<I", 9) + b"abc"]), "'x'"),
        (_raw_request(datatype="FP16", shape=[1, 16]), "'x'"),  # FP16 has no typed contents
    ],
    ids=[
        "truncated",
        "count-mismatch",
        "datatype",
        "negative-dim",
        "too-many-elements",
        "no-data",
        "bytes-overrun",
        "fp16-typed",
    ],
)
def test_malformed_raw_requests(stub: Any, client: tgrpc.InferenceServerClient, mlp_ref: Any,
                                request_: Any, needle: str) -> None:  # fmt: skip
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request_, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in info.value.details()
    _assert_serves(client, mlp_ref)


def test_typed_contents(stub: Any, mlp_ref: Any) -> None:
    x = _x(2)
    req = _raw_request()
    req.inputs[0].contents.fp32_contents.extend(x.reshape(-1).tolist())
    req.id = "typed"
    resp = stub.ModelInfer(req, timeout=10)
    assert resp.id == "typed"
    assert (resp.outputs[0].name, resp.outputs[0].datatype) == ("y", "FP32")
    y = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(list(resp.outputs[0].shape))
    assert np.array_equal(y, mlp_ref("2", x))
    ids = service_pb2.ModelInferRequest(model_name="ids")
    ids.inputs.add(name="a", datatype="INT32", shape=[1, 3]).contents.int_contents.extend([1, 2, 3])
    ids.inputs.add(name="b", datatype="FP64", shape=[1, 2]).contents.fp64_contents.extend([1.5, 2])
    ids.inputs.add(name="s", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        b"\xc3\xa9"
    )
    out = stub.ModelInfer(ids, timeout=10)
    assert np.frombuffer(out.raw_output_contents[0], np.int32).tolist() == [1, 2, 3]
    assert out.raw_output_contents[2] == struct.pack("<I", 2) + b"\xc3\xa9"


def test_unimplemented_rpcs_say_so_quietly(
    client: tgrpc.InferenceServerClient, stub: Any, tiny_server: ServerProcess
) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.get_system_shared_memory_status()
    assert _status(info.value) == "UNIMPLEMENTED"
    with pytest.raises(grpc.RpcError) as rpc_info:
        list(stub.ModelStreamInfer(iter([_raw_request()]), timeout=10))
    assert rpc_info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "ModelStreamInfer" in rpc_info.value.details()
    assert "NotImplementedError" not in tiny_server.log()


# ---- a private server: repository control and message size ------------------------------------


@pytest.fixture(scope="module")
def own_server(
    tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("grpc_own")
    shutil.copytree(tiny_repo, root / "repo")
    with serve(root / "repo", root / "server.log", "--max-request-bytes", "4096") as server:
        yield server


def test_unload_and_load(own_server: ServerProcess) -> None:
    client = tgrpc.InferenceServerClient(own_server.grpc_addr)
    ids_inputs = [
        _input("a", np.zeros((1, 3), np.int32), "INT32"),
        _input("b", np.zeros((1, 2), np.float64), "FP64"),
        _input("s", np.array([b""], dtype=object), "BYTES"),
    ]
    try:
        client.unload_model("ids")
        assert not client.is_model_ready("ids")
        with pytest.raises(InferenceServerException) as info:
            client.infer("ids", ids_inputs)
        assert _status(info.value) in ("UNAVAILABLE", "NOT_FOUND")
        states = {m.name: m.state for m in client.get_model_repository_index().models}
        assert states["ids"] == "UNAVAILABLE" and states["mlp"] == "READY"
        assert client.is_model_ready("mlp")
        client.load_model("ids")
        assert client.is_model_ready("ids")
        assert client.infer("ids", ids_inputs).as_numpy("s_out").tolist() == [b""]
        with pytest.raises(InferenceServerException) as info:
            client.load_model("no_such_model")
        assert _status(info.value) == "NOT_FOUND"
        with pytest.raises(InferenceServerException) as info:
            client.load_model("ids", config='{"max_batch_size": 1}')
        assert _status(info.value) == "INVALID_ARGUMENT"
    finally:
        client.close()


def test_a_message_above_the_grpc_limit_is_refused_before_it_is_received(
    tiny_server: ServerProcess,
) -> None:
    # 17 MB, under --max-request-bytes (64 MiB) but over --max-grpc-message-bytes (16 MiB): grpcio
    # refuses it from its length prefix, before turning it into a bytes object on the event loop
    client = tgrpc.InferenceServerClient(tiny_server.grpc_addr)
    try:
        with pytest.raises(InferenceServerException) as info:
            client.infer("mlp", [_input("x", np.zeros((17 * 2**14, 16), np.float32), "FP32")])
        assert _status(info.value) == "RESOURCE_EXHAUSTED"
        assert "16777216" in str(info.value)
        assert client.infer("mlp", [_input("x", _x(1), "FP32")]).as_numpy("y").shape == (1, 4)
    finally:
        client.close()


def test_message_above_limit_is_resource_exhausted(own_server: ServerProcess) -> None:
    client = tgrpc.InferenceServerClient(own_server.grpc_addr)
    try:
        with pytest.raises(InferenceServerException) as info:
            client.infer("mlp", [_input("x", np.zeros((8, 16 * 9), np.float32), "FP32")])
        assert _status(info.value) == "RESOURCE_EXHAUSTED"
        assert client.infer("mlp", [_input("x", _x(1), "FP32")]).as_numpy("y").shape == (1, 4)
    finally:
        client.close()

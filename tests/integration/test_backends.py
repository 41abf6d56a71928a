"""What differs between backends, declared and checked through a real server: a model whose
backend package is missing, LiteRT's runs of one, signatures and dequantized outputs, OpenVINO
serving an ONNX file chosen by --set and its compiled-model cache."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgeinfer.testing import models, tflite
from tests.helpers import ServerProcess, serve, wait_until
from tests.integration.test_backend_conformance import infer_json, output, publish, reference, rows


@pytest.mark.parametrize(("backend", "package"), [("openvino", "openvino"),
                                                  ("litert", "ai_edge_litert")])  # fmt: skip
def test_a_model_whose_backend_is_missing_fails_alone_with_one_line(
    tmp_path: Path, backend: str, package: str
) -> None:
    root, build = tmp_path / "repo", tmp_path / "build"
    publish(root, "plain", {"model.onnx": models.mlp(build / "m.onnx")}, "")
    files = ({"model.tflite": tflite.mlp(build / "m.tflite")} if backend == "litert"
             else {"model.onnx": build / "m.onnx"})  # fmt: skip
    publish(root, "needs", files, f'backend = "{backend}"\n')
    hide = tmp_path / "hide"
    hide.mkdir()  # the package cannot be imported in the server process
    (hide / "sitecustomize.py").write_text(f"import sys\nsys.modules[{package!r}] = None\n")
    path = {"PYTHONPATH": f"{hide}:{Path('src').resolve()}"}
    with serve(root, tmp_path / "log", env=path, wait="live") as server:

        def states() -> dict[str, dict]:
            return {m["name"]: m for m in httpx.post(f"{server.url}/v2/repository/index").json()}

        def ended() -> bool:  # both loads, one way or the other
            index = states()
            return {index[m]["state"] for m in ("plain", "needs")} <= {"READY", "UNAVAILABLE"}

        wait_until(ended, 60, lambda: f"both loads to end; log:\n{server.log()}", 0.05)
        index = states()
        assert (index["plain"]["state"], index["needs"]["state"]) == ("READY", "UNAVAILABLE")
        reason = index["needs"]["reason"]
        assert "\n" not in reason and reason.endswith(
            f"model needs: backend {backend} is not installed; pip install 'edgeinfer[{backend}]'"
        )
        assert httpx.get(f"{server.url}/v2/models/needs/ready").status_code != 200
        close = output(infer_json(server, "plain", rows(2)))
        np.testing.assert_allclose(close, reference(rows(2)), rtol=1e-4, atol=1e-4)


LITERT = {
    "fixed": ("fixed_batch", "max_batch_size = 8\n[dynamic_batching]\nmax_queue_delay_us = 200000\n"),
    "sig_default": ("two_signatures", "max_batch_size = 8\n"),
    "sig_double": ("two_signatures", 'max_batch_size = 8\n[litert]\nsignature = "double"\n'),
    "dequant": ("mlp_int8", "max_batch_size = 8\n[litert]\ndequantize_outputs = true\n"),
}  # fmt: skip


@pytest.fixture(scope="module")
def litert_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("litert-repo")
    build = tmp_path_factory.mktemp("litert-build")
    for name, (maker, config) in LITERT.items():
        path = getattr(tflite, maker)(build / f"{name}.tflite")
        publish(root, name, {"model.tflite": path}, config)
    with serve(root, build / "log") as server:
        yield server


def test_litert_without_a_resizable_batch_axis_runs_one_row_at_a_time(
    litert_server: ServerProcess,
) -> None:
    url = litert_server.url
    assert httpx.get(f"{url}/v2/models/fixed").json()["inputs"][0]["shape"] == [1, 4]
    xs = [np.full((1, 4), i, np.float32) for i in range(6)]
    body = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [0.0] * 8}]}
    assert httpx.post(f"{url}/v2/models/fixed/infer", json=body).status_code == 400
    with ThreadPoolExecutor(6) as pool:  # batched by the server, run row by row
        got = list(pool.map(lambda x: output(infer_json(litert_server, "fixed", x)), xs))
    for x, y in zip(xs, got, strict=True):
        np.testing.assert_array_equal(y, x)


def test_litert_signatures_by_name(litert_server: ServerProcess) -> None:
    x = rows(3)[:, :4]
    np.testing.assert_allclose(output(infer_json(litert_server, "sig_default", x)), x + 1)
    np.testing.assert_allclose(output(infer_json(litert_server, "sig_double", x)), 2 * x)


def test_litert_profile_says_it_has_whole_runs_only(litert_server: ServerProcess) -> None:
    r = httpx.get(f"{litert_server.url}/v2/models/sig_double/profile", params={"runs": 3},
                  timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    doc = r.json()
    assert (doc["backend"], doc["runs"], doc["nodes"]) == ("litert", 3, [])
    assert "no per-op profiler" in doc["note"] and doc["run_us"]["mean"] > 0


def test_litert_dequantized_outputs_are_fp32(litert_server: ServerProcess) -> None:
    meta = httpx.get(f"{litert_server.url}/v2/models/dequant").json()
    assert (meta["inputs"][0]["datatype"], meta["outputs"][0]["datatype"]) == ("INT8", "FP32")
    params = httpx.get(f"{litert_server.url}/v2/models/dequant/config").json()["parameters"]
    sx, zx = float(params["x.scale"]["string_value"]), int(params["x.zero_point"]["string_value"])
    x = rows(4, seed=9)
    xq = np.clip(np.round(x / sx) + zx, -128, 127).astype(np.int8)
    got = output(infer_json(litert_server, "dequant", xq))
    assert np.abs(got - reference(x)).max() <= 0.05 * np.abs(reference(x)).max()


def test_openvino_serves_an_onnx_file_by_set_and_caches_the_compiled_model(
    tmp_path: Path,
) -> None:
    root = tmp_path / "repo"
    publish(root, "m", {"model.onnx": models.mlp(tmp_path / "m.onnx")}, "max_batch_size = 8\n")
    home = {"EDGEINFER_HOME": str(tmp_path / "home")}
    cache = tmp_path / "home" / "openvino"
    for start in ("cold", "cached"):
        with serve(
            root, tmp_path / f"{start}.log", "--set", "m.backend=openvino", env=home
        ) as server:
            assert httpx.get(f"{server.url}/v2/models/m").json()["platform"] == "openvino"
            x = rows(2)
            close = output(infer_json(server, "m", x))
            assert np.abs(close - reference(x)).max() <= 0.02 * np.abs(reference(x)).max()
            if start == "cached":  # per-layer counters from OpenVINO's CPU plugin
                doc = httpx.get(f"{server.url}/v2/models/m/profile", params={"runs": 2},
                                timeout=120).json()  # fmt: skip
                assert doc["backend"] == "openvino" and doc["runs"] == 2
                assert {n["op_type"].split()[0] for n in doc["nodes"]} >= {"FullyConnected"}
        blobs = sorted(p.name for p in cache.glob("*.blob"))
        if start == "cold":
            first = blobs
            assert len(first) == 1
    assert blobs == first  # the second start loaded the blob: nothing new was compiled

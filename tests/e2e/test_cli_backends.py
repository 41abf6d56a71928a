"""`edgeinfer models add` of a .tflite model and an OpenVINO IR, then served as a user would."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

from edgeinfer.testing import models, tflite
from tests.e2e.test_cli import run
from tests.helpers import serve
from tests.integration.test_backend_conformance import reference


def test_models_add_tflite_and_openvino_ir_then_serve(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    run("models", "add", str(repo), "lite", str(tflite.mlp(tmp_path / "mlp.tflite")))
    ir = models.openvino_ir(models.mlp(tmp_path / "mlp.onnx"), tmp_path / "mlp.xml")
    run("models", "add", str(repo), "ov", str(ir["model.xml"]))
    assert sorted(p.name for p in (repo / "lite" / "1").iterdir()) == [
        "manifest.json", "model.tflite"]  # fmt: skip
    assert sorted(p.name for p in (repo / "ov" / "1").iterdir()) == [
        "manifest.json", "model.bin", "model.xml"]  # fmt: skip
    assert (repo / "lite" / "config.toml").read_text() == 'backend = "litert"\n'
    assert (repo / "ov" / "config.toml").read_text() == 'backend = "openvino"\n'
    with serve(repo, tmp_path / "log") as server:
        x = np.random.default_rng(0).uniform(-1, 1, (2, 16)).astype(np.float32)
        body = {"inputs": [{"name": "x", "shape": [2, 16], "datatype": "FP32",
                            "data": x.ravel().tolist()}]}  # fmt: skip
        for name, platform in (("lite", "litert_tflite"), ("ov", "openvino")):
            assert httpx.get(f"{server.url}/v2/models/{name}").json()["platform"] == platform
            r = httpx.post(f"{server.url}/v2/models/{name}/infer", json=body, timeout=60)
            y = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(2, 4)
            assert np.abs(y - reference(x)).max() <= 0.02 * np.abs(reference(x)).max()


def test_models_add_refuses_with_one_line(tmp_path: Path) -> None:
    lone = tmp_path / "lone.xml"
    lone.write_text("<net/>")
    proc = run("models", "add", str(tmp_path / "r"), "m", str(lone), ok=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "OpenVINO IR needs its weights file" in proc.stderr
    other = tmp_path / "model.pt"
    other.write_bytes(b"x")
    proc = run("models", "add", str(tmp_path / "r"), "m", str(other), ok=False)
    assert (
        proc.returncode == 2 and "a model file ends in .onnx, .gguf, .xml, .tflite" in proc.stderr
    )

"""The backend table: which backend a version gets, and what a user sees when it cannot load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeinfer import runtime
from edgeinfer.config import ModelConfig
from edgeinfer.errors import LoadError
from edgeinfer.runtime import BACKENDS, Backend
from edgeinfer.testing import models, tflite


def _config(**kw: object) -> ModelConfig:
    return ModelConfig.from_dict(dict(kw), "m")


@pytest.mark.parametrize(
    ("file", "backend"),
    [
        ("model.onnx", "onnxruntime"),
        ("model.gguf", "llama.cpp"),
        ("model.xml", "openvino"),
        ("model.tflite", "litert"),
    ],
)
def test_the_model_file_picks_the_backend_when_the_config_omits_it(
    tmp_path: Path, file: str, backend: str
) -> None:
    (tmp_path / file).write_bytes(b"x")
    chosen, path = runtime.resolve(tmp_path, _config())
    assert (chosen.name, path) == (backend, tmp_path / file)


def test_config_backend_serves_an_onnx_file_on_openvino(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"x")
    chosen, path = runtime.resolve(tmp_path, _config(backend="openvino"))
    assert (chosen.name, path.name) == ("openvino", "model.onnx")


@pytest.mark.parametrize(
    ("backend", "files", "needle"),
    [
        ("tensorflow", ["model.onnx"], "unknown backend 'tensorflow'; use one of onnxruntime"),
        ("litert", ["model.onnx"], "backend litert reads model.tflite; the version has none"),
        ("", [], "no model file (model.onnx, model.gguf, model.xml, model.tflite)"),
    ],
)
def test_a_version_without_a_servable_file_fails_with_one_line(
    tmp_path: Path, backend: str, files: list[str], needle: str
) -> None:
    for f in files:
        (tmp_path / f).write_bytes(b"x")
    with pytest.raises(LoadError) as e:
        runtime.load_instances(tmp_path, _config(backend=backend))
    assert needle in e.value.message and "\n" not in e.value.message


def test_a_backend_whose_package_is_missing_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table is the extension point: a backend whose package is not importable."""
    absent = Backend("absent", "edgeinfer.runtime.absent", ("model.absent",), "absent-pkg",
                     "edgeinfer_absent_pkg", "absent")  # fmt: skip
    monkeypatch.setitem(BACKENDS, "absent", absent)
    (tmp_path / "model.absent").write_bytes(b"x")
    with pytest.raises(LoadError, match=r"backend absent is not installed; pip install "
                       r"'edgeinfer\[absent\]'"):  # fmt: skip
        runtime.load_instances(tmp_path, _config())


def test_every_backend_module_has_the_entry_point() -> None:
    import importlib

    for backend in BACKENDS.values():
        if backend.installed():
            assert callable(importlib.import_module(backend.module).load_instances), backend.name


def test_instances_are_separate_and_agree(tmp_path: Path) -> None:
    models.mlp(tmp_path / "model.onnx")
    x = np.random.default_rng(0).random((3, 16), dtype=np.float32)
    for backend in ("onnxruntime", "openvino"):
        a, b = runtime.load_instances(tmp_path, _config(backend=backend, instance_count=2))
        assert a is not b
        np.testing.assert_allclose(a.run({"x": x})["y"], b.run({"x": x})["y"], rtol=1e-5)
        a.close()
        b.close()


def test_litert_refuses_a_truncated_file(tmp_path: Path) -> None:
    whole = tflite.mlp(tmp_path / "whole.tflite").read_bytes()
    for cut in range(8, len(whole), 4):  # every cut: refused with one line, never a crash
        (tmp_path / "model.tflite").write_bytes(whole[:cut])
        with pytest.raises(
            LoadError, match=r"truncated or corrupt|not a valid Flatbuffer|not a TFLite"
        ) as e:
            runtime.load_instances(tmp_path, _config())
        assert "\n" not in e.value.message
    (tmp_path / "model.tflite").write_bytes(b"\0" * 64)
    with pytest.raises(LoadError, match="not a TFLite model"):
        runtime.load_instances(tmp_path, _config())


def test_openvino_gives_a_fixed_batch_axis_a_dynamic_one(tmp_path: Path) -> None:
    import openvino as ov

    fixed = ov.convert_model(str(models.mlp(tmp_path / "m.onnx")), input=[("x", [1, 16])])
    ov.save_model(fixed, str(tmp_path / "model.xml"), compress_to_fp16=False)
    x = np.random.default_rng(0).random((3, 16), dtype=np.float32)
    (model,) = runtime.load_instances(tmp_path, _config(max_batch_size=8))
    assert model.inputs[0].shape == (-1, 16)
    w1, w2 = tflite.mlp_weights()
    want = np.maximum(x @ w1, 0) @ w2
    assert np.abs(model.run({"x": x})["y"] - want).max() <= 0.02 * np.abs(want).max()
    model.close()
    (model,) = runtime.load_instances(tmp_path, _config(max_batch_size=0))
    assert model.inputs[0].shape == (1, 16)  # no batch axis: the file's shape
    model.close()


@pytest.mark.parametrize("signature", ["serving_default", ""])
def test_litert_resizes_a_batch_axis_the_file_declares_as_one(
    tmp_path: Path, signature: str
) -> None:
    tflite.mlp(tmp_path / "model.tflite", signature=signature, batch=False)
    x = np.random.default_rng(0).random((3, 16), dtype=np.float32)
    w1, w2 = tflite.mlp_weights()
    (model,) = runtime.load_instances(tmp_path, _config(max_batch_size=8))
    assert model.inputs[0].shape == (-1, 16)  # the probe at load found it resizable
    np.testing.assert_allclose(model.run({"x": x})["y"], np.maximum(x @ w1, 0) @ w2, rtol=1e-4)
    np.testing.assert_allclose(model.run({"x": x[:1]})["y"], np.maximum(x[:1] @ w1, 0) @ w2,
                               rtol=1e-4)  # fmt: skip
    model.close()
    (model,) = runtime.load_instances(tmp_path, _config(max_batch_size=0))
    assert model.inputs[0].shape == (1, 16)  # no batch axis: the file's shape
    model.close()


@pytest.mark.parametrize("instances", [1, 2, 3])
def test_every_tensor_backend_shares_the_usable_cores_among_instances_by_default(
    instances: int,
) -> None:
    """No threads in the config: ONNX Runtime, OpenVINO (a stream per instance) and LiteRT all
    give each instance the default threads divided by the instances, at least one."""
    from edgeinfer.hardware import default_threads
    from edgeinfer.runtime.onnx import placement
    from edgeinfer.runtime.openvino import compile_properties

    config = _config(instance_count=instances)
    each = max(1, default_threads() // instances)
    props = compile_properties(config.openvino, instances)
    assert props["NUM_STREAMS"] == str(instances)
    assert props["INFERENCE_NUM_THREADS"] == str(each * instances)
    assert config.litert.intra_op_threads == 0 and config.onnxruntime.intra_op_threads == 0
    assert placement(config.onnxruntime)[0] == default_threads()  # shared at load, see onnx.py

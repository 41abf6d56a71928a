"""ONNX models built in-process with onnx.helper (no downloads): for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _save(graph: Any, path: Path, opset: int = 17) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _init(name: str, array: np.ndarray) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(array, name)


def mlp(
    path: Path, n_in: int = 16, hidden: int = 32, n_out: int = 4, seed: int = 0, scale: float = 1.0
) -> Path:
    """A two-layer MLP: `x` FP32 [N, n_in] -> `y` FP32 [N, n_out]. ~10 µs per call."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((n_in, hidden)).astype(np.float32) * scale
    w2 = rng.standard_normal((hidden, n_out)).astype(np.float32)
    b1 = np.zeros(hidden, np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_out])],
        [_init("w1", w1), _init("b1", b1), _init("w2", w2)],
    )
    return _save(graph, path)


def identity_multi(path: Path) -> Path:
    """Several dtypes in one model: `a` INT32 [N,3] -> `a_out`, `b` FP64 [N,2] -> `b_out`,
    `s` STRING [N] -> `s_out`. Exercises dtype handling in every codec."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Identity", [i], [i + "_out"]) for i in ("a", "b", "s")]
    graph = helper.make_graph(
        nodes,
        "identity_multi",
        [
            helper.make_tensor_value_info("a", TensorProto.INT32, ["N", 3]),
            helper.make_tensor_value_info("b", TensorProto.DOUBLE, ["N", 2]),
            helper.make_tensor_value_info("s", TensorProto.STRING, ["N"]),
        ],
        [
            helper.make_tensor_value_info("a_out", TensorProto.INT32, ["N", 3]),
            helper.make_tensor_value_info("b_out", TensorProto.DOUBLE, ["N", 2]),
            helper.make_tensor_value_info("s_out", TensorProto.STRING, ["N"]),
        ],
    )
    return _save(graph, path)


def _conv_bn_relu(
    nodes: list,
    inits: list,
    rng: np.random.Generator,
    x: str,
    name: str,
    cin: int,
    cout: int,
    k: int,
    stride: int,
    relu: bool = True,
) -> str:
    from onnx import helper

    w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
    inits += [_init(f"{name}_w", w), _init(f"{name}_b", np.zeros(cout, np.float32))]
    nodes.append(
        helper.make_node(
            "Conv",
            [x, f"{name}_w", f"{name}_b"],
            [f"{name}_c"],
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[k // 2] * 4,
        )
    )
    if not relu:
        return f"{name}_c"
    nodes.append(helper.make_node("Relu", [f"{name}_c"], [f"{name}_r"]))
    return f"{name}_r"


def resnet18_like(path: Path, image: int = 224, seed: int = 0) -> Path:
    """A ResNet-18-shaped CNN (BatchNorm folded into conv, random weights):
    `input` FP32 [N,3,image,image] -> `logits` FP32 [N,1000]."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    nodes: list = []
    inits: list = []
    x = _conv_bn_relu(nodes, inits, rng, "input", "stem", 3, 64, 7, 2)
    nodes.append(
        helper.make_node(
            "MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        )
    )
    x, cin = "pool", 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            name = f"s{stage}b{block}"
            h = _conv_bn_relu(nodes, inits, rng, x, name + "a", cin, cout, 3, stride)
            h = _conv_bn_relu(nodes, inits, rng, h, name + "b", cout, cout, 3, 1, relu=False)
            short = x
            if stride != 1 or cin != cout:
                short = _conv_bn_relu(nodes, inits, rng, x, name + "d", cin, cout, 1, stride, False)
            nodes.append(helper.make_node("Add", [h, short], [name + "_sum"]))
            nodes.append(helper.make_node("Relu", [name + "_sum"], [name + "_out"]))
            x, cin = name + "_out", cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1))
    fc = (rng.standard_normal((512, 1000)) * 0.05).astype(np.float32)
    inits += [_init("fc_w", fc), _init("fc_b", np.zeros(1000, np.float32))]
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "resnet18_like",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, image, image])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])],
        inits,
    )
    return _save(graph, path)


def publish(
    repo: Path,
    name: str,
    onnx_path: Path,
    config: str = "",
    version: int | None = None,
    extra: dict[str, Path] | None = None,
) -> Path:
    """Write `repo/name/config.toml` (if new) and publish `onnx_path` as a version."""
    from edgeinfer.repository import add_version

    model_dir = repo / name
    model_dir.mkdir(parents=True, exist_ok=True)
    cfg = model_dir / "config.toml"
    if config or not cfg.exists():
        cfg.write_text(config or 'backend = "onnxruntime"\n')
    return add_version(model_dir, {"model.onnx": onnx_path, **(extra or {})}, version)


def slow(path: Path, depth: int = 30, side: int = 256, seed: int = 0) -> Path:
    """A model built to be slow (for queueing tests): `x` FP32 [N,16] -> `y` FP32 [N,1].

    Each row becomes a side x side matrix squared `depth` times (with tanh to stay finite), so
    one row costs ~depth * 2 * side^3 FLOPs: ~1 GFLOP (tens of ms) at the defaults.
    """
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((16, side * side)) / (2 * np.sqrt(side))).astype(np.float32)
    shape = np.array([-1, side, side], np.int64)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["flat"]),
        helper.make_node("Reshape", ["flat", "shape"], ["h0"]),
    ]
    for i in range(depth):
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"h{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("Abs", [f"h{depth}"], ["a"]))
    nodes.append(helper.make_node("ReduceMean", ["a"], ["y"], axes=[1, 2], keepdims=0))
    nodes.append(helper.make_node("Unsqueeze", ["y", "one"], ["y1"]))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y1", TensorProto.FLOAT, ["N", 1])],
        [_init("w", w), _init("shape", shape), _init("one", np.array([1], np.int64))],
    )
    return _save(graph, path)


def failing(path: Path, limit: int = 4) -> Path:
    """Passes warm-up (zeros) but fails at run time once any input value exceeds `limit`:
    `x` FP32 [N,16] -> `y` FP32 [N,4]. The index of a Gather comes from the data, so ONNX Runtime
    raises an out-of-bounds error, like a model that breaks on real traffic."""
    from onnx import TensorProto, helper

    table = np.arange(limit + 1, dtype=np.float32).reshape(-1, 1) * np.ones((1, 4), np.float32)
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], axes=[1], keepdims=0),
        helper.make_node("Cast", ["m"], ["idx"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "idx"], ["y"], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "failing",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [_init("table", table)],
    )
    return _save(graph, path)


def colours(path: Path, side: int = 16, layout: str = "NCHW") -> Path:
    """A classifier that knows colours: `image` FP32 [N,3,side,side] (or [N,side,side,3] for
    NHWC) -> `scores` FP32 [N,3], each channel's mean minus the mean of the other two. A red
    photo's top class is 0, a green one's 1, a blue one's 2."""
    from onnx import TensorProto, helper

    axes = [2, 3] if layout == "NCHW" else [1, 2]
    shape: list[str | int] = ["N", 3, side, side] if layout == "NCHW" else ["N", side, side, 3]
    w = np.full((3, 3), -0.5, np.float32) + 1.5 * np.eye(3, dtype=np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["m"], axes=axes, keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "colours",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
        [_init("w", w)],
    )
    return _save(graph, path)


def openvino_ir(onnx_path: Path, xml: Path) -> dict[str, Path]:
    """OpenVINO IR (`xml` + its .bin, FP32 weights) converted from an ONNX file: the files a
    repository version holds."""
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    return {"model.xml": xml, "model.bin": xml.with_suffix(".bin")}


def qdq_int8(onnx_path: Path, out: Path, samples: list[dict[str, np.ndarray]]) -> Path:
    """Static QDQ INT8 calibrated on `samples` (U8 activations, S8 per-channel weights: the
    layout ONNX Runtime fuses on x86, and what `edgeinfer quantize` writes for CNNs)."""
    from onnxruntime import quantization as q

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter(samples)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.rows, None)

    q.quantize_static(
        str(onnx_path),
        str(out),
        Reader(),
        quant_format=q.QuantFormat.QDQ,
        activation_type=q.QuantType.QUInt8,
        weight_type=q.QuantType.QInt8,
        per_channel=True,
    )
    return out

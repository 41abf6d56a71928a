"""Per-layer profiles: ONNX Runtime's profiler on tiny onnx.helper models, and the summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeinfer.config import ModelConfig, OrtOptions, TextOptions
from edgeinfer.errors import InvalidInput, Unavailable
from edgeinfer.runtime import profile
from edgeinfer.runtime.profile import GraphNode, profile_model, render, summarize
from edgeinfer.testing import models


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    version = tmp_path_factory.mktemp("mlp") / "1"
    models.mlp(version / "model.onnx")
    return version


@pytest.fixture(scope="module")
def cnn_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    version = tmp_path_factory.mktemp("cnn") / "1"
    models.resnet18_like(version / "model.onnx", image=32)
    return version


def test_profile_of_an_mlp(mlp_dir: Path) -> None:
    doc = profile_model(mlp_dir, ModelConfig("mlp", max_batch_size=8), batch=4, runs=5)
    assert doc["runs"] == 5 and doc["warmup_runs"] == 1 and doc["batch"] == 4
    assert doc["inputs"] == {"x": [4, 16]}
    assert doc["nodes"], doc
    assert sum(n["share"] for n in doc["nodes"]) == pytest.approx(1.0, abs=0.01)
    assert sum(o["share"] for o in doc["op_types"]) == pytest.approx(1.0, abs=0.01)
    assert doc["kernel_us"] == pytest.approx(sum(n["mean_us"] for n in doc["nodes"]), rel=0.01)
    assert [n["mean_us"] for n in doc["nodes"]] == sorted(
        (n["mean_us"] for n in doc["nodes"]), reverse=True
    )
    ops = {o["op_type"] for o in doc["op_types"]}
    assert ops & {"MatMul", "FusedGemm", "Gemm"}, ops
    for n in doc["nodes"]:  # every node runs once per run, on the CPU
        assert n["calls_per_run"] == 1 and n["provider"] == "CPUExecutionProvider"


def test_unnamed_nodes_map_back_to_the_original_graph(cnn_dir: Path) -> None:
    """onnx.helper nodes have no names: ORT calls them <Op>_<index>; the profile labels them
    by the tensor they write."""
    config = ModelConfig("cnn", onnxruntime=OrtOptions(graph_optimization_level="basic"))
    doc = profile_model(cnn_dir, config, batch=1, runs=2)
    convs = [n for n in doc["nodes"] if n["op_type"] == "Conv"]
    assert len(convs) == 20  # stem + 16 in the blocks + 3 downsampling shortcuts
    labels = {n["layer"] for n in convs}
    assert "Conv(stem_c)" in labels and "Conv(s3b1b_c)" in labels
    top = doc["op_types"][0]
    assert top["op_type"] == "Conv" and top["share"] > 0.5


def test_fused_kernels_name_every_original_node() -> None:
    """ORT names a Conv+Relu it fused (NCHWc) after the Relu's output tensor."""
    nodes = [
        GraphNode(0, "/Div", "Div", ("image", "c"), ("/Div_output_0",), "Div"),
        GraphNode(1, "/layers/layers.0/Conv", "Conv", ("/Div_output_0", "w", "b"),
                  ("/layers/layers.0/Conv_output_0",), "layers/layers.0/Conv"),
        GraphNode(2, "/layers/layers.1/Relu", "Relu", ("/layers/layers.0/Conv_output_0",),
                  ("/layers/layers.1/Relu_output_0",), "layers/layers.1/Relu"),
    ]  # fmt: skip
    events = _events([
        [("/layers/layers.1/Relu_output_0_nchwc", "Conv", 50), ("/Div", "Div", 10),
         ("ReorderOutput", "ReorderOutput", 5)],
    ] * 2)  # fmt: skip
    doc = summarize(events, nodes, warmup_runs=1)
    conv = doc["nodes"][0]
    assert conv["layer"] == "layers/layers.0/Conv + layers/layers.1/Relu"
    assert conv["original_nodes"] == ["/layers/layers.0/Conv", "/layers/layers.1/Relu"]
    assert doc["nodes"][1]["layer"] == "Div"
    assert doc["nodes"][2]["layer"] == "ReorderOutput"  # added by ORT: no original node


def test_summary_drops_warmup_and_averages_per_run() -> None:
    events = _events([
        [("a", "Conv", 1000), ("b", "Relu", 1000)],  # warm-up: slow, must not count
        [("a", "Conv", 30), ("b", "Relu", 10)],
        [("a", "Conv", 50), ("b", "Relu", 10), ("b", "Relu", 20)],  # b ran twice in this run
    ])  # fmt: skip
    doc = summarize(events, warmup_runs=1)
    assert doc["runs"] == 2
    assert doc["kernel_us"] == 60.0
    a, b = doc["nodes"]
    assert (a["node"], a["mean_us"], a["share"]) == ("a", 40.0, pytest.approx(0.6667, abs=1e-4))
    assert (b["node"], b["mean_us"], b["calls_per_run"]) == ("b", 20.0, 1.5)
    assert (a["p50_us"], b["p50_us"]) == (40.0, 20.0)
    assert [o["op_type"] for o in doc["op_types"]] == ["Conv", "Relu"]
    with pytest.raises(ValueError, match="nothing left"):
        summarize(events, warmup_runs=3)


def test_text_models_get_token_ids(tmp_path: Path) -> None:
    version = tmp_path / "1"
    _tiny_text_model(version)
    config = ModelConfig("txt", text=TextOptions(max_length=8))
    doc = profile_model(version, config, batch=3, runs=2)
    # "The quick brown fox jumps over the lazy dog." is 10 tokens, truncated to 8.
    assert doc["inputs"] == {"input_ids": [3, 8], "attention_mask": [3, 8]}


@pytest.mark.parametrize(("batch", "runs", "needle"), [
    (1, 0, "runs must be between 1 and 1000"),
    (1, 1001, "runs must be between 1 and 1000"),
    (0, 5, "batch must be between 1 and 8"),
    (9, 5, "batch must be between 1 and 8"),
])  # fmt: skip
def test_bad_arguments(mlp_dir: Path, batch: int, runs: int, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        profile_model(mlp_dir, ModelConfig("mlp", max_batch_size=8), batch, runs)


def test_one_profile_at_a_time(mlp_dir: Path) -> None:
    with profile._LOCK, pytest.raises(Unavailable, match="another profile"):
        profile_model(mlp_dir, ModelConfig("mlp"), 1, 1)


def test_render_tables() -> None:
    doc = summarize(_events([[("a", "Conv", 30), ("b", "Relu", 10)]] * 2))
    doc.update(model="m", version="1", batch=1)
    text = render(doc)
    assert text.splitlines()[0].startswith("m v1: batch 1, 1 runs")
    assert "layer" in text and "op type" in text
    md = render(doc, markdown=True)
    assert "| layer | op | mean µs | p50 µs | share |" in md
    assert "| a | Conv | 30.0 | 30.0 | 75.0% |" in md
    assert "... and 1 more nodes" in render(doc, top=1)


# ---- helpers ----------------------------------------------------------------------------------
def _events(runs: list[list[tuple[str, str, int]]]) -> list[dict[str, Any]]:
    """A profile trace: per run, kernels (name, op, µs) back to back, then the model_run."""
    out: list[dict[str, Any]] = []
    ts = 100
    for kernels in runs:
        start = ts
        for name, op, dur in kernels:
            out.append({"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur,
                        "args": {"op_name": op, "provider": "CPUExecutionProvider"}})  # fmt: skip
            out.append({"cat": "Node", "name": f"{name}_fence_before", "ts": ts, "dur": 0})
            ts += dur
        out.append({"cat": "Session", "name": "model_run", "ts": start, "dur": ts - start})
        ts += 10
    return out


def _tiny_text_model(version: Path) -> None:
    import onnx
    from onnx import TensorProto, helper
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    words = ["[UNK]", "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "."]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    version.mkdir(parents=True)
    tok.save(str(version / "tokenizer.json"))
    nodes = [helper.make_node("Mul", ["input_ids", "attention_mask"], ["m"]),
             helper.make_node("Cast", ["m"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["f", "axes"], ["y"], keepdims=0)]  # fmt: skip
    graph = helper.make_graph(
        nodes, "text",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", "S"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", "S"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
        [onnx.numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(version / "model.onnx"))

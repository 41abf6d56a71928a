"""Data readers: streamed .npz, text tokenized like the server, image folders; clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeinfer.config import ModelConfig, TextOptions
from edgeinfer.optimize.data import NpzDataset, open_dataset
from edgeinfer.optimize.source import ModelSource, OptimizeError
from edgeinfer.types import TensorSpec

X = (TensorSpec("x", "FP32", (-1, 3)),)


def _src(path: Path = Path("m.onnx"), **kw: object) -> ModelSource:
    return ModelSource(path, ModelConfig(name="m"), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_streams_batches_casts_and_keeps_labels(tmp_path: Path, compressed: bool) -> None:
    x = np.arange(30, dtype=np.float64).reshape(10, 3)
    save = np.savez_compressed if compressed else np.savez
    save(tmp_path / "d.npz", x=x, labels=np.arange(10))
    data = open_dataset(tmp_path / "d.npz", X, _src())
    assert len(data) == 10
    batches = list(data.batches(4))
    assert [len(b["x"]) for b in batches] == [4, 4, 2]
    assert all(b["x"].dtype == np.float32 and set(b) == {"x"} for b in batches)
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), x)
    assert [len(b["x"]) for b in data.batches(4, limit=5)] == [4, 1]
    np.testing.assert_array_equal(data.labels(), np.arange(10))


def test_npz_reads_rows_not_whole_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((1000, 3), np.float32))
    data = NpzDataset(tmp_path / "d.npz", X)
    first = next(data.batches(2))["x"]
    assert first.shape == (2, 3)
    raw = first
    while isinstance(raw.base, np.ndarray):
        raw = raw.base
    assert isinstance(raw.base, bytes) and len(raw.base) == 2 * 3 * 4  # two rows were read


def test_fixed_batch_axis_is_respected(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 3), np.float32))
    data = open_dataset(tmp_path / "d.npz", (TensorSpec("x", "FP32", (1, 3)),), _src())
    assert [len(b["x"]) for b in data.batches(16)] == [1] * 5


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"y": np.zeros((2, 3), np.float32)}, "do not match the model inputs"),
        ({"x": np.zeros((2, 4), np.float32)}, "has shape [2, 4], the model takes ['N', 3]"),
        ({"x": np.zeros((2, 3, 1), np.float32)}, "has shape [2, 3, 1]"),
        ({"x": np.zeros((0, 3), np.float32)}, "empty dataset"),
        ({"x": np.zeros((2, 3), np.float32), "labels": np.zeros(2)}, "1-D integer"),
        ({"x": np.zeros((2, 3), np.int64)}, "holds int64, the model takes FP32"),
        ({"x": np.zeros((2, 3), np.float32), "labels": np.zeros(3, int)}, "different numbers"),
    ],
)
def test_npz_mismatches_are_one_clear_error(tmp_path: Path, arrays: dict, message: str) -> None:
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(OptimizeError, match=r"d\.npz") as err:
        open_dataset(tmp_path / "d.npz", X, _src())
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unsupported_and_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("1,2,3\n")
    with pytest.raises(OptimizeError, match="unsupported data"):
        open_dataset(tmp_path / "d.csv", X, _src())
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(OptimizeError, match=r"not a readable \.npz"):
        open_dataset(tmp_path / "bad.npz", X, _src())
    with pytest.raises(OptimizeError, match="no such file"):
        open_dataset(tmp_path / "missing.npz", X, _src())


# ---- text -----------------------------------------------------------------------------------
def _text_version(tmp_path: Path) -> tuple[Path, ModelConfig]:
    """A repository version of a tiny [text] model with a word-level tokenizer."""
    from onnx import TensorProto, helper
    from tokenizers import Tokenizer, models, pre_tokenizers

    from edgeinfer.testing import models as onnx_models

    vocab = {"[UNK]": 0, "[PAD]": 1, "hello": 2, "world": 3, "edge": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["embedding"], to=TensorProto.FLOAT),
         helper.make_node("Identity", ["attention_mask"], ["mask_out"])], "text",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["N", "S"])
         for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", "S"]),
         helper.make_tensor_value_info("mask_out", TensorProto.INT64, ["N", "S"])],
    )  # fmt: skip
    onnx_file = onnx_models._save(graph, tmp_path / "text.onnx")
    version = onnx_models.publish(tmp_path / "repo", "t", onnx_file,
                                  '[text]\nmax_length = 3\n',
                                  extra={"tokenizer.json": tmp_path / "tokenizer.json"})  # fmt: skip
    config = ModelConfig(name="t", text=TextOptions(max_length=3))
    return version, config


def test_text_is_tokenized_like_the_server(tmp_path: Path) -> None:
    from edgeinfer.runtime.onnx import OnnxModel
    from edgeinfer.runtime.text import TextModel

    version, config = _text_version(tmp_path)
    lines = ["# a comment", "hello world", "", "edge", "hello edge world edge unknown"]
    (tmp_path / "s.txt").write_text("\n".join(lines) + "\n")
    inputs = (TensorSpec("input_ids", "INT64", (-1, -1)),
              TensorSpec("attention_mask", "INT64", (-1, -1)))  # fmt: skip
    data = open_dataset(tmp_path / "s.txt", inputs,
                        ModelSource(version / "model.onnx", config, version_dir=version))  # fmt: skip
    assert len(data) == 3
    server = TextModel(OnnxModel.load(version, config), version, config.text)  # type: ignore[arg-type]
    batches = list(data.batches(2))
    sentences = ["hello world", "edge", "hello edge world edge unknown"]
    for got, texts in zip(batches, (sentences[:2], sentences[2:]), strict=True):
        want = server.tokenize(texts)
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    assert batches[1]["input_ids"].shape == (1, 3)  # truncated at max_length


def test_text_needs_a_text_model_and_sentences(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_text("hello\n")
    with pytest.raises(OptimizeError, match=r"needs a repository version of a \[text\] model"):
        open_dataset(tmp_path / "s.txt", X, _src())
    version, config = _text_version(tmp_path)
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    inputs = (TensorSpec("input_ids", "INT64", (-1, -1)),
              TensorSpec("attention_mask", "INT64", (-1, -1)))  # fmt: skip
    with pytest.raises(OptimizeError, match="empty dataset"):
        open_dataset(tmp_path / "empty.txt", inputs,
                     ModelSource(version / "model.onnx", config, version_dir=version))  # fmt: skip


# ---- images ---------------------------------------------------------------------------------
IMG = (TensorSpec("image", "FP32", (-1, 3, 4, 6)),)


def test_image_folder_resizes_normalizes_and_labels_by_subfolder(tmp_path: Path) -> None:
    from PIL import Image as image

    for cls, value in (("cat", 255), ("dog", 0)):
        (tmp_path / cls).mkdir()
        for i in range(2):
            image.new("RGB", (12, 8), (value, value, value)).save(tmp_path / cls / f"{i}.png")
    prep = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    data = open_dataset(tmp_path, IMG, _src(preprocess=prep))
    assert len(data) == 4
    np.testing.assert_array_equal(data.labels(), [0, 0, 1, 1])
    batch = next(data.batches(8))["image"]
    assert batch.shape == (4, 3, 4, 6) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[:2], 1.0)  # (255/255 - 0.5) / 0.5
    np.testing.assert_allclose(batch[2:], -1.0)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(OptimizeError, match="empty dataset"):
        open_dataset(tmp_path, IMG, _src())
    with pytest.raises(OptimizeError, match="one 4-D image input"):
        open_dataset(tmp_path, X, _src())
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(OptimizeError, match="layout must be"):
        open_dataset(tmp_path, IMG, _src(preprocess={"layout": "CHW"}))
    with pytest.raises(OptimizeError, match=r"bad.png: cannot read the image: not an image"):
        next(open_dataset(tmp_path, IMG, _src()).batches(4))

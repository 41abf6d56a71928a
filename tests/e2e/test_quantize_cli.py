"""`quantize` / `optimize` as a user runs them: exit codes, one-line errors, nothing left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeinfer.testing import models
from tests.unit.optimize.helpers import identity, outlier_mlp, samples

CLI = [sys.executable, "-m", "edgeinfer.cli"]
FAST = ["--bench-seconds", "0.1"]


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=120)


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with one model version, its data, and nothing else."""
    root = tmp_path / "repo"
    models.publish(root, "clf", outlier_mlp(tmp_path / "m.onnx"))
    (tmp_path / "m.onnx").unlink()
    return root


def _bad_cases(tmp: Path, repo: Path) -> list[tuple[list[str | Path], str]]:
    version = repo / "clf" / "1"
    (tmp / "data").mkdir()
    d = tmp / "data"
    (d / "notes.onnx").write_text("this is not a model\n")
    (d / "weights.bin").write_bytes(b"\0" * 16)
    identity(d / "id.onnx")
    samples(d / "good.npz")
    np.savez(d / "names.npz", input=np.zeros((4, 16), np.float32))
    np.savez(d / "shape.npz", x=np.zeros((4, 8), np.float32))
    np.savez(d / "empty.npz", x=np.zeros((0, 16), np.float32))
    (d / "empty.txt").write_text("# nothing\n")
    return [
        (["quantize", d / "notes.onnx", "--mode", "dynamic"], "not an ONNX model"),
        (["quantize", d / "weights.bin", "--mode", "dynamic"], "not an ONNX file"),
        (["quantize", d / "missing.onnx", "--mode", "dynamic"], "no such file"),
        (["quantize", d / "id.onnx", "--mode", "dynamic"], "nothing to quantize"),
        (["quantize", version, "--mode", "static"], "needs --calibration"),
        (["quantize", version, "--mode", "static", "--calibration", d / "names.npz"],
         "do not match the model inputs"),
        (["quantize", version, "--mode", "static", "--calibration", d / "shape.npz"],
         "has shape [4, 8], the model takes ['N', 16]"),
        (["quantize", version, "--mode", "static", "--calibration", d / "empty.npz"],
         "empty dataset"),
        (["quantize", version, "--mode", "dynamic", "--eval", d / "empty.npz"], "empty dataset"),
        (["quantize", version, "--mode", "dynamic", "--eval", d / "empty.txt"],
         "needs a repository version of a [text] model"),
        (["quantize", version, "--mode", "dynamic", "--auto"], "--auto needs --eval"),
        (["quantize", version, "--mode", "dynamic", "--eval", d / "good.npz", "--metric", "mse",
          "--min-agreement", "0.9"], "needs --metric top1 or cosine"),
        (["optimize", d / "notes.onnx"], "not an ONNX model"),
    ]  # fmt: skip


def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path: Path, repo: Path) -> None:
    cases = _bad_cases(tmp_path, repo)
    before = listing(tmp_path)
    for args, message in cases:
        proc = run(*args)
        where = f"{args}: {proc.stderr}"
        assert proc.returncode == 2, where
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("edgeinfer: error: "), where
        assert message in proc.stderr, where
        assert proc.stdout == "", where
        assert listing(tmp_path) == before, where


def test_existing_output_is_not_overwritten(tmp_path: Path) -> None:
    model = outlier_mlp(tmp_path / "m.onnx")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    proc = run("quantize", model, "--mode", "dynamic", "--output", tmp_path / "out")
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert listing(tmp_path / "out") == ["keep.txt"]


def test_rejected_exit_1_then_accepted_version_published(tmp_path: Path, repo: Path) -> None:
    version = repo / "clf" / "1"
    ev = samples(tmp_path / "eval.npz")
    proc = run("quantize", version, "--mode", "dynamic", "--no-per-channel", "--eval", ev,
               "--max-drop", "0", *FAST)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "# edgeinfer quantize: REJECTED" in proc.stdout
    assert proc.stderr.startswith("rejected: top-1 drop") and "nothing published" in proc.stderr
    assert listing(repo / "clf") == ["1", "1/manifest.json", "1/model.onnx", "config.toml"]

    proc = run("quantize", version, "--mode", "dynamic", "--eval", ev, "--max-drop", "0.05",
               "--json", *FAST)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["status"] == "accepted" and report["gate"]["passed"] is True
    assert report["published"] == str(repo / "clf" / "2")
    assert "accepted: published" in proc.stderr
    assert json.loads((repo / "clf" / "2" / "report.json").read_text())["status"] == "accepted"


def test_plain_file_output_and_optimize(tmp_path: Path) -> None:
    model = outlier_mlp(tmp_path / "m.onnx")
    proc = run("quantize", model, "--mode", "dynamic", "--output", tmp_path / "q.onnx", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert "gate: passed (not evaluated" in proc.stdout
    assert {"q.onnx", "q.report.json", "q.report.md"} <= set(listing(tmp_path))

    ev = samples(tmp_path / "eval.npz")
    proc = run("optimize", model, "--level", "extended", "--eval", ev, "--metric", "mse",
               "--max-drop", "1e-6", *FAST)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "m-opt-extended"
    assert listing(out) == ["model.onnx", "report.json", "report.md"]
    report = json.loads((out / "report.json").read_text())
    assert report["tool"] == "edgeinfer optimize" and report["accuracy"]["mse"] < 1e-9
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left

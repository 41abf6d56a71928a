"""The ORT wrappers: int4 weight-only quantization and its missing-dependency error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edgeinfer.optimize.quantize import QuantSettings, quantize
from edgeinfer.optimize.source import OptimizeError
from edgeinfer.testing import models


def test_int4_turns_matmuls_into_matmulnbits(tmp_path: Path) -> None:
    import onnx
    import onnx_ir  # noqa: F401  MatMulNBitsQuantizer's dependency: missing fails, never skips

    src = models.mlp(tmp_path / "m.onnx", n_in=64, hidden=64, n_out=8)
    quantize(src, tmp_path / "q.onnx", QuantSettings("int4", block_size=32))
    ops = [n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node]
    assert ops.count("MatMulNBits") == 2 and "MatMul" not in ops


def test_int4_without_its_dependency_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization.matmul_nbits_quantizer", None)
    src = models.mlp(tmp_path / "m.onnx", n_in=64, hidden=64)
    with pytest.raises(OptimizeError, match=r"pip install onnx-ir"):
        quantize(src, tmp_path / "q.onnx", QuantSettings("int4"))
    assert not (tmp_path / "q.onnx").exists()


def test_quantizer_failures_become_one_line(tmp_path: Path) -> None:
    src = models.mlp(tmp_path / "m.onnx")
    with pytest.raises(OptimizeError, match="could not quantize it") as err:
        quantize(src, tmp_path / "missing-dir" / "q.onnx", QuantSettings("dynamic"))
    assert "\n" not in str(err.value)

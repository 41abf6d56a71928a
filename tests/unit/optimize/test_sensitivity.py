"""The switch model behind --auto, the search for the fewest FP32 nodes, and settings checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeinfer.optimize.auto import _smallest_passing
from edgeinfer.optimize.quantize import QuantSettings, quantize, weighted_nodes
from edgeinfer.optimize.sensitivity import (
    ensure_names,
    quantized_nodes,
    run_switched,
    switch_model,
)
from edgeinfer.optimize.source import OptimizeError
from tests.unit.optimize.helpers import outlier_mlp


def _session(model: bytes | Path) -> object:
    import onnxruntime as ort

    arg = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(arg, providers=["CPUExecutionProvider"])


def test_switch_model_selects_fp32_or_quantized_per_node(tmp_path: Path) -> None:
    import onnx

    src = outlier_mlp(tmp_path / "m.onnx")
    dst = tmp_path / "q.onnx"
    quantize(src, dst, QuantSettings("dynamic", per_channel=False))
    fp32, q = onnx.load(str(src)), onnx.load(str(dst))
    nodes = quantized_nodes(fp32, q)
    assert [n.name for n in nodes] == ["fc1", "fc2"]
    switch = _session(switch_model(fp32, q, nodes).SerializeToString())
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)

    def batches():  # type: ignore[no-untyped-def]
        return iter([{"x": x}])

    want_q = _session(dst).run(None, {"x": x})[0]  # type: ignore[attr-defined]
    want_f = _session(src).run(None, {"x": x})[0]  # type: ignore[attr-defined]
    np.testing.assert_allclose(run_switched(switch, batches, 2, set()), want_q, rtol=1e-5)
    np.testing.assert_allclose(run_switched(switch, batches, 2, {0, 1}), want_f, rtol=1e-5)
    partial = run_switched(switch, batches, 2, {0})
    assert not np.allclose(partial, want_q) and not np.allclose(partial, want_f)


def test_unnamed_nodes_get_names(tmp_path: Path) -> None:
    import onnx

    from edgeinfer.testing import models

    src = models.mlp(tmp_path / "m.onnx")
    named = ensure_names(src, tmp_path)
    assert named != src
    assert all(n.name for n in onnx.load(str(named)).graph.node)
    assert ensure_names(named, tmp_path) == named


def test_weighted_nodes_by_mode(tmp_path: Path) -> None:
    import onnx

    model = onnx.load(str(outlier_mlp(tmp_path / "m.onnx")))
    assert weighted_nodes(model, "dynamic") == ["fc1", "fc2"]
    assert weighted_nodes(model, "int4") == ["fc1", "fc2"]


@pytest.mark.parametrize(
    ("first_pass", "limit", "expected"),
    [(1, 10, 1), (3, 10, 3), (6, 10, 6), (10, 10, 10), (11, 10, None), (5, 5, 5), (1, 1, 1)],
)
def test_smallest_passing_doubles_then_bisects(first_pass: int, limit: int,
                                               expected: int | None) -> None:  # fmt: skip
    calls: list[int] = []

    def passes(k: int) -> bool:
        calls.append(k)
        return k >= first_pass

    assert _smallest_passing(passes, limit) == expected
    assert len(calls) == len(set(calls)) <= 2 * limit.bit_length()
    assert all(1 <= k <= limit for k in calls)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"mode": "int2"}, "--mode must be one of"), ({"mode": "static", "method": "kl"}, "--method"),
     ({"mode": "static", "format": "x"}, "--format"), ({"mode": "int4", "block_size": 24},
                                                       "power of two")],
)  # fmt: skip
def test_settings_are_checked(kwargs: dict, message: str) -> None:
    with pytest.raises(OptimizeError, match=message):
        QuantSettings(**kwargs)


def test_settings_describe_what_was_used() -> None:
    assert QuantSettings("static").describe()["activation_type"] == "QUInt8"
    assert "method" not in QuantSettings("dynamic").describe()
    int4 = QuantSettings("int4", block_size=64).describe()
    assert int4["block_size"] == 64 and int4["bits"] == 4 and "per_channel" not in int4

"""Metrics against FP32 and the accuracy gate's decision."""

from __future__ import annotations

import numpy as np
import pytest

from edgeinfer.optimize.metrics import Gate, compare, default_metric, nearest


def test_top1_with_labels_is_an_accuracy_drop() -> None:
    ref = np.eye(4)[[0, 1, 2, 3]]
    out = np.eye(4)[[0, 1, 2, 2]]
    m = compare("top1", ref, out, labels=np.array([0, 1, 2, 2]))
    assert m["accuracy_fp32"] == 0.75 and m["accuracy"] == 1.0
    assert m["drop"] == -0.25 and m["top1_agreement"] == 0.75
    m = compare("top1", ref, out)
    assert m["drop"] == 0.25  # no labels: 1 - agreement


def test_cosine_and_nearest_neighbour_agreement() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((20, 8))
    m = compare("cosine", ref, ref * 3.0)  # scale does not change direction
    assert m["mean_cosine"] == pytest.approx(1.0) and m["nn_agreement"] == 1.0
    assert m["drop"] == pytest.approx(0.0, abs=1e-12)
    m = compare("cosine", ref, ref[::-1].copy())
    assert m["mean_cosine"] < 0.9 and m["drop"] > 0.1


def test_nearest_skips_self() -> None:
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    np.testing.assert_array_equal(nearest(x), [1, 0, 1])


def test_mse_and_abs_errors() -> None:
    m = compare("mse", np.zeros((2, 2)), np.array([[1.0, 0.0], [0.0, -3.0]]))
    assert m["mse"] == 2.5 == m["drop"]
    assert m["max_abs_error"] == 3.0 and m["mean_abs_error"] == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        compare("mse", np.zeros((2, 2)), np.zeros((2, 3)))


def test_default_metric() -> None:
    assert default_metric((-1, 10), "logits", True, False) == "top1"
    assert default_metric((-1, 384), "embedding", False, False) == "cosine"
    assert default_metric((-1, 384), "out", False, True) == "cosine"
    assert default_metric((-1, 10), "logits", False, False) == "top1"
    assert default_metric((-1, 1), "y", False, False) == "mse"


def test_gate_passes_and_fails_with_a_reason() -> None:
    gate = Gate("top1", max_drop=0.005)
    ok = gate.check({"drop": 0.0044, "top1_agreement": 0.99})
    assert ok["passed"] and ok["reason"] == "top-1 drop 0.44 pp <= 0.50 pp"
    bad = gate.check({"drop": 0.0089})
    assert not bad["passed"] and bad["reason"] == "top-1 drop 0.89 pp > 0.50 pp"
    assert Gate("top1", max_drop=0.0).check({"drop": 0.0})["passed"]
    assert not Gate("top1", max_drop=0.0).check({"drop": 1 / 450})["passed"]


def test_gate_min_agreement() -> None:
    gate = Gate("cosine", max_drop=0.005, min_agreement=0.95)
    r = gate.check({"drop": 0.004, "nn_agreement": 0.94})
    assert not r["passed"] and "nearest-neighbour agreement 0.9400 < 0.95" in r["reason"]
    r = gate.check({"drop": 0.006, "nn_agreement": 0.97})
    assert not r["passed"] and r["reason"].startswith("1 - mean cosine 0.006 > 0.005")
    r = gate.check({"drop": 0.004, "nn_agreement": 0.97})
    assert r["passed"] and r["min_agreement"] == 0.95


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"metric": "f1"}, "unknown metric"), ({"metric": "top1", "max_drop": -1}, ">= 0"),
     ({"metric": "mse", "min_agreement": 0.9}, "top1 or cosine"),
     ({"metric": "top1", "min_agreement": 2}, "between 0 and 1")],
)  # fmt: skip
def test_gate_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Gate(**kwargs)

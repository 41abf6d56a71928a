"""How far an optimized model's outputs are from the FP32 model's, and the gate that decides.

Every metric yields a `drop` (0 = identical; larger is worse) that the gate compares with
`--max-drop`:
- `top1` (classifiers): with labels, FP32 accuracy minus optimized accuracy (0.005 = 0.5
  percentage points); without, 1 - top-1 agreement with FP32.
- `cosine` (embedders): 1 - mean cosine similarity to the FP32 output, per sample. Also
  nearest-neighbour agreement: for each sample, is its nearest other sample the same under both?
- `mse` (anything else): mean squared error to the FP32 output.
An optional `min_agreement` also requires top-1 agreement (top1) or nearest-neighbour agreement
(cosine) to reach that share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

METRICS = ("top1", "cosine", "mse")
DEFAULT_MAX_DROP = 0.01
_EPS = 1e-12


def default_metric(
    output_shape: tuple[int, ...], output_name: str, has_labels: bool, is_text: bool
) -> str:
    """Labels -> top1; a text model or an `*embed*` output -> cosine; [N, C] -> top1; else mse."""
    if has_labels:
        return "top1"
    if is_text or "embed" in output_name.lower():
        return "cosine"
    if len(output_shape) == 2 and output_shape[1] != 1:
        return "top1"
    return "mse"


def compare(
    metric: str, ref: np.ndarray, out: np.ndarray, labels: np.ndarray | None = None
) -> dict[str, Any]:
    """Metrics of `out` (optimized) against `ref` (FP32), both [N, ...] for the same samples."""
    if ref.shape != out.shape:
        raise ValueError(f"output shapes differ: FP32 {ref.shape}, optimized {out.shape}")
    a = ref.reshape(len(ref), -1).astype(np.float64)
    b = out.reshape(len(out), -1).astype(np.float64)
    diff = np.abs(a - b)
    m: dict[str, Any] = {
        "metric": metric,
        "samples": len(a),
        "max_abs_error": float(diff.max(initial=0.0)),
        "mean_abs_error": float(diff.mean()) if diff.size else 0.0,
    }
    if metric == "top1":
        m.update(_top1(a, b, labels))
    elif metric == "cosine":
        m.update(_cosine(a, b))
    elif metric == "mse":
        m["mse"] = float((diff**2).mean()) if diff.size else 0.0
        m["drop"] = m["mse"]
    else:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
    return m


def _top1(a: np.ndarray, b: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
    ref, out = a.argmax(axis=1), b.argmax(axis=1)
    m: dict[str, Any] = {"top1_agreement": float(np.mean(ref == out))}
    if labels is not None:
        if len(labels) != len(a):
            raise ValueError(f"{len(labels)} labels for {len(a)} samples")
        m["accuracy_fp32"] = float(np.mean(ref == labels))
        m["accuracy"] = float(np.mean(out == labels))
        m["drop"] = m["accuracy_fp32"] - m["accuracy"]
    else:
        m["drop"] = 1.0 - m["top1_agreement"]
    return m


def _cosine(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = np.sum(a * b, axis=1) / np.maximum(na * nb, _EPS)
    m: dict[str, Any] = {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}
    m["drop"] = 1.0 - m["mean_cosine"]
    if len(a) >= 3:
        m["nn_agreement"] = float(np.mean(nearest(a) == nearest(b)))
    return m


def nearest(x: np.ndarray) -> np.ndarray:
    """Index of each row's nearest other row by cosine similarity."""
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    return np.asarray(sim.argmax(axis=1))


@dataclass(frozen=True)
class Gate:
    metric: str
    max_drop: float = DEFAULT_MAX_DROP
    min_agreement: float | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; choose one of {METRICS}")
        if self.max_drop < 0:
            raise ValueError("--max-drop must be >= 0")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise ValueError("--min-agreement must be between 0 and 1")
        if self.min_agreement is not None and self.metric == "mse":
            raise ValueError("--min-agreement needs --metric top1 or cosine")

    def check(self, m: dict[str, Any]) -> dict[str, Any]:
        """The report's `gate` section: passed, a one-line reason, and the numbers behind it."""
        drop = float(m["drop"])
        failures = []
        if drop > self.max_drop + _EPS:
            failures.append(f"{self._what()} {self._fmt(drop)} > {self._fmt(self.max_drop)}")
        agreement = m.get("top1_agreement" if self.metric == "top1" else "nn_agreement")
        if self.min_agreement is not None:
            if agreement is None:
                failures.append("agreement could not be measured (needs >= 3 samples)")
            elif agreement + _EPS < self.min_agreement:
                failures.append(f"{self._agreement()} {agreement:.4f} < {self.min_agreement}")
        if failures:
            reason = "; ".join(failures)
        else:
            reason = f"{self._what()} {self._fmt(drop)} <= {self._fmt(self.max_drop)}"
            if self.min_agreement is not None:
                reason += f", {self._agreement()} {agreement:.4f} >= {self.min_agreement}"
        return {
            "passed": not failures,
            "reason": reason,
            "metric": self.metric,
            "drop": drop,
            "max_drop": self.max_drop,
            "min_agreement": self.min_agreement,
        }

    def _what(self) -> str:
        return {"top1": "top-1 drop", "cosine": "1 - mean cosine", "mse": "MSE"}[self.metric]

    def _agreement(self) -> str:
        return "top-1 agreement" if self.metric == "top1" else "nearest-neighbour agreement"

    def _fmt(self, value: float) -> str:
        if self.metric == "top1":
            return f"{value * 100:.2f} pp"
        return f"{value:.4g}"

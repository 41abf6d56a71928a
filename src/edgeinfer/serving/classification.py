"""Triton's classification extension: a requested output with `"classification": K` (HTTP
parameters; gRPC `int64_param`, which `tritonclient`'s `InferRequestedOutput(name,
class_count=K)` sends) comes back as a BYTES tensor of its top-K entries, each
`"<value>:<index>[:<label>]"`, shape [batch, K] for a model with a batch axis and [K] without.

Exactly as Triton's `src/classification.cc`: the K highest values compared in the output's own
type, `<value>` printed like C++ `std::to_string` (`%f` for floats, decimal integers), the label
from the output's labels file (Triton's `label_filename`, one label per line) when it has a line
for that index. K above the number of classes returns every class. 0 means no classification.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edgeinfer.config import ModelConfig
from edgeinfer.errors import InvalidInput, LoadError
from edgeinfer.types import RequestedOutput, TensorSpec

PARAMETER = "classification"
MAX_ELEMENTS = 1_000_000  # Triton's bound on one classified tensor
MAX_LABELS_BYTES = 64 << 20


def class_counts(
    requested: list[RequestedOutput] | None, outputs: tuple[TensorSpec, ...]
) -> dict[str, int]:
    """Output name -> K for the outputs a request wants classified; checked before any work."""
    counts: dict[str, int] = {}
    types = {s.name: s.datatype for s in outputs}
    for out in requested or ():
        k = out.parameters.get(PARAMETER)
        if k is None:
            continue
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise InvalidInput(
                f"output '{out.name}': parameter 'classification' must be a "
                f"non-negative integer (the number of classes), got {k!r}"
            )
        if types.get(out.name) in ("BYTES", "BOOL"):
            raise InvalidInput(
                f"output '{out.name}': class result not available for output "
                f"of type {types[out.name]}"
            )
        if k:
            counts[out.name] = k
    return counts


def _format(values: np.ndarray) -> list[str]:
    if values.dtype.kind == "f":
        return [f"{float(v):f}" for v in values]
    return [str(int(v)) for v in values]


def _top(row: np.ndarray, k: int, labels: list[str]) -> list[bytes]:
    # Descending by value; equal values keep index order (a stable sort of the reversed row).
    order = row.size - 1 - np.argsort(row[::-1], kind="stable")[::-1][:k]
    texts = _format(row[order])
    return [
        (f"{t}:{i}:{labels[i]}" if i < len(labels) else f"{t}:{i}").encode()
        for t, i in zip(texts, order.tolist(), strict=True)
    ]


def classify(data: np.ndarray, k: int, labels: list[str], batched: bool) -> np.ndarray:
    """The top-`k` strings of one output tensor, per batch row when `batched`."""
    if data.dtype.kind not in "iuf":
        raise InvalidInput(f"class result not available for output of type {data.dtype}")
    batch = int(data.shape[0]) if batched and data.ndim else 0
    per_row = math.prod(data.shape[1:]) if batch else data.size
    if per_row > MAX_ELEMENTS:
        raise InvalidInput("classification output tensor too large")
    rows = data.reshape(batch, per_row) if batch else data.reshape(1, -1)
    k = min(k, per_row)
    out = np.empty((rows.shape[0], k), dtype=object)
    for i, row in enumerate(rows):
        out[i] = _top(row, k, labels)
    return out if batch else out.reshape(k)


def read_labels(version_dir: Path, config: ModelConfig) -> dict[str, list[str]]:
    """Each output's labels from its `label_filename`: the version directory's file, else the
    model directory's (where Triton keeps it). A missing or unreadable file fails the load."""
    labels = {}
    for name, opts in config.outputs.items():
        if not opts.label_filename:
            continue
        rel = Path(opts.label_filename)
        if rel.is_absolute() or ".." in rel.parts:
            raise LoadError(
                f"outputs.{name}.label_filename must be a file name in the version "
                f"or model directory, got {opts.label_filename!r}"
            )
        path = next(
            (d / rel for d in (version_dir, version_dir.parent) if (d / rel).is_file()), None
        )
        if path is None:
            raise LoadError(
                f"outputs.{name}.label_filename: no {rel} in {version_dir} or {version_dir.parent}"
            )
        if path.stat().st_size > MAX_LABELS_BYTES:
            raise LoadError(f"{path}: a labels file above {MAX_LABELS_BYTES >> 20} MB")
        try:
            labels[name] = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise LoadError(f"{path}: cannot read the labels: {e}") from e
    return labels

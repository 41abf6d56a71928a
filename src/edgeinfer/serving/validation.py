"""Check a request against a model's declared inputs and outputs before any work is done."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeinfer.errors import InvalidInput
from edgeinfer.types import InferRequest, Tensor, TensorSpec


def _shape_ok(spec: TensorSpec, shape: tuple[int, ...]) -> bool:
    return len(spec.shape) == len(shape) and all(
        d < 0 or d == s for d, s in zip(spec.shape, shape, strict=True)
    )


def check_strings(spec: TensorSpec, data: np.ndarray | Sequence[bytes | str]) -> None:
    """A BYTES input's element count and element lengths against the spec's bounds, before any
    element is decoded or tokenized. The count is checked first, so the length scan is bounded.
    A str is measured in characters (a lower bound on its UTF-8 bytes)."""
    count = data.size if isinstance(data, np.ndarray) else len(data)
    if spec.max_count and count > spec.max_count:
        raise InvalidInput(
            f"input '{spec.name}': {count} strings; the model takes at most "
            f"{spec.max_count} per request"
        )
    if not spec.max_bytes or not count:
        return
    if isinstance(data, np.ndarray) and data.dtype.kind in "SU":
        lengths = [data.dtype.itemsize // (4 if data.dtype.kind == "U" else 1)]
    else:
        items = data.reshape(-1) if isinstance(data, np.ndarray) else data
        lengths = [len(v) for v in items if isinstance(v, bytes | str)]
    longest = max(lengths, default=0)
    if longest > spec.max_bytes:
        raise InvalidInput(
            f"input '{spec.name}': a string of {longest} bytes; the model takes "
            f"at most {spec.max_bytes} bytes per string"
        )


def _check_input(tensor: Tensor, spec: TensorSpec, max_batch_size: int) -> None:
    """Datatype, shape, batch size and string limits of one input against its declaration."""
    if tensor.datatype != spec.datatype:
        raise InvalidInput(
            f"input '{tensor.name}': datatype {tensor.datatype} does not match "
            f"the model's {spec.datatype}"
        )
    if 0 in tensor.shape:
        # Triton refuses these too; an empty batch would also reach the model as a run of
        # nothing, which backends answer with errors of their own or not at all.
        raise InvalidInput(
            f"input '{tensor.name}': shape {list(tensor.shape)} has a dimension of size 0; "
            "every dimension must be at least 1"
        )
    if not _shape_ok(spec, tensor.shape):
        raise InvalidInput(
            f"input '{tensor.name}': shape {list(tensor.shape)} does not match the model's "
            f"{list(spec.shape)} (-1 is any size)"
        )
    if max_batch_size > 0 and tensor.shape and tensor.shape[0] > max_batch_size:
        raise InvalidInput(
            f"input '{tensor.name}': batch size {tensor.shape[0]} exceeds the model's "
            f"max_batch_size {max_batch_size}"
        )
    if spec.datatype == "BYTES":
        check_strings(spec, tensor.data)


def _requested_output_names(
    request: InferRequest, outputs: tuple[TensorSpec, ...]
) -> list[str] | None:
    """Names of the outputs the request asks for (None: all), each one the model has."""
    if not request.outputs:
        return None
    known = {s.name for s in outputs}
    names = []
    for out in request.outputs:
        if out.name not in known:
            raise InvalidInput(
                f"unknown output '{out.name}' requested; the model has: {sorted(known)}"
            )
        names.append(out.name)
    return names


def validate_request(
    request: InferRequest,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    max_batch_size: int,
) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """Return (feeds, requested output names) or raise InvalidInput naming what is wrong."""
    declared = {s.name: s for s in inputs}
    feeds: dict[str, np.ndarray] = {}
    for tensor in request.inputs:
        spec = declared.get(tensor.name)
        if spec is None:
            raise InvalidInput(
                f"unexpected input '{tensor.name}' for model '{request.model}'; "
                f"expected inputs: {sorted(declared)}"
            )
        if tensor.name in feeds:
            raise InvalidInput(f"input '{tensor.name}' is given more than once")
        _check_input(tensor, spec, max_batch_size)
        feeds[tensor.name] = tensor.data
    missing = sorted(set(declared) - set(feeds))
    if missing:
        raise InvalidInput(f"model '{request.model}' is missing inputs: {missing}")
    if max_batch_size > 0 and len(feeds) > 1:
        batches = {name: a.shape[0] for name, a in feeds.items() if a.ndim}
        if len(set(batches.values())) > 1:
            raise InvalidInput(f"inputs disagree on the batch size: {batches}")
    return feeds, _requested_output_names(request, outputs)


def queue_params(params: dict[str, Any]) -> tuple[int, int]:
    """The request's priority and timeout (µs) from KServe/Triton request parameters."""
    if not params:
        return 0, 0
    out = []
    for key in ("priority", "timeout"):
        value = params.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidInput(f"parameter '{key}' must be a non-negative integer, got {value!r}")
        out.append(value)
    return out[0], out[1]

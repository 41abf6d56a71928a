"""Core request/response types shared by every layer. Imports nothing from the package."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# KServe v2 datatype name -> numpy dtype. BYTES tensors hold Python `bytes` in object arrays.
DTYPE_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
NUMPY_TO_DTYPE: dict[np.dtype[Any], str] = {v: k for k, v in DTYPE_TO_NUMPY.items()}
NUMPY_TO_DTYPE[np.dtype(np.bytes_)] = "BYTES"


def datatype_of(array: np.ndarray) -> str:
    """The KServe datatype name of a numpy array."""
    if array.dtype.kind in ("S", "U", "O"):
        return "BYTES"
    return NUMPY_TO_DTYPE[array.dtype]


def tensor_bytes(array: np.ndarray) -> bytes:
    """A tensor's data as KServe's binary tensor extension and gRPC raw contents carry it: the
    raw values in row-major order; for BYTES, each element's length (4 bytes, little-endian)
    and then its bytes."""
    if array.dtype.kind not in ("S", "U", "O"):
        return np.ascontiguousarray(array).tobytes()
    parts = []
    for item in array.reshape(-1):
        b = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A declared model input or output. -1 in `shape` is a variable dimension. A BYTES input
    may bound its element count and each element's length (0: no bound beyond the server's);
    both are checked before the model sees the request."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    max_count: int = 0
    max_bytes: int = 0


@dataclass(slots=True)
class Tensor:
    name: str
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def datatype(self) -> str:
        return datatype_of(self.data)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape  # numpy's shape is already a tuple of Python ints


@dataclass(slots=True)
class RequestedOutput:
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    """One inference request, whatever protocol it came in on."""

    model: str
    inputs: list[Tensor]
    version: str | None = None
    id: str | None = None
    outputs: list[RequestedOutput] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    # Transport metadata (HTTP headers, gRPC metadata), lower-case keys; read for routing keys.
    metadata: Mapping[str, str] = field(default_factory=dict)
    # time.perf_counter_ns() when the server began reading it (0: unknown); a timeout counts
    # from here, so time spent reading and decoding the request is part of it.
    received_ns: int = 0


@dataclass(slots=True)
class InferResponse:
    model: str
    version: str
    outputs: list[Tensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """One row of the repository index."""

    name: str
    version: str
    state: str  # READY | LOADING | UNAVAILABLE | UNLOADING
    reason: str = ""

"""KServe v2 REST encoding: JSON tensors and the binary tensor data extension.

Binary extension: the body is a JSON header of `Inference-Header-Content-Length` bytes followed by
the raw data of every input whose parameters carry `binary_data_size`, in input order. BYTES
elements are each prefixed with a 4-byte little-endian length.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import orjson

from edgeinfer.config import Limits
from edgeinfer.errors import InvalidInput, PayloadTooLarge
from edgeinfer.types import (
    DTYPE_TO_NUMPY,
    InferRequest,
    InferResponse,
    RequestedOutput,
    Tensor,
    tensor_bytes,
)

DEFAULT_LIMITS = Limits()


def check_shape(name: str, shape: tuple[int, ...], limits: Limits) -> int:
    """Rank and element-count limits, checked before any allocation; returns the count."""
    if len(shape) > limits.max_rank:
        raise InvalidInput(
            f"input '{name}': rank {len(shape)} is above the limit of {limits.max_rank}"
        )
    count = math.prod(shape)
    # A zero dimension makes the count 0 whatever the others are; numpy still refuses them.
    if count > limits.max_elements or any(d > limits.max_elements for d in shape):
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} has more than {limits.max_elements} elements "
            "(--max-elements)"
        )
    return count


def check_tensor_count(n: int, limits: Limits) -> None:
    if n > limits.max_tensors:
        raise InvalidInput(f"request has {n} input tensors; the limit is {limits.max_tensors}")


def _shape(raw: Any, name: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw
    ):
        raise InvalidInput(f"input '{name}': 'shape' must be a list of non-negative integers")
    return tuple(raw)


def decode_bytes_elements(
    buf: memoryview, count: int, name: str, max_string_bytes: int = DEFAULT_LIMITS.max_element_bytes
) -> np.ndarray:
    """Parse `count` length-prefixed BYTES elements that must fill `buf` exactly."""
    if count * 4 > len(buf):  # every element has a 4-byte length: refuse before allocating
        raise InvalidInput(
            f"input '{name}': {count} BYTES elements need at least {count * 4} bytes, "
            f"got {len(buf)}"
        )
    out = np.empty(count, dtype=object)
    pos, end = 0, len(buf)
    for i in range(count):
        if pos + 4 > end:
            raise InvalidInput(
                f"input '{name}': binary BYTES data ends after {i} of {count} elements"
            )
        (n,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        if n > max_string_bytes:
            raise InvalidInput(
                f"input '{name}': BYTES element {i} has {n} bytes; the limit is "
                f"{max_string_bytes} (--max-string-bytes, --max-image-bytes)"
            )
        if pos + n > end:
            raise InvalidInput(f"input '{name}': BYTES element {i} runs past the end of its data")
        out[i] = bytes(buf[pos : pos + n])
        pos += n
    if pos != end:
        raise InvalidInput(
            f"input '{name}': {end - pos} bytes left over after {count} BYTES elements"
        )
    return out


def _json_array(
    data: Any, datatype: str, shape: tuple[int, ...], name: str, limits: Limits
) -> np.ndarray:
    count = math.prod(shape)
    if not isinstance(data, list):
        raise InvalidInput(f"input '{name}': 'data' must be a list")
    if datatype == "BYTES":
        flat = _flatten(data)
        if len(flat) != count:
            raise InvalidInput(
                f"input '{name}': shape {list(shape)} needs {count} elements, got {len(flat)}"
            )
        out = np.empty(count, dtype=object)
        for i, v in enumerate(flat):
            if not isinstance(v, str):
                raise InvalidInput(f"input '{name}': BYTES elements must be strings in JSON")
            out[i] = v.encode()
            if len(out[i]) > limits.max_element_bytes:
                raise InvalidInput(
                    f"input '{name}': string {i} is longer than "
                    f"{limits.max_element_bytes} bytes (--max-string-bytes, "
                    "--max-image-bytes)"
                )
        return out.reshape(shape)
    try:
        arr = np.asarray(data, dtype=DTYPE_TO_NUMPY[datatype])
    except (ValueError, TypeError, OverflowError) as e:
        raise InvalidInput(f"input '{name}': 'data' is not a valid {datatype} array: {e}") from e
    if arr.size != count:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} needs {count} elements, got {arr.size}"
        )
    return arr.reshape(shape)


def _flatten(data: list[Any]) -> list[Any]:
    if not any(isinstance(v, list) for v in data):
        return data
    out: list[Any] = []
    stack = [iter(data)]  # not recursive: JSON may nest ~1000 deep, past Python's stack limit
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def _split_body(body: bytes, header_length: int | None, limits: Limits) -> tuple[bytes, memoryview]:
    """Cut the body into its JSON header and the binary tensor data that follows it."""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {header_length} is outside the body ({len(body)} bytes)"
            )
        head, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        head, binary = body, memoryview(b"")
    if len(head) > limits.max_json_bytes:
        raise PayloadTooLarge(
            f"JSON of {len(head)} bytes exceeds the limit of "
            f"{limits.max_json_bytes} bytes (--max-json-bytes); send large "
            "tensors with the binary tensor extension"
        )
    return head, binary


def _parse_document(head: bytes) -> dict[str, Any]:
    """The JSON header as an object, or InvalidInput saying why it is not one."""
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"request body is not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise InvalidInput("request body must be a JSON object")
    return doc


def array_from_bytes(
    buf: bytes | memoryview,
    datatype: str,
    shape: tuple[int, ...],
    name: str,
    limits: Limits,
    source: str,
) -> np.ndarray:
    """One input's array from its bytes (the binary tensor extension's slice, gRPC's raw
    contents): a view, not a copy. `source` names where the bytes came from in the error."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return decode_bytes_elements(
            memoryview(buf), count, name, limits.max_element_bytes
        ).reshape(shape)
    dtype = DTYPE_TO_NUMPY[datatype]
    if len(buf) != count * dtype.itemsize:
        raise InvalidInput(
            f"input '{name}': {source} has {len(buf)} bytes; shape {list(shape)} of {datatype} "
            f"needs {count * dtype.itemsize}"
        )
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def _decode_input(raw: Any, binary: memoryview, offset: int, limits: Limits) -> tuple[Tensor, int]:
    """Decode one entry of 'inputs'; returns the tensor and the binary offset after it."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise InvalidInput("each input must be an object with a string 'name'")
    name = raw["name"]
    datatype = raw.get("datatype")
    if datatype not in DTYPE_TO_NUMPY:
        raise InvalidInput(
            f"input '{name}': unknown datatype {datatype!r}; expected one of {sorted(DTYPE_TO_NUMPY)}"
        )
    shape = _shape(raw.get("shape"), name)
    check_shape(name, shape, limits)
    iparams = raw.get("parameters") or {}
    if not isinstance(iparams, dict):
        raise InvalidInput(f"input '{name}': 'parameters' must be an object")
    size = iparams.get("binary_data_size")
    if size is None:
        if "data" not in raw:
            raise InvalidInput(f"input '{name}' has neither 'data' nor binary_data_size")
        return Tensor(name, _json_array(raw["data"], datatype, shape, name, limits)), offset
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(f"input '{name}': binary_data_size must be a non-negative integer")
    if offset + size > len(binary):
        raise InvalidInput(
            f"input '{name}': binary data truncated: needs {size} bytes at offset {offset}, "
            f"body has {len(binary) - offset}"
        )
    chunk = binary[offset : offset + size]
    array = array_from_bytes(chunk, datatype, shape, name, limits, "binary_data_size")
    return Tensor(name, array), offset + size


def _requested_outputs(raw_outputs: Any) -> list[RequestedOutput] | None:
    """The request's 'outputs' list, or None when it names none."""
    if raw_outputs is None:
        return None
    if not isinstance(raw_outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw_outputs
    ):
        raise InvalidInput("'outputs' must be a list of objects with a string 'name'")
    return [RequestedOutput(o["name"], o.get("parameters") or {}) for o in raw_outputs]


def decode_request(
    model: str,
    version: str | None,
    body: bytes,
    header_length: int | None,
    limits: Limits = DEFAULT_LIMITS,
) -> InferRequest:
    """Parse a KServe v2 infer request body (JSON or JSON + binary tensors)."""
    head, binary = _split_body(body, header_length, limits)
    doc = _parse_document(head)
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("request must have a non-empty 'inputs' list")
    check_tensor_count(len(raw_inputs), limits)
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("'parameters' must be an object")
    inputs: list[Tensor] = []
    offset = 0
    for raw in raw_inputs:
        tensor, offset = _decode_input(raw, binary, offset, limits)
        inputs.append(tensor)
    if offset != len(binary):
        raise InvalidInput(
            f"{len(binary) - offset} bytes of binary data are not claimed by any input"
        )
    request_id = doc.get("id")
    return InferRequest(
        model=model,
        version=version,
        inputs=inputs,
        id=str(request_id) if request_id is not None else None,
        outputs=_requested_outputs(doc.get("outputs")),
        parameters=params,
    )


def _wants_binary(request: InferRequest, name: str, default: bool) -> bool:
    if request.outputs:
        for out in request.outputs:
            if out.name == name:
                return bool(out.parameters.get("binary_data", default))
    return default


def _json_data(arr: np.ndarray) -> Any:
    if arr.dtype == object or arr.dtype.kind in ("S", "U"):
        return [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for v in arr.reshape(-1)
        ]
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    return np.ascontiguousarray(arr.reshape(-1))


def output_bytes(response: InferResponse) -> int:
    """Roughly what encoding `response` works through (BYTES counted by element)."""
    return sum(
        t.data.nbytes if t.data.dtype != object else 64 * t.data.size for t in response.outputs
    )


def encode_response(request: InferRequest, response: InferResponse) -> tuple[bytes, int | None]:
    """Return (body, json header length or None when the body is all JSON)."""
    default_binary = bool(request.parameters.get("binary_data_output", False))
    outputs = []
    blobs: list[bytes] = []
    for t in response.outputs:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if _wants_binary(request, t.name, default_binary):
            blob = tensor_bytes(t.data)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(t.data)
        outputs.append(entry)
    doc: dict[str, Any] = {
        "model_name": response.model,
        "model_version": response.version,
        "outputs": outputs,
    }
    if response.id is not None:
        doc["id"] = response.id
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)

"""A ModelInferRequest's bytes split into its tensors (views, not copies) and the rest (parsed).

protobuf's Python API hands each `raw_input_contents` element back as a new bytes object: for a
60 MB tensor that copy holds the GIL for ~200 ms, in whichever thread runs it, and every other
client (health checks included) waits. The tensors are top-level length-delimited fields, so one
pass over the message's top-level fields finds them as views of the received buffer; protobuf
parses the rest (names, shapes, parameters), which is small. protobuf has no zero-copy accessor
for bytes fields, hence this walk; it reads keys and lengths only.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2

from edgeinfer.errors import InvalidInput

_RAW_FIELD = service_pb2.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number
# Top-level fields of a real request: a handful plus one per input, output, parameter and tensor.
# A message of millions of tiny fields would only cost time: it is refused.
MAX_FIELDS = 4096
_FIXED_WIDTH = {1: 8, 5: 4}  # wire types 1 (64-bit) and 5 (32-bit)


def _bad(why: str) -> InvalidInput:
    return InvalidInput(f"ModelInferRequest is not a valid protobuf message: {why}")


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while shift < 64:
        if pos >= len(buf):
            raise _bad("truncated")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise _bad("a varint longer than 10 bytes")


def split_infer(raw: bytes) -> tuple[Any, list[memoryview]]:
    """(the ModelInferRequest without its raw_input_contents, those contents as views of `raw`)."""
    view = memoryview(raw)
    rest = bytearray()
    tensors: list[memoryview] = []
    pos = fields = 0
    while pos < len(view):
        fields += 1
        if fields > MAX_FIELDS:
            raise _bad(f"more than {MAX_FIELDS} top-level fields")
        start = pos
        key, pos = _varint(view, pos)
        wire = key & 7
        if wire == 0:
            _, pos = _varint(view, pos)
        elif wire in _FIXED_WIDTH:
            pos += _FIXED_WIDTH[wire]
        elif wire == 2:
            size, pos = _varint(view, pos)
            if pos + size > len(view):
                raise _bad("a field runs past the end of the message")
            if key >> 3 == _RAW_FIELD:
                tensors.append(view[pos : pos + size])
                pos += size
                continue
            pos += size
        else:
            raise _bad(f"wire type {wire}")
        if pos > len(view):
            raise _bad("truncated")
        rest += view[start:pos]
    try:
        return service_pb2.ModelInferRequest.FromString(bytes(rest)), tensors
    except DecodeError as e:
        raise _bad(str(e)) from e

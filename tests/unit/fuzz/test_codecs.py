"""Fuzzing the request decoders: KServe JSON, the binary tensor extension and gRPC.

Whatever the bytes, a decoder returns a request whose tensors have their declared shapes, or
raises InvalidInput (a 400 / INVALID_ARGUMENT). Any other exception would be a 500 or a crash.
Valid requests round-trip exactly (NaN included).
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
from typing import Any, Literal

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.grpc import service_pb2

from edgeinfer.config import Limits
from edgeinfer.errors import InvalidInput
from edgeinfer.server.kserve_codec import decode_request
from edgeinfer.server.kserve_grpc import decode_infer
from edgeinfer.types import DTYPE_TO_NUMPY, InferRequest, tensor_bytes
from tests.unit.fuzz.budget import fuzz

DTYPES = sorted(DTYPE_TO_NUMPY)
SMALL = Limits(max_tensors=8, max_rank=6, max_elements=4096, max_string_bytes=64)
LIMITS = st.sampled_from([Limits(), SMALL])

# ---- strategies -------------------------------------------------------------------------------

datatypes = st.one_of(st.sampled_from(DTYPES), st.text(max_size=6))
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=16,
)  # fmt: skip
dims = st.one_of(st.integers(0, 4), st.integers(-3, 2**64))
shapes = st.one_of(st.lists(dims, max_size=5), json_values)
nested_numbers = st.recursive(
    st.lists(st.one_of(st.integers(-300, 70000), st.floats(allow_nan=False), st.booleans(),
                       st.text(max_size=3)), max_size=6),
    lambda inner: st.lists(inner, max_size=3), max_leaves=24,
)  # fmt: skip
input_docs = st.fixed_dictionaries(
    {"name": st.one_of(st.text(max_size=6), json_values), "datatype": datatypes, "shape": shapes},
    optional={
        "data": st.one_of(nested_numbers, json_values),
        "parameters": st.one_of(json_values, st.fixed_dictionaries({}, optional={
            "binary_data_size": st.one_of(st.integers(-4, 96), json_values)})),
    },
)  # fmt: skip
request_docs = st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(input_docs, max_size=4), json_values)},
    optional={"outputs": json_values, "parameters": json_values, "id": json_values},
)


_WIDTH: dict[str, Literal[16, 32, 64]] = {"FP16": 16, "FP32": 32, "FP64": 64}


@st.composite
def tensors(draw: st.DrawFn, json_safe: bool = False) -> tuple[str, np.ndarray]:
    """A valid (datatype, array) pair; JSON cannot carry NaN/inf or non-UTF-8 BYTES."""
    datatype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    if datatype == "BYTES":
        items = st.text(max_size=6).map(str.encode) if json_safe else st.binary(max_size=6)
        flat = draw(st.lists(items, min_size=math.prod(shape), max_size=math.prod(shape)))
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
        return datatype, arr.reshape(shape)
    elements = None
    if json_safe and datatype.startswith("FP"):
        elements = st.floats(allow_nan=False, allow_infinity=False, width=_WIDTH[datatype])
    return datatype, draw(hnp.arrays(DTYPE_TO_NUMPY[datatype], shape, elements=elements))


def _check(req: InferRequest) -> None:
    """What the rest of the server relies on after a successful decode."""
    for t in req.inputs:
        assert isinstance(t.data, np.ndarray)
        assert t.datatype in DTYPE_TO_NUMPY
        assert t.data.dtype == DTYPE_TO_NUMPY[t.datatype]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype.kind == "f":
        return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
    return a.shape == b.shape and a.tolist() == b.tolist()


# ---- KServe JSON and binary -------------------------------------------------------------------


@fuzz(300)
@given(body=st.binary(max_size=300), split=st.one_of(st.none(), st.integers(-2, 310)),
       limits=LIMITS)  # fmt: skip
def test_http_decoder_on_random_bytes(body: bytes, split: int | None, limits: Limits) -> None:
    with contextlib.suppress(InvalidInput):
        _check(decode_request("m", None, body, split, limits))


@fuzz(150)
@given(doc=request_docs, tail=st.binary(max_size=96), header=st.booleans(), limits=LIMITS)
def test_http_decoder_on_random_documents(doc: dict, tail: bytes, header: bool,
                                          limits: Limits) -> None:  # fmt: skip
    head = json.dumps(doc).encode()  # not orjson: clients may send integers past 64 bits
    with contextlib.suppress(InvalidInput):
        _check(decode_request("m", "1", head + tail if header else head,
                              len(head) if header else None, limits))  # fmt: skip


@fuzz(200)
@given(items=st.lists(tensors(json_safe=True), min_size=1, max_size=4))
def test_http_json_round_trip(items: list[tuple[str, np.ndarray]]) -> None:
    def data(arr: np.ndarray) -> Any:
        flat = arr.reshape(-1)
        return [b.decode() for b in flat] if arr.dtype == object else flat.tolist()

    doc = {"inputs": [{"name": f"t{i}", "datatype": dt, "shape": list(a.shape), "data": data(a)}
                      for i, (dt, a) in enumerate(items)]}  # fmt: skip
    req = decode_request("m", None, orjson.dumps(doc), None)
    assert all(_same(t.data, a) for t, (_, a) in zip(req.inputs, items, strict=True))


def _binary_body(items: list[tuple[str, np.ndarray]]) -> tuple[bytes, int]:
    blobs = [tensor_bytes(a) for dt, a in items]
    head = orjson.dumps({"inputs": [
        {"name": f"t{i}", "datatype": dt, "shape": list(a.shape),
         "parameters": {"binary_data_size": len(b)}}
        for i, ((dt, a), b) in enumerate(zip(items, blobs, strict=True))]})  # fmt: skip
    return head + b"".join(blobs), len(head)


@fuzz(200)
@given(items=st.lists(tensors(), min_size=1, max_size=4))
def test_http_binary_round_trip(items: list[tuple[str, np.ndarray]]) -> None:
    body, head_len = _binary_body(items)
    req = decode_request("m", None, body, head_len)
    assert all(_same(t.data, a) for t, (_, a) in zip(req.inputs, items, strict=True))


@fuzz(150)
@given(items=st.lists(tensors(), min_size=1, max_size=3), data=st.data(), limits=LIMITS)
def test_http_binary_mutated(items: list[tuple[str, np.ndarray]], data: st.DataObject,
                             limits: Limits) -> None:  # fmt: skip
    body, head_len = _binary_body(items)
    edits = data.draw(st.lists(st.tuples(st.integers(0, max(0, len(body) - 1)),
                                         st.integers(0, 255)), max_size=4))  # fmt: skip
    raw = bytearray(body)
    for pos, value in edits:
        if raw:
            raw[pos % len(raw)] = value
    cut = data.draw(st.integers(0, len(raw)))
    split = data.draw(st.sampled_from([head_len, head_len + 1, head_len - 1, cut]))
    with contextlib.suppress(InvalidInput):
        _check(decode_request("m", None, bytes(raw[: max(cut, split)]), split, limits))


def test_deeply_nested_bytes_data_is_a_400_not_a_crash() -> None:
    # Found by fuzzing: _flatten recursed once per nesting level, so ~1000 levels (orjson
    # accepts up to 1024) raised RecursionError -> 500.
    for depth in (990, 1000, 1020):
        data = "[" * depth + '"a"' + "]" * depth
        body = f'{{"inputs":[{{"name":"s","datatype":"BYTES","shape":[1],"data":{data}}}]}}'
        req = decode_request("m", None, body.encode(), None)
        assert req.inputs[0].data.tolist() == [b"a"]
        with pytest.raises(InvalidInput):
            decode_request("m", None, body.replace("[1]", "[2]").encode(), None)


# ---- gRPC ---------------------------------------------------------------------------------------

_CONTENT_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=8),
}
_PARAM_VALUES = st.one_of(
    st.tuples(st.just("bool_param"), st.booleans()),
    st.tuples(st.just("int64_param"), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just("string_param"), st.text(max_size=6)),
    st.tuples(st.just("double_param"), st.floats()),
    st.tuples(st.just("uint64_param"), st.integers(0, 2**64 - 1)),
)


def _set_params(pmap: Any, params: dict[str, tuple[str, Any]]) -> None:
    for key, (field, value) in params.items():
        setattr(pmap[key], field, value)


params_maps = st.dictionaries(st.text(max_size=6), _PARAM_VALUES, max_size=3)


@st.composite
def grpc_requests(draw: st.DrawFn) -> Any:
    req = service_pb2.ModelInferRequest(model_name=draw(st.text(max_size=6)),
                                        model_version=draw(st.text(max_size=3)),
                                        id=draw(st.text(max_size=4)))  # fmt: skip
    _set_params(req.parameters, draw(params_maps))
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 4))):
        shape = draw(st.lists(st.one_of(st.integers(-2, 4), st.integers(-(2**63), 2**63 - 1)),
                              max_size=4))  # fmt: skip
        inp = req.inputs.add(name=draw(st.text(max_size=4)), datatype=draw(datatypes), shape=shape)
        _set_params(inp.parameters, draw(params_maps))
        for field in draw(st.lists(st.sampled_from(sorted(_CONTENT_VALUES)), max_size=2)):
            getattr(inp.contents, field).extend(draw(st.lists(_CONTENT_VALUES[field], max_size=8)))
        if raw and draw(st.integers(0, 9)):  # now and then one raw buffer too few
            req.raw_input_contents.append(draw(st.binary(max_size=64)))
    for name in draw(st.lists(st.text(max_size=4), max_size=3)):
        _set_params(req.outputs.add(name=name).parameters, draw(params_maps))
    return req


@fuzz(150)
@given(req=grpc_requests(), limits=LIMITS)
def test_grpc_decoder_on_random_requests(req: Any, limits: Limits) -> None:
    with contextlib.suppress(InvalidInput):
        _check(decode_infer(req.SerializeToString(), limits))


@fuzz(200)
@given(body=st.binary(max_size=300), limits=LIMITS)
def test_grpc_decoder_on_random_wire_bytes(body: bytes, limits: Limits) -> None:
    # The servicer gets the bytes as received: whatever they hold, they decode or are refused
    with contextlib.suppress(InvalidInput):
        _check(decode_infer(body, limits))


_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
          "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
          "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
          "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}  # fmt: skip


@fuzz(300)
@given(items=st.lists(tensors(), min_size=1, max_size=4), raw=st.booleans())
def test_grpc_round_trip(items: list[tuple[str, np.ndarray]], raw: bool) -> None:
    raw = raw or any(dt == "FP16" for dt, _ in items)  # FP16 has no typed contents field
    req = service_pb2.ModelInferRequest(model_name="m")
    for i, (dt, a) in enumerate(items):
        inp = req.inputs.add(name=f"t{i}", datatype=dt, shape=a.shape)
        if raw:
            req.raw_input_contents.append(tensor_bytes(a))
        else:
            getattr(inp.contents, _FIELD[dt]).extend(a.reshape(-1).tolist())
    decoded = decode_infer(req.SerializeToString())
    assert all(_same(t.data, a) for t, (_, a) in zip(decoded.inputs, items, strict=True))


def test_grpc_float_contents_keep_nan() -> None:
    # Found by fuzzing: the range check compared values with array_equal, so NaN (never equal
    # to itself) in fp32_contents/fp64_contents was refused as "out of range".
    req = service_pb2.ModelInferRequest(model_name="m")
    inp = req.inputs.add(name="x", datatype="FP32", shape=[3])
    inp.contents.fp32_contents.extend([float("nan"), float("inf"), 1.0])
    out = decode_infer(req.SerializeToString()).inputs[0].data
    assert np.isnan(out[0]) and np.isinf(out[1]) and out[2] == 1.0
    bad = service_pb2.ModelInferRequest(model_name="m")
    bad.inputs.add(name="x", datatype="INT8", shape=[1]).contents.int_contents.append(300)
    with pytest.raises(InvalidInput, match="out of range"):
        decode_infer(bad.SerializeToString())


def test_an_empty_tensor_with_a_huge_dimension_is_refused() -> None:
    # Found by fuzzing: [0, 2**60] has 0 elements, so it passed the element limit, and then
    # numpy's reshape raised ValueError ("array is too big"): a 500.
    req = service_pb2.ModelInferRequest(model_name="m")
    req.inputs.add(name="s", datatype="BYTES", shape=[0, 2**60])
    with pytest.raises(InvalidInput, match="elements"):
        decode_infer(req.SerializeToString())
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [0, 2**60], "data": []}]}
    with pytest.raises(InvalidInput, match="elements"):
        decode_request("m", None, orjson.dumps(doc), None)


def test_binary_bytes_length_prefix_is_little_endian_u32() -> None:
    body = orjson.dumps({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": 4}}]})  # fmt: skip
    with pytest.raises(InvalidInput):  # claims 2**32-1 bytes in a 4-byte buffer: no allocation
        decode_request("m", None, body + struct.pack("<I", 2**32 - 1), len(body))

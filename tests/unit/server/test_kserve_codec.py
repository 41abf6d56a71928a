import json
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeinfer.config import Limits
from edgeinfer.errors import InvalidInput
from edgeinfer.server.kserve_codec import (
    decode_bytes_elements,
    decode_request,
    encode_response,
)
from edgeinfer.types import InferResponse, RequestedOutput, Tensor, tensor_bytes


def test_json_and_binary_inputs_decode_to_the_same_arrays() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    js = {
        "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": x.ravel().tolist()}]
    }
    a = decode_request("m", None, json.dumps(js).encode(), None)
    head = json.dumps({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 24}}]}).encode()  # fmt: skip
    b = decode_request("m", "3", head + x.tobytes(), len(head))
    assert np.array_equal(a.inputs[0].data, b.inputs[0].data)
    assert b.version == "3"


def test_binary_output_when_asked() -> None:
    req = decode_request("m", None, json.dumps({
        "inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1]}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}],
    }).encode(), None)  # fmt: skip
    y = np.array([[1.5, 2.5]], np.float32)
    z = np.array([b"hi"], dtype=object)
    body, head_len = encode_response(req, InferResponse("m", "1", [Tensor("y", y), Tensor("z", z)]))
    assert head_len is not None
    doc = json.loads(body[:head_len])
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == 8
    assert doc["outputs"][1]["data"] == ["hi"]
    assert np.array_equal(np.frombuffer(body[head_len:], np.float32).reshape(1, 2), y)
    assert req.outputs == [RequestedOutput("y", {"binary_data": True}), RequestedOutput("z", {})]


@given(st.lists(st.binary(max_size=40), max_size=20))
def test_bytes_elements_round_trip(items: list[bytes]) -> None:
    arr = np.array([*items, b""], dtype=object)[: len(items)] if items else np.empty(0, object)
    buf = tensor_bytes(arr)
    assert list(decode_bytes_elements(memoryview(buf), len(items), "s")) == items


@given(st.binary(max_size=200))
def test_garbage_is_refused_with_one_clear_line(body: bytes) -> None:
    """Whatever the bytes, the client gets InvalidInput (a 400) with a one-line message: never
    another exception (a 500) nor a request decoded from bytes that are not JSON."""
    for header_len in (None, len(body) // 2):
        try:
            decode_request("m", None, body, header_len)
        except InvalidInput as e:
            assert str(e) and "\n" not in str(e), str(e)
        else:
            head = body if header_len is None else body[:header_len]
            assert isinstance(json.loads(head), dict)


def test_bytes_elements_must_fill_the_buffer() -> None:
    buf = struct.pack("<I", 1) + b"a" + b"zz"
    with pytest.raises(InvalidInput, match="left over"):
        decode_bytes_elements(memoryview(buf), 1, "s")


def test_huge_bytes_count_is_refused_before_allocating() -> None:
    head = json.dumps({"inputs": [{"name": "s", "shape": [2_000_000_000], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": 8}}]}).encode()  # fmt: skip
    with pytest.raises(InvalidInput, match="need at least"):
        decode_request("m", None, head + b"\0" * 8, len(head), Limits(max_elements=1 << 31))
    with pytest.raises(InvalidInput, match="more than 268435456 elements"):
        decode_request("m", None, head + b"\0" * 8, len(head))  # the default limit

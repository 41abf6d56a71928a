"""A received ModelInferRequest: tensors come out as views of the message, everything else as
protobuf parses it, and malformed bytes are a one-line InvalidInput."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from edgeinfer.errors import InvalidInput
from edgeinfer.server.grpc_wire import MAX_FIELDS, split_infer
from edgeinfer.server.kserve_grpc import decode_infer

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@st.composite
def requests(draw: st.DrawFn) -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest(
        model_name=draw(names), model_version=draw(names), id=draw(names)
    )
    for key in draw(st.lists(names, max_size=3, unique=True)):
        req.parameters[key].int64_param = draw(st.integers(-(2**63), 2**63 - 1))
    for name in draw(st.lists(names, max_size=4)):
        size = draw(st.integers(0, 300))  # past 127 bytes the length takes two varint bytes
        req.inputs.add(name=name, datatype="UINT8", shape=[size])
        req.raw_input_contents.append(draw(st.binary(min_size=size, max_size=size)))
    for name in draw(st.lists(names, max_size=2)):
        req.outputs.add(name=name)
    return req


@settings(max_examples=200, deadline=None)
@given(requests())
def test_split_gives_back_the_message_protobuf_parses(req: service_pb2.ModelInferRequest) -> None:
    raw = req.SerializeToString()
    rest, tensors = split_infer(raw)
    assert [bytes(t) for t in tensors] == list(req.raw_input_contents)
    rest.raw_input_contents.extend(bytes(t) for t in tensors)
    assert rest == service_pb2.ModelInferRequest.FromString(raw)


def test_a_tensor_is_a_view_of_the_received_message_not_a_copy() -> None:
    data = np.arange(4096, dtype=np.float32)
    req = service_pb2.ModelInferRequest(model_name="m")
    req.inputs.add(name="x", datatype="FP32", shape=[4096])
    req.raw_input_contents.append(data.tobytes())
    raw = req.SerializeToString()
    decoded = decode_infer(raw)
    tensor = decoded.inputs[0].data
    np.testing.assert_array_equal(tensor, data)
    assert np.shares_memory(tensor, np.frombuffer(raw, np.uint8))
    assert decoded.model == "m"


@pytest.mark.parametrize(
    "raw, why",
    [
        (b"\x0a\x05ab", "runs past the end"),  # model_name declares 5 bytes, has 2
        (b"\x3a\xff\xff\xff\xff\x0f", "runs past the end"),  # a 4 GB tensor in 6 bytes
        (b"\x0a", "truncated"),  # a key with no length
        (b"\x10" + b"\xff" * 11, "varint longer than 10 bytes"),
        (b"\x0b", "wire type 3"),  # groups are not in this message
        (b"\x12\x02\xff\xfe", "ModelInferRequest"),  # model_version is not UTF-8: protobuf says so
    ],
)
def test_malformed_bytes_are_refused_with_one_line(raw: bytes, why: str) -> None:
    with pytest.raises(InvalidInput) as info:
        decode_infer(raw)
    assert why in info.value.message and "\n" not in info.value.message


def test_a_message_of_countless_tiny_fields_is_refused_before_parsing_them() -> None:
    raw = b"\x08\x01" * (MAX_FIELDS + 1)  # field 1 as a varint, again and again
    with pytest.raises(InvalidInput, match=f"more than {MAX_FIELDS} top-level fields"):
        split_infer(raw)

"""The adversarial strategies through the in-process decoders, without a server: whatever they
generate, a KServe infer body, its header length and a gRPC ModelInferRequest decode or are
refused with a 4xx domain error; then the model's declared inputs (with text limits) accept or
refuse the tensors the same way. The same strategies run against a real server in
tests/integration/test_adversarial_limits.py."""

from __future__ import annotations

from hypothesis import given

from edgeinfer.errors import EdgeInferError
from edgeinfer.server.errors import status_of
from edgeinfer.server.kserve_codec import decode_request
from edgeinfer.server.kserve_grpc import decode_infer
from edgeinfer.server.parse import parse_int
from edgeinfer.serving.validation import validate_request
from edgeinfer.testing.adversarial import GrpcCase, HttpCase, Target
from edgeinfer.types import TensorSpec
from tests.unit.fuzz.adversarial import grpc_requests, http_requests
from tests.unit.fuzz.budget import fuzz

TARGET = Target()
SPECS = {
    "digits": (TensorSpec("image", "FP32", (-1, 1, 8, 8)),),
    "minilm": (TensorSpec("text", "BYTES", (-1,), max_count=2048, max_bytes=64 * 256),),
}


def _refused_with_4xx(e: EdgeInferError) -> None:
    status = status_of(e)[0]
    assert 400 <= status < 500, (status, e)


def _validate(model: str, req: object) -> None:
    inputs = SPECS[model]
    validate_request(req, inputs, (), 64)  # type: ignore[arg-type]


@fuzz(150)
@given(case=http_requests(TARGET))
def test_http_bodies_decode_or_are_refused_with_a_4xx(case: HttpCase) -> None:
    if not case.path.endswith("/infer"):
        return  # lifecycle and profile routes parse their numbers with parse_int/parse_float
    model = case.path.split("/")[3]
    try:
        header = case.headers.get("Inference-Header-Content-Length")
        length = None if header is None else parse_int(header, "Inference-Header-Content-Length")
        req = decode_request(model, None, case.body(), length)
        _validate(model, req)
    except EdgeInferError as e:
        _refused_with_4xx(e)


@fuzz(150)
@given(case=grpc_requests(TARGET))
def test_grpc_requests_decode_or_are_refused_with_a_4xx(case: GrpcCase) -> None:
    if case.rpc != "ModelInfer":
        return
    message = case.request()
    try:
        req = decode_infer(message.SerializeToString())
        _validate(req.model, req)
    except EdgeInferError as e:
        _refused_with_4xx(e)

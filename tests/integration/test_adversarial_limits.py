"""Adversarial reproductions against a real demo server: Unicode digits in numeric fields (500s
before), oversized strings and bodies (minutes of tokenizing on the event loop and gigabytes of
RSS before), huge and negative shapes; then hypothesis-generated variations of each, over HTTP
and gRPC, plus extreme sampling parameters on the demo LLM.

Every request must get a 4xx / gRPC error status naming what was wrong, and afterwards the
server must answer its health check and serve the next valid request.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import orjson
import pytest
from hypothesis import given
from tritonclient.grpc import service_pb2_grpc

from edgeinfer.testing.adversarial import (
    GrpcCase,
    HttpCase,
    Target,
    grpc_cases,
    header_bytes,
    http_cases,
)
from tests.helpers import ServerProcess, serve
from tests.unit.fuzz.adversarial import GRPC_BAD, grpc_requests, http_requests
from tests.unit.fuzz.budget import fuzz

TARGET = Target()  # the demo repository: digits and minilm
TENANT = "adversary"
TIMEOUT = 120.0  # a reply slower than this is a hang (the 16 MB string took 38 s before)

# What each reproduction's error must mention: the field, or the limit and how to raise it.
SAYS = {
    "binary header length '²'": "Inference-Header-Content-Length",
    "rollback version '²'": "'version'",
    "canary version '²'": "'version'",
    "canary weight 'abc'": "'weight'",
    "profile batch=²": "query parameter 'batch'",
    "embedding string over max_bytes": "bytes per string",
    "2049 embedding strings": "at most 2048",
    "embedding of a 16 MB string": "--max-json-bytes",
    "KServe JSON body of 60 MB": "--max-json-bytes",
    "8 x 1 MB strings to the text model": "bytes per string",
    "edgeinfer.version 'abc'": "edgeinfer.version",
    "edgeinfer.weight 'abc'": "edgeinfer.weight",
    "8 x 1 MB strings": "bytes per string",
    "2049 strings": "2049",  # max_batch_size (64) or [text] max_strings (2048), both 400
}


@pytest.fixture(scope="module")
def server(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("adversarial-limits") / "server.log"
    with serve(demo_repo, log, "--tenants", TENANT) as server:
        yield server
    assert "Traceback" not in server.log()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        yield client


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(server.grpc_addr, options=options) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _still_serving(http: httpx.Client) -> None:
    """Health answers and both models serve a valid request."""
    assert http.get("/v2/health/ready").status_code == 200
    image = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8],
                         "data": np.arange(64, dtype=np.float32).tolist()}]}  # fmt: skip
    r = http.post("/v2/models/digits/infer", json=image)
    assert r.status_code == 200, r.text
    r = http.post("/v1/embeddings", json={"model": "minilm", "input": ["still serving"]})
    assert r.status_code == 200, r.text
    assert len(r.json()["data"][0]["embedding"]) == 384


def _send(http: httpx.Client, case: HttpCase) -> httpx.Response:
    headers = header_bytes(case.headers)  # httpx would refuse '²' as str
    return http.request(case.method, case.path, content=case.body(), headers=headers)


def _call(stub: service_pb2_grpc.GRPCInferenceServiceStub, case: GrpcCase) -> tuple[str, str]:
    try:
        getattr(stub, case.rpc)(case.request(), timeout=TIMEOUT)
    except grpc.RpcError as e:
        return e.code().name, e.details() or ""
    return "OK", ""


@pytest.mark.parametrize("case", http_cases(TARGET), ids=lambda c: c.name)
def test_http_reproduction_is_refused_and_the_server_keeps_serving(
    http: httpx.Client, case: HttpCase
) -> None:
    r = _send(http, case)
    assert r.status_code in case.expect, r.text
    message = orjson.loads(r.content)["error"]
    message = message["message"] if isinstance(message, dict) else message  # OpenAI's shape
    assert SAYS.get(case.name, "") in message
    _still_serving(http)


@pytest.mark.parametrize("case", grpc_cases(TARGET), ids=lambda c: c.name)
def test_grpc_reproduction_is_refused_and_the_server_keeps_serving(
    http: httpx.Client, stub: service_pb2_grpc.GRPCInferenceServiceStub, case: GrpcCase
) -> None:
    code, details = _call(stub, case)
    assert code in case.expect, details
    assert SAYS.get(case.name, "") in details
    _still_serving(http)


def test_embeddings_count_under_the_requests_tenant(http: httpx.Client) -> None:
    """/v1/embeddings passes the request's headers on as KServe infer does: its requests count
    under the tenant they name (they all counted under no tenant before)."""
    r = http.post("/v1/embeddings", json={"model": "minilm", "input": ["x"]},
                  headers={"tenant": TENANT})  # fmt: skip
    assert r.status_code == 200, r.text
    line = f'edgeinfer_tenant_requests_total{{model="minilm",tenant="{TENANT}"}}'
    assert line in http.get("/metrics").text


@fuzz(40, deadline_s=TIMEOUT)
@given(case=http_requests(TARGET, llm_model="llm-demo"))
def test_generated_http_requests_never_get_a_5xx(http: httpx.Client, case: HttpCase) -> None:
    r = _send(http, case)
    assert r.status_code < 500, (case.name, r.text)
    assert http.get("/v2/health/ready").status_code == 200


@fuzz(40, deadline_s=TIMEOUT)
@given(case=grpc_requests(TARGET))
def test_generated_grpc_requests_never_get_an_internal_error(
    http: httpx.Client, stub: service_pb2_grpc.GRPCInferenceServiceStub, case: GrpcCase
) -> None:
    code, details = _call(stub, case)
    assert code not in GRPC_BAD, (case.name, details)
    assert http.get("/v2/health/ready").status_code == 200


def test_the_server_serves_after_all_of_it(http: httpx.Client) -> None:
    _still_serving(http)

"""Hypothesis strategies for adversarial requests, over HTTP and gRPC: zero and negative
dimensions, Unicode digits (and other non-numbers) in every numeric field, strings just past each
route's limits, and extreme sampling parameters. They build the same `HttpCase` / `GrpcCase`
values as `edgeinfer.testing.adversarial`, so one runner sends both.

A generated request has no single right answer; the invariant is the server's: a status below
500 (a gRPC code other than INTERNAL / UNKNOWN), an answer in bounded time, and a server that
still answers its health check and its next valid request.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import strategies as st

from edgeinfer.testing.adversarial import (
    MB,
    UNICODE_DIGITS,
    GrpcCase,
    HttpCase,
    Target,
    binary_strings,
    bytes_elements,
)

ANY_4XX = tuple(range(400, 500))
OK_OR_4XX = (200, *ANY_4XX)

# ---- numbers that are not numbers -------------------------------------------------------------

unicode_digits = st.one_of(
    st.sampled_from(UNICODE_DIGITS),
    st.text(st.characters(categories=["Nd", "No"], exclude_characters="0123456789"),
            min_size=1, max_size=4),
)  # fmt: skip
not_numbers = st.one_of(
    unicode_digits,
    st.sampled_from(["", " 1", "1 ", "1_0", "0x10", "+-1", "nan", "inf", "-inf", "1e999", "abc"]),
    st.from_regex(r"[0-9]{20,40}", fullmatch=True),  # past int64
    st.from_regex(r"-[0-9]{1,5}", fullmatch=True),
)
json_numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 1e-300, 1e-50, 1e308, -1e308, 2**63, -(2**63) - 1]),
)
numeric_values = st.one_of(not_numbers, json_numbers, st.booleans(), st.none())
dims = st.one_of(st.just(0), st.integers(-5, -1), st.integers(0, 3), st.integers(2**31, 2**63 - 1))


# ---- HTTP -------------------------------------------------------------------------------------


def _post(name: str, path: str, doc: Any, expect: tuple[int, ...] = OK_OR_4XX,
          headers: dict[str, str] | None = None) -> HttpCase:  # fmt: skip
    body = orjson.dumps(doc)
    return HttpCase(name, "POST", path, expect, lambda: body, headers or {})


@st.composite
def tensor_shapes(draw: st.DrawFn, t: Target) -> HttpCase:
    """Zero, negative and huge dimensions in a KServe JSON tensor; data only when small."""
    shape = draw(st.lists(dims, min_size=1, max_size=len(t.row_shape) + 2))
    count = 1
    for d in shape:
        count *= d
    data = [0.5] * count if 0 <= count <= 256 and all(d >= 0 for d in shape) else []
    doc = {"inputs": [{"name": t.tensor_input, "datatype": "FP32", "shape": shape, "data": data}]}
    return _post(f"shape {shape}", f"/v2/models/{t.tensor_model}/infer", doc)


@st.composite
def numeric_fields(draw: st.DrawFn, t: Target) -> HttpCase:
    """A non-number (or an out-of-range number) in one numeric field of one route."""
    m, repo = f"/v2/models/{t.tensor_model}", f"/v2/repository/models/{t.tensor_model}"
    value = draw(numeric_values)
    text = draw(not_numbers)
    kind = draw(st.sampled_from(["header", "query", "rollback", "canary", "parameter"]))
    if kind == "header":
        body = orjson.dumps({"inputs": [{"name": t.tensor_input, "datatype": "FP32",
                                         "shape": [1, *t.row_shape], "data": []}]})  # fmt: skip
        return HttpCase(f"header length {text!r}", "POST", m + "/infer", ANY_4XX, lambda: body,
                        {"Inference-Header-Content-Length": text})  # fmt: skip
    if kind == "query":
        key = draw(st.sampled_from(["batch", "runs"]))
        return HttpCase(f"profile {key}={text!r}", "GET", f"{m}/profile?{key}={text}", ANY_4XX)
    if kind == "rollback":
        return _post(f"rollback version {value!r}", repo + "/rollback", {"version": value})
    if kind == "canary":
        field = draw(st.sampled_from(["version", "weight"]))
        doc = {"version": 1, "weight": 0.5, field: value}
        return _post(f"canary {field} {value!r}", repo + "/canary", doc)
    key = draw(st.sampled_from(["priority", "timeout", "binary_data_output"]))
    doc = {"inputs": [{"name": t.tensor_input, "datatype": "FP32", "shape": [1, *t.row_shape],
                       "data": [0.0] * _count(t.row_shape)}], "parameters": {key: value}}  # fmt: skip
    return _post(f"parameter {key} {value!r}", m + "/infer", doc)


def _count(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


@st.composite
def oversized_strings(draw: st.DrawFn, t: Target) -> HttpCase:
    """Strings just past the text model's per-string limit, or too many of them, on
    /v1/embeddings and KServe infer (JSON and binary)."""
    n = draw(st.sampled_from([1, 2, 8]))
    length = draw(st.sampled_from([t.text_max_bytes + 1, 2 * t.text_max_bytes, MB // 2]))
    many = draw(st.booleans())
    items = [b"a"] * 2049 if many else [b"w" * length] * n
    route = draw(st.sampled_from(["embeddings", "json", "binary"]))
    name = f"{route}: {len(items)} strings of {len(items[0])} bytes"
    if route == "embeddings":
        return _post(name, "/v1/embeddings",
                     {"model": t.text_model, "input": [i.decode() for i in items]}, ANY_4XX)  # fmt: skip
    if route == "json":
        doc = {"inputs": [{"name": t.text_input, "datatype": "BYTES", "shape": [len(items)],
                           "data": [i.decode() for i in items]}]}  # fmt: skip
        return _post(name, f"/v2/models/{t.text_model}/infer", doc, ANY_4XX)
    body, headers = binary_strings(t, items)
    return HttpCase(name, "POST", f"/v2/models/{t.text_model}/infer", ANY_4XX, lambda: body,
                    headers)  # fmt: skip


SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "presence_penalty",
                 "frequency_penalty", "repetition_penalty", "seed", "max_tokens", "logprobs",
                 "top_logprobs")  # fmt: skip


@st.composite
def sampling(draw: st.DrawFn, llm_model: str) -> HttpCase:
    """Extreme or malformed sampling parameters on /v1/completions and /v1/chat/completions."""
    params = draw(st.dictionaries(st.sampled_from(SAMPLING_KEYS), numeric_values, max_size=4))
    chat = draw(st.booleans())
    doc: dict[str, Any] = {"model": llm_model, "max_tokens": 2, **params}
    if chat:
        doc["messages"] = [{"role": "user", "content": "hello"}]
        return _post(f"chat {params}", "/v1/chat/completions", doc)
    doc["prompt"] = "hello"
    return _post(f"completion {params}", "/v1/completions", doc)


def http_requests(t: Target, llm_model: str | None = None) -> st.SearchStrategy[HttpCase]:
    parts = [tensor_shapes(t), numeric_fields(t), oversized_strings(t)]
    if llm_model:
        parts.append(sampling(llm_model))
    return st.one_of(*parts)


# ---- gRPC -------------------------------------------------------------------------------------

GRPC_BAD = ("INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED")


@st.composite
def grpc_requests(draw: st.DrawFn, t: Target) -> GrpcCase:
    """ModelInfer with odd shapes or oversized strings; RepositoryModelLoad with non-numbers in
    edgeinfer.version / edgeinfer.weight."""
    from tritonclient.grpc import service_pb2

    kind = draw(st.sampled_from(["shape", "strings", "lifecycle"]))
    if kind == "shape":
        shape = draw(st.lists(dims, min_size=1, max_size=len(t.row_shape) + 2))
        req = service_pb2.ModelInferRequest(model_name=t.tensor_model)
        req.inputs.add(name=t.tensor_input, datatype="FP32", shape=shape)
        count = _count(tuple(shape))
        req.raw_input_contents.append(b"\0" * (4 * count) if 0 <= count <= 256 else b"")
        return GrpcCase(f"shape {shape}", "ModelInfer", lambda: req, ("OK", *_GRPC_4XX))
    if kind == "strings":
        n = draw(st.sampled_from([1, 8, 2049]))
        size = 1 if n == 2049 else t.text_max_bytes + draw(st.integers(1, MB // 2))
        req = service_pb2.ModelInferRequest(model_name=t.text_model)
        req.inputs.add(name=t.text_input, datatype="BYTES", shape=[n])
        req.raw_input_contents.append(bytes_elements([b"w" * size] * n))
        return GrpcCase(f"{n} strings of {size} bytes", "ModelInfer", lambda: req)
    action = draw(st.sampled_from(["rollback", "canary"]))
    field = draw(st.sampled_from(["version", "weight"]))
    params = {"edgeinfer.action": service_pb2.ModelRepositoryParameter(string_param=action),
              "edgeinfer.version": service_pb2.ModelRepositoryParameter(string_param="1"),
              f"edgeinfer.{field}": service_pb2.ModelRepositoryParameter(string_param=draw(not_numbers))}  # fmt: skip
    req = service_pb2.RepositoryModelLoadRequest(model_name=t.tensor_model, parameters=params)
    return GrpcCase(f"{action} {field}", "RepositoryModelLoad", lambda: req, _GRPC_4XX)


_GRPC_4XX = ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED",
             "UNAVAILABLE", "PERMISSION_DENIED", "UNAUTHENTICATED", "OUT_OF_RANGE")  # fmt: skip

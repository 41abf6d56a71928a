"""Adversarial requests that once took the server down or answered 500: Unicode digits in
numeric fields, oversized strings, oversized JSON, huge shapes. Plain data, so the adversarial
tests, the hypothesis strategies and `bench/soak.py --adversarial` send the same requests.

Each case says which statuses are right; anything else (a 5xx above all) is a failure, and so is
a server that does not answer its next request or its health check.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

# str.isdigit() is true for these, int() takes some of them ('٣' is 3), no client should send them.
UNICODE_DIGITS = ("²", "٣", "\uff11\uff12", "१", "⁵")  # ..., fullwidth 12, ...
MB = 1 << 20


@dataclass(frozen=True)
class Target:
    """The models the cases aim at: a tensor model and a text (tokenizing) model."""

    tensor_model: str = "digits"
    tensor_input: str = "image"
    row_shape: tuple[int, ...] = (1, 8, 8)  # one row of the tensor input, without the batch
    text_model: str = "minilm"
    text_input: str = "text"
    text_max_bytes: int = 64 * 256  # the text model's [text] max_bytes


@dataclass(frozen=True)
class HttpCase:
    name: str
    method: str
    path: str
    expect: tuple[int, ...]
    body: Callable[[], bytes] = field(default=lambda: b"", repr=False)
    headers: dict[str, str] = field(default_factory=dict)
    big: bool = False  # tens of MB: the soak sends these rarely


@dataclass(frozen=True)
class GrpcCase:
    """A KServe gRPC call: `rpc` is ModelInfer or RepositoryModelLoad; `request` builds the
    message from tritonclient's service_pb2. `expect` names grpc.StatusCode members."""

    name: str
    rpc: str
    request: Callable[[], object] = field(repr=False)
    expect: tuple[str, ...] = ("INVALID_ARGUMENT",)


def header_bytes(headers: dict[str, str]) -> dict[str, bytes]:
    """Header values as bytes a server decodes back to the same text: latin-1 where it fits
    (so '²' arrives as '²', which passes str.isdigit()), else UTF-8."""
    return {
        k: v.encode("latin-1" if max(map(ord, v), default=0) < 256 else "utf-8")
        for k, v in headers.items()
    }


def _json(doc: object) -> Callable[[], bytes]:
    return lambda: orjson.dumps(doc)


def tensor_doc(t: Target, rows: int = 1, value: float = 1.0) -> dict[str, object]:
    shape = [rows, *t.row_shape]
    count = rows
    for d in t.row_shape:
        count *= d
    return {
        "inputs": [
            {"name": t.tensor_input, "datatype": "FP32", "shape": shape, "data": [value] * count}
        ]
    }


def bytes_elements(items: list[bytes]) -> bytes:
    """The binary tensor extension's BYTES layout: a 4-byte little-endian length per element."""
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def binary_strings(t: Target, items: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """A KServe binary-extension body carrying `items` as the text model's BYTES input."""
    raw = bytes_elements(items)
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": t.text_input,
                    "datatype": "BYTES",
                    "shape": [len(items)],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    )
    return head + raw, {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }


def _sixty_megabytes_of_json() -> bytes:
    return (
        b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":['
        + b"1.0," * (15 * MB)
        + b"1]}]}"
    )


def http_cases(t: Target = Target()) -> list[HttpCase]:
    """Every reproduction over HTTP, as the adversarial test ran it."""
    m, tm = f"/v2/models/{t.tensor_model}", f"/v2/models/{t.text_model}"
    return [
        *_binary_header_cases(t, m),
        *_repository_cases(f"/v2/repository/models/{t.tensor_model}"),
        *_shape_cases(t, m),
        *_embedding_cases(t),
        HttpCase(
            "KServe JSON body of 60 MB",
            "POST",
            m + "/infer",
            (413,),
            _sixty_megabytes_of_json,
            big=True,
        ),
        *(
            HttpCase(f"profile batch={d}", "GET", f"{m}/profile?batch={d}", (400,))
            for d in UNICODE_DIGITS[:2]
        ),
        _text_strings_case(t, tm),
    ]


def _binary_header_cases(t: Target, m: str) -> list[HttpCase]:
    valid = orjson.dumps(tensor_doc(t))
    return [
        HttpCase(
            "binary header length '²'",
            "POST",
            m + "/infer",
            (400,),
            lambda: valid,
            {"Inference-Header-Content-Length": "²"},
        ),
        HttpCase(
            "binary header length huge",
            "POST",
            m + "/infer",
            (400,),
            lambda: valid,
            {"Inference-Header-Content-Length": "9" * 5000},
        ),
    ]


def _repository_cases(repo: str) -> list[HttpCase]:
    return [
        HttpCase(
            "rollback version '²'", "POST", repo + "/rollback", (400,), _json({"version": "²"})
        ),
        HttpCase(
            "canary version '²'",
            "POST",
            repo + "/canary",
            (400,),
            _json({"version": "²", "weight": 0.5}),
        ),
        HttpCase(
            "canary weight 'abc'",
            "POST",
            repo + "/canary",
            (400,),
            _json({"version": 1, "weight": "abc"}),
        ),
        HttpCase(
            "canary weight 1e308",
            "POST",
            repo + "/canary",
            (400,),
            _json({"version": 1, "weight": 1e308}),
        ),
    ]


def _shape_cases(t: Target, m: str) -> list[HttpCase]:
    return [
        HttpCase(
            "huge shape",
            "POST",
            m + "/infer",
            (400,),
            _json(
                {
                    "inputs": [
                        {
                            "name": t.tensor_input,
                            "datatype": "FP32",
                            "shape": [2**40, 2**40, *t.row_shape],
                            "data": [],
                        }
                    ]
                }
            ),
        ),
        HttpCase(
            "negative dimension",
            "POST",
            m + "/infer",
            (400,),
            _json(
                {
                    "inputs": [
                        {
                            "name": t.tensor_input,
                            "datatype": "FP32",
                            "shape": [-1, *t.row_shape],
                            "data": [],
                        }
                    ]
                }
            ),
        ),
    ]


def _embedding_cases(t: Target) -> list[HttpCase]:
    return [
        HttpCase(
            "embedding string over max_bytes",
            "POST",
            "/v1/embeddings",
            (400,),
            _json({"model": t.text_model, "input": "word " * (t.text_max_bytes // 5 + 1)}),
        ),
        HttpCase(
            "2049 embedding strings",
            "POST",
            "/v1/embeddings",
            (400,),
            _json({"model": t.text_model, "input": ["a"] * 2049}),
        ),
        HttpCase(
            "embedding of a 16 MB string",
            "POST",
            "/v1/embeddings",
            (413,),
            lambda: orjson.dumps({"model": t.text_model, "input": "word " * (16 * MB // 5)}),
            big=True,
        ),
    ]


def _text_strings_case(t: Target, tm: str) -> HttpCase:
    body, headers = binary_strings(t, [b"word " * (MB // 5)] * 8)
    return HttpCase(
        "8 x 1 MB strings to the text model",
        "POST",
        tm + "/infer",
        (400,),
        lambda: body,
        headers,
        big=True,
    )


def grpc_cases(t: Target = Target()) -> list[GrpcCase]:
    """The reproductions over gRPC (tritonclient's stubs)."""

    def load(action: str, **params: str) -> Callable[[], object]:
        def build() -> object:
            from tritonclient.grpc import service_pb2

            p = {"edgeinfer.action": service_pb2.ModelRepositoryParameter(string_param=action)}
            p.update(
                {
                    f"edgeinfer.{k}": service_pb2.ModelRepositoryParameter(string_param=v)
                    for k, v in params.items()
                }
            )
            return service_pb2.RepositoryModelLoadRequest(model_name=t.tensor_model, parameters=p)

        return build

    def strings(items: list[bytes]) -> Callable[[], object]:
        def build() -> object:
            from tritonclient.grpc import service_pb2

            req = service_pb2.ModelInferRequest(model_name=t.text_model)
            req.inputs.add(name=t.text_input, datatype="BYTES", shape=[len(items)])
            req.raw_input_contents.append(bytes_elements(items))
            return req

        return build

    def shape(dims: list[int]) -> Callable[[], object]:
        def build() -> object:
            from tritonclient.grpc import service_pb2

            req = service_pb2.ModelInferRequest(model_name=t.tensor_model)
            req.inputs.add(name=t.tensor_input, datatype="FP32", shape=dims)
            req.raw_input_contents.append(b"")
            return req

        return build

    return [
        GrpcCase("edgeinfer.version 'abc'", "RepositoryModelLoad", load("rollback", version="abc")),
        GrpcCase("edgeinfer.version '²'", "RepositoryModelLoad", load("canary", version="²")),
        GrpcCase(
            "edgeinfer.weight 'abc'",
            "RepositoryModelLoad",
            load("canary", version="1", weight="abc"),
        ),
        GrpcCase("8 x 1 MB strings", "ModelInfer", strings([b"word " * (MB // 5)] * 8)),
        GrpcCase("2049 strings", "ModelInfer", strings([b"a"] * 2049)),
        GrpcCase("huge shape", "ModelInfer", shape([2**40, 2**40, *t.row_shape])),
        GrpcCase("negative dimension", "ModelInfer", shape([-3, *t.row_shape])),
    ]

"""OpenAI-compatible routes: GET /v1/models and POST /v1/embeddings (text embedding models)."""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edgeinfer.auth import TENANT_IDENTITY
from edgeinfer.errors import EdgeInferError, InvalidInput
from edgeinfer.lifecycle.interfaces import EngineClient
from edgeinfer.server.http_common import error_response, json_response, read_json
from edgeinfer.server.offload import off_loop, trim_after
from edgeinfer.serving.validation import check_strings
from edgeinfer.telemetry.tracing import RequestTrace, traced
from edgeinfer.types import InferRequest, Tensor, TensorSpec


def openai_error(exc: BaseException, param: str | None = None) -> Response:
    return error_response(exc, openai=True, param=param)


def _texts(raw: Any, spec: TensorSpec) -> list[str]:
    """The 'input' strings, their count and lengths checked before anything is encoded."""
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("'input' must be a non-empty string or list of strings")
    check_strings(spec, raw)  # the count first: the type scan below is then bounded
    if not all(isinstance(t, str) for t in raw):
        raise InvalidInput("'input' must be a non-empty string or list of strings")
    return raw


def _encode(texts: list[str]) -> np.ndarray:
    data = np.empty(len(texts), dtype=object)
    data[:] = [t.encode() for t in texts]
    return data


def _embedding_body(vectors: np.ndarray, fmt: str, model: str, tokens: int) -> bytes:
    items = []
    for i, vec in enumerate(vectors):
        v = np.ascontiguousarray(vec, dtype=np.float32)
        emb: Any = base64.b64encode(v.tobytes()).decode() if fmt == "base64" else v
        items.append({"object": "embedding", "index": i, "embedding": emb})
    return orjson.dumps(
        {
            "object": "list",
            "data": items,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def routes(engine: EngineClient, max_json_bytes: int) -> list[Route]:
    created = int(time.time())

    async def list_models(request: Request) -> Response:
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "edgeinfer"}
            for name, _, _ in engine.ready_models()
        ]
        # Adapters as `base:adapter` (vLLM lists them with `parent`); a tenant sees its own.
        data += [
            {
                "id": ident,
                "object": "model",
                "created": created,
                "owned_by": "edgeinfer",
                "parent": ident.partition(":")[0],
                "root": ident,
            }
            for ident in engine.adapter_listing(request.headers.get(TENANT_IDENTITY))
        ]
        return json_response({"object": "list", "data": data})

    async def embeddings(request: Request) -> Response:
        attrs = {"http.request.method": "POST", "url.path": "/v1/embeddings"}
        started = time.perf_counter_ns()
        try:
            return await traced(
                engine.tracer,
                "POST /v1/embeddings",
                request.headers,
                attrs,
                lambda trace: _embeddings(engine, max_json_bytes, request, trace),
                lambda response: response.status_code,
            )
        finally:
            trim_after(started)

    return [
        Route("/v1/models", list_models),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
    ]


async def _embeddings(
    engine: EngineClient, max_json_bytes: int, request: Request, trace: RequestTrace | None
) -> Response:
    received = time.perf_counter_ns()
    try:
        doc = await read_json(request, max_json_bytes)
        if not isinstance(doc, dict) or not isinstance(doc.get("model"), str):
            raise InvalidInput("body must be a JSON object with a string 'model'")
        fmt = doc.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise InvalidInput("'encoding_format' must be 'float' or 'base64'")
        model = doc["model"]
        md = engine.metadata(model)
        if len(md.inputs) != 1 or md.inputs[0].datatype != "BYTES":
            raise InvalidInput(f"model '{model}' is not a text embedding model")
        texts = _texts(doc.get("input"), md.inputs[0])
        size = sum(map(len, texts))
        data = await off_loop(size, _encode, texts)
        if trace is not None:
            trace.set("edgeinfer.model", model)
        req = InferRequest(
            model,
            [Tensor(md.inputs[0].name, data)],
            metadata=request.headers,
            received_ns=received,
        )
        resp = await engine.infer(req, trace)
        vectors = resp.outputs[0].data
        tokens = await engine.count_tokens(model, texts)
        body = await off_loop(vectors.nbytes, _embedding_body, vectors, fmt, model, tokens)
    except EdgeInferError as e:
        return openai_error(e, "input" if isinstance(e, InvalidInput) else None)
    return Response(body, media_type="application/json")

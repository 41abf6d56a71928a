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
from edgeinfer.server.errors import status_of
from edgeinfer.server.http_common import json_response, read_body
from edgeinfer.telemetry.tracing import RequestTrace
from edgeinfer.types import InferRequest, Tensor

_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 413: "invalid_request_error",
                429: "rate_limit_error", 503: "service_unavailable", 504: "timeout"}  # fmt: skip


def openai_error(exc: BaseException, param: str | None = None) -> Response:
    status, _, message = status_of(exc)
    param = getattr(exc, "param", None) or param  # InvalidParameter names its own
    body = {"error": {"message": message, "type": _ERROR_TYPES.get(status, "server_error"),
                      "param": param, "code": status}}  # fmt: skip
    return json_response(body, status)


def _texts(raw: Any) -> list[str]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw or not all(isinstance(t, str) for t in raw):
        raise InvalidInput("'input' must be a non-empty string or list of strings")
    return raw


def routes(engine: EngineClient, max_request_bytes: int) -> list[Route]:
    created = int(time.time())

    async def list_models(request: Request) -> Response:
        data = [{"id": name, "object": "model", "created": created, "owned_by": "edgeinfer"}
                for name, _, _ in engine.ready_models()]  # fmt: skip
        # Adapters as `base:adapter` (vLLM lists them with `parent`); a tenant sees its own.
        data += [{"id": ident, "object": "model", "created": created, "owned_by": "edgeinfer",
                  "parent": ident.partition(":")[0], "root": ident}
                 for ident in engine.adapter_listing(request.headers.get(TENANT_IDENTITY))]  # fmt: skip
        return json_response({"object": "list", "data": data})

    async def embeddings(request: Request) -> Response:
        if engine.tracer is None:
            return await _embeddings(request, None)
        trace = engine.tracer.start_request(
            "POST /v1/embeddings",
            request.headers,
            {"http.request.method": "POST", "url.path": "/v1/embeddings"},
        )
        try:
            response = await _embeddings(request, trace)
        except BaseException as e:  # cancelled (server shutdown)
            trace.end(error=e)
            raise
        trace.end(response.status_code)
        return response

    async def _embeddings(request: Request, trace: RequestTrace | None) -> Response:
        try:
            doc = orjson.loads(await read_body(request, max_request_bytes))
            if not isinstance(doc, dict) or not isinstance(doc.get("model"), str):
                raise InvalidInput("body must be a JSON object with a string 'model'")
            texts = _texts(doc.get("input"))
            fmt = doc.get("encoding_format", "float")
            if fmt not in ("float", "base64"):
                raise InvalidInput("'encoding_format' must be 'float' or 'base64'")
            model = doc["model"]
            md = engine.metadata(model)
            if len(md.inputs) != 1 or md.inputs[0].datatype != "BYTES":
                raise InvalidInput(f"model '{model}' is not a text embedding model")
            data = np.array([t.encode() for t in texts], dtype=object)
            if trace is not None:
                trace.set("edgeinfer.model", model)
            req = InferRequest(model, [Tensor(md.inputs[0].name, data)])
            resp = await engine.infer(req, trace)
            vectors = resp.outputs[0].data
            tokens = engine.count_tokens(model, texts)
        except orjson.JSONDecodeError as e:
            return openai_error(InvalidInput(f"body is not valid JSON: {e}"))
        except EdgeInferError as e:
            return openai_error(e, "input" if isinstance(e, InvalidInput) else None)
        items = []
        for i, vec in enumerate(vectors):
            v = np.ascontiguousarray(vec, dtype=np.float32)
            emb: Any = base64.b64encode(v.tobytes()).decode() if fmt == "base64" else v
            items.append({"object": "embedding", "index": i, "embedding": emb})
        return json_response({
            "object": "list", "data": items, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })  # fmt: skip

    return [
        Route("/v1/models", list_models),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
    ]

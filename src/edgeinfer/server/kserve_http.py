"""KServe v2 / Open Inference Protocol over HTTP: health, metadata, Triton's config and stats,
inference. The repository and lifecycle routes are in repository_http.py."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edgeinfer import __version__
from edgeinfer.config import Limits
from edgeinfer.errors import EdgeInferError, InvalidInput
from edgeinfer.lifecycle.interfaces import EngineClient
from edgeinfer.server.http_common import (
    ClientDisconnected,
    error_response,
    json_response,
    read_body,
    unless_disconnected,
)
from edgeinfer.server.kserve_codec import (
    DEFAULT_LIMITS,
    decode_request,
    encode_response,
    output_bytes,
)
from edgeinfer.server.offload import check_json_size, off_loop, trim_after
from edgeinfer.server.parse import parse_int
from edgeinfer.telemetry.tracing import RequestTrace, traced
from edgeinfer.types import TensorSpec

log = logging.getLogger("edgeinfer.http")

EXTENSIONS = [
    "binary_tensor_data",
    "classification",
    "model_repository",
    "statistics",
    "model_configuration",
]


def _status(response: Response) -> int:
    return response.status_code


def _spec(s: TensorSpec) -> dict[str, Any]:
    return {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}


def routes(
    engine: EngineClient, max_request_bytes: int, limits: Limits = DEFAULT_LIMITS
) -> list[Route]:
    def _version(request: Request) -> str | None:
        return request.path_params.get("version")

    async def live(request: Request) -> Response:
        return Response(status_code=200 if engine.live() else 503)

    async def ready(request: Request) -> Response:
        return Response(status_code=200 if engine.ready() else 503)

    async def server_metadata(request: Request) -> Response:
        return json_response(
            {"name": "edgeinfer", "version": __version__, "extensions": EXTENSIONS}
        )

    async def model_metadata(request: Request) -> Response:
        try:
            md = engine.metadata(request.path_params["model"], _version(request))
        except EdgeInferError as e:
            return error_response(e)
        return json_response({
            "name": md.name, "versions": list(md.versions), "platform": md.platform,
            "inputs": [_spec(s) for s in md.inputs], "outputs": [_spec(s) for s in md.outputs],
        })  # fmt: skip

    async def model_ready(request: Request) -> Response:
        ok = engine.model_ready(request.path_params["model"], _version(request))
        return Response(status_code=200 if ok else 400)

    async def model_config(request: Request) -> Response:
        try:
            return json_response(
                engine.model_config(request.path_params["model"], _version(request))
            )
        except EdgeInferError as e:
            return error_response(e)

    async def model_stats(request: Request) -> Response:
        model = request.path_params.get("model")
        try:
            doc: dict[str, Any] = {"model_stats": engine.statistics(model, _version(request))}
            if model:  # not in Triton's schema: live/canary/load failures for this model
                doc["lifecycle"] = engine.lifecycle_status(model).to_json()
        except EdgeInferError as e:
            return error_response(e)
        return json_response(doc)

    async def infer(request: Request) -> Response:
        model = request.path_params["model"]
        route = "/v2/models/{model}" + ("/versions/{version}" if _version(request) else "")
        attrs = {
            "http.request.method": "POST",
            "url.path": request.url.path,
            "edgeinfer.model": model,
        }
        started = time.perf_counter_ns()
        try:
            return await traced(
                engine.tracer,
                f"POST {route}/infer",
                request.headers,
                attrs,
                lambda trace: _infer(request, model, trace),
                _status,
            )
        finally:
            trim_after(started, _declared_size(request))

    def _declared_size(request: Request) -> int:
        try:
            return parse_int(request.headers.get("content-length") or 0, "Content-Length")
        except InvalidInput:
            return 0

    async def _read_infer_body(request: Request) -> tuple[bytes, int | None]:
        """The body and its JSON header's length (None: all JSON). A body that is all JSON is
        held to --max-json-bytes before it is read; binary tensors may use the whole
        --max-request-bytes."""
        header = request.headers.get("inference-header-content-length")
        if header is None:
            declared = request.headers.get("content-length")
            if declared is not None:
                check_json_size(parse_int(declared, "Content-Length"), limits.max_json_bytes)
            json_limit = min(max_request_bytes, limits.max_json_bytes)
            return await read_body(request, json_limit, "--max-json-bytes"), None
        body = await read_body(request, max_request_bytes)
        return body, parse_int(header, "Inference-Header-Content-Length")

    async def _infer(request: Request, model: str, trace: RequestTrace | None) -> Response:
        received = time.perf_counter_ns()
        try:
            body, head_length = await _read_infer_body(request)
            req = await off_loop(len(body), decode_request, model, _version(request), body,
                                 head_length, limits)  # fmt: skip
            del body  # the tensors keep what they need (binary ones are views of it)
            req.metadata = request.headers
            req.received_ns = received
            resp = await unless_disconnected(request, engine.infer(req, trace))
            encode_start = time.perf_counter_ns()
            out, head_len = await off_loop(output_bytes(resp), encode_response, req, resp)
            if trace is not None:
                trace.child("encode", encode_start, time.perf_counter_ns())
        except ClientDisconnected:
            log.debug("infer %s: client disconnected, request cancelled", model)
            return Response(status_code=499)
        except Exception as e:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("infer %s -> error %s", model, e)
            if trace is not None:
                trace.set("error.type", type(e).__name__)
            return error_response(e)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("infer %s v%s id=%s ok", model, resp.version, resp.id)
        if head_len is None:
            return Response(out, media_type="application/json")
        return Response(
            out,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(head_len)},
        )

    m = "/v2/models/{model}"
    mv = "/v2/models/{model}/versions/{version}"
    return [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_metadata),
        Route("/v2/models/stats", model_stats),
        Route(m, model_metadata),
        Route(mv, model_metadata),
        Route(m + "/ready", model_ready),
        Route(mv + "/ready", model_ready),
        Route(m + "/config", model_config),
        Route(mv + "/config", model_config),
        Route(m + "/stats", model_stats),
        Route(mv + "/stats", model_stats),
        Route(m + "/infer", infer, methods=["POST"]),
        Route(mv + "/infer", infer, methods=["POST"]),
    ]

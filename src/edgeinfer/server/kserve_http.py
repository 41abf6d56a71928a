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


class _Handlers:
    """The data routes' handlers (health, metadata, config, stats, inference)."""

    def __init__(self, engine: EngineClient, max_request_bytes: int, limits: Limits) -> None:
        self.engine = engine
        self.max_request_bytes = max_request_bytes
        self.limits = limits

    def _version(self, request: Request) -> str | None:
        return request.path_params.get("version")

    async def live(self, request: Request) -> Response:
        return Response(status_code=200 if self.engine.live() else 503)

    async def ready(self, request: Request) -> Response:
        return Response(status_code=200 if self.engine.ready() else 503)

    async def server_metadata(self, request: Request) -> Response:
        return json_response(
            {"name": "edgeinfer", "version": __version__, "extensions": EXTENSIONS}
        )

    async def model_metadata(self, request: Request) -> Response:
        try:
            md = self.engine.metadata(request.path_params["model"], self._version(request))
        except EdgeInferError as e:
            return error_response(e)
        return json_response(
            {
                "name": md.name,
                "versions": list(md.versions),
                "platform": md.platform,
                "inputs": [_spec(s) for s in md.inputs],
                "outputs": [_spec(s) for s in md.outputs],
            }
        )

    async def model_ready(self, request: Request) -> Response:
        ok = self.engine.model_ready(request.path_params["model"], self._version(request))
        return Response(status_code=200 if ok else 400)

    async def model_config(self, request: Request) -> Response:
        try:
            return json_response(
                self.engine.model_config(request.path_params["model"], self._version(request))
            )
        except EdgeInferError as e:
            return error_response(e)

    async def model_stats(self, request: Request) -> Response:
        model = request.path_params.get("model")
        try:
            doc: dict[str, Any] = {
                "model_stats": self.engine.statistics(model, self._version(request))
            }
            if model:  # not in Triton's schema: live/canary/load failures for this model
                doc["lifecycle"] = self.engine.lifecycle_status(model).to_json()
        except EdgeInferError as e:
            return error_response(e)
        return json_response(doc)

    async def infer(self, request: Request) -> Response:
        model = request.path_params["model"]
        version = "/versions/{version}" if "version" in request.path_params else ""
        started = time.perf_counter_ns()
        try:
            return await traced(
                self.engine.tracer,
                f"POST /v2/models/{{model}}{version}/infer",
                request.headers,
                lambda: {
                    "http.request.method": "POST",
                    "url.path": request.scope["path"],
                    "edgeinfer.model": model,
                },
                lambda trace: self._infer(request, model, trace),
                _status,
            )
        finally:
            trim_after(started, self._declared_size(request))

    def _declared_size(self, request: Request) -> int:
        """Content-Length for trim_after's heuristic (0 when absent or not a number; the body's
        reader refuses such a request)."""
        try:
            return parse_int(request.headers.get("content-length") or 0, "Content-Length")
        except InvalidInput:
            return 0

    async def _read_infer_body(self, request: Request) -> tuple[bytes, int | None]:
        """The body and its JSON header's length (None: all JSON). A body that is all JSON is
        held to --max-json-bytes before it is read; binary tensors may use the whole
        --max-request-bytes."""
        header = request.headers.get("inference-header-content-length")
        if header is None:
            declared = request.headers.get("content-length")
            if declared is not None:
                check_json_size(parse_int(declared, "Content-Length"), self.limits.max_json_bytes)
            json_limit = min(self.max_request_bytes, self.limits.max_json_bytes)
            return await read_body(request, json_limit, "--max-json-bytes"), None
        body = await read_body(request, self.max_request_bytes)
        return body, parse_int(header, "Inference-Header-Content-Length")

    async def _infer(self, request: Request, model: str, trace: RequestTrace | None) -> Response:
        received = time.perf_counter_ns()
        try:
            body, head_length = await self._read_infer_body(request)
            req = await off_loop(
                len(body),
                decode_request,
                model,
                self._version(request),
                body,
                head_length,
                self.limits,
            )
            del body  # the tensors keep what they need (binary ones are views of it)
            req.metadata = request.headers
            req.received_ns = received
            resp = await unless_disconnected(request, self.engine.infer(req, trace))
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


def routes(
    engine: EngineClient, max_request_bytes: int, limits: Limits = DEFAULT_LIMITS
) -> list[Route]:
    h = _Handlers(engine, max_request_bytes, limits)
    m = "/v2/models/{model}"
    mv = "/v2/models/{model}/versions/{version}"
    return [
        Route("/v2/health/live", h.live),
        Route("/v2/health/ready", h.ready),
        Route("/v2", h.server_metadata),
        Route("/v2/models/stats", h.model_stats),
        Route(m, h.model_metadata),
        Route(mv, h.model_metadata),
        Route(m + "/ready", h.model_ready),
        Route(mv + "/ready", h.model_ready),
        Route(m + "/config", h.model_config),
        Route(mv + "/config", h.model_config),
        Route(m + "/stats", h.model_stats),
        Route(mv + "/stats", h.model_stats),
        Route(m + "/infer", h.infer, methods=["POST"]),
        Route(mv + "/infer", h.infer, methods=["POST"]),
    ]

"""KServe v2 / Open Inference Protocol over HTTP, with Triton's config, stats and repository routes."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edgeinfer import __version__
from edgeinfer.config import Limits
from edgeinfer.errors import EdgeInferError, InvalidInput, ModelNotFound
from edgeinfer.lifecycle import Engine
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
from edgeinfer.server.offload import check_json_size, off_loop, parse_json, trim_after
from edgeinfer.server.parse import optional_int, parse_float, parse_int
from edgeinfer.telemetry.tracing import RequestTrace
from edgeinfer.types import TensorSpec

log = logging.getLogger("edgeinfer.http")

EXTENSIONS = [
    "binary_tensor_data",
    "classification",
    "model_repository",
    "statistics",
    "model_configuration",
]


def _spec(s: TensorSpec) -> dict[str, Any]:
    return {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}


def routes(engine: Engine, max_request_bytes: int, limits: Limits = DEFAULT_LIMITS) -> list[Route]:
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
                doc["lifecycle"] = engine.lifecycle_status(model)
        except EdgeInferError as e:
            return error_response(e)
        return json_response(doc)

    def _start_trace(request: Request, model: str) -> RequestTrace | None:
        if engine.tracer is None:
            return None
        route = "/v2/models/{model}" + ("/versions/{version}" if _version(request) else "")
        return engine.tracer.start_request(
            f"POST {route}/infer",
            request.headers,
            {"http.request.method": "POST", "url.path": request.url.path, "edgeinfer.model": model},
        )

    async def infer(request: Request) -> Response:
        model = request.path_params["model"]
        started = time.perf_counter_ns()
        trace = _start_trace(request, model)
        try:
            if trace is None:
                return await _infer(request, model, None)
            try:
                response = await _infer(request, model, trace)
            except BaseException as e:  # cancelled (server shutdown)
                trace.end(error=e)
                raise
            trace.end(response.status_code)
            return response
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

    def _query_int(request: Request, key: str, default: int) -> int:
        raw = request.query_params.get(key)
        return default if raw is None else parse_int(raw, f"query parameter '{key}'", 1)

    async def model_profile(request: Request) -> Response:
        """Per-layer timings from ONNX Runtime's profiler, on a separate session."""
        try:
            doc = await engine.profile(
                request.path_params["model"],
                _version(request),
                batch=_query_int(request, "batch", 1),
                runs=_query_int(request, "runs", 10),
            )
        except EdgeInferError as e:
            return error_response(e)
        return json_response(doc)

    async def repository_index(request: Request) -> Response:
        ready_only = False
        try:
            body = await read_body(request, 1 << 16)
        except EdgeInferError as e:
            return error_response(e)
        if body:
            try:
                doc = orjson.loads(body)
                ready_only = bool(doc.get("ready", False)) if isinstance(doc, dict) else False
            except ValueError:
                return error_response(InvalidInput("repository index body must be JSON"))
        rows = []
        for s in engine.index(ready_only):
            row = {"name": s.name, "version": s.version, "state": s.state}
            if s.reason:
                row["reason"] = s.reason
            rows.append(row)
        return json_response(rows)

    async def repository_load(request: Request) -> Response:
        try:
            await engine.load(request.path_params["model"])
        except EdgeInferError as e:
            return error_response(e)
        return json_response({})

    async def repository_unload(request: Request) -> Response:
        try:
            await engine.unload(request.path_params["model"])
        except EdgeInferError as e:
            return error_response(e)
        return json_response({})

    async def _json_body(request: Request) -> dict[str, Any]:
        raw = await read_body(request, 1 << 16)
        if not raw:
            return {}
        doc = await parse_json(raw, 1 << 16)
        if not isinstance(doc, dict):
            raise InvalidInput("body must be a JSON object")
        return doc

    async def lifecycle(request: Request) -> Response:
        model = request.path_params["model"]
        action = request.path_params.get("action", "status")
        try:
            doc = await _json_body(request)
            if action == "rollback":
                await engine.rollback(model, optional_int(doc, "version"))
            elif action == "canary":
                version = optional_int(doc, "version")
                if version is None:
                    raise InvalidInput("canary needs {'version': N, 'weight': 0..1}")
                weight = parse_float(doc.get("weight", 0.1), "'weight'", 0.0, 1.0)
                await engine.set_canary(model, version, weight)
            elif action == "promote":
                await engine.promote(model)
            elif action == "abort":
                await engine.set_canary(model, None)
            elif action != "status":
                return error_response(ModelNotFound(f"no lifecycle action '{action}'"))
            return json_response(engine.lifecycle_status(model))
        except EdgeInferError as e:
            return error_response(e)

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
        Route(m + "/profile", model_profile),
        Route(mv + "/profile", model_profile),
        Route(m + "/infer", infer, methods=["POST"]),
        Route(mv + "/infer", infer, methods=["POST"]),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/v2/repository/models/{model}/load", repository_load, methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", repository_unload, methods=["POST"]),
        Route("/v2/repository/models/{model}/{action}", lifecycle, methods=["POST"]),
        Route("/v2/repository/models/{model}/status", lifecycle, methods=["GET"]),
    ]

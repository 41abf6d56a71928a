"""The model repository extension over HTTP (index, load, unload), edgeinfer's lifecycle routes
(rollback, canary, promote, abort, status) and per-layer profiles: the control side of the
Engine (`EngineControl`), behind admin keys when keys are configured."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edgeinfer.errors import EdgeInferError, InvalidInput, ModelNotFound
from edgeinfer.lifecycle.actions import ACTIONS, run_action
from edgeinfer.lifecycle.interfaces import EngineControl
from edgeinfer.server.http_common import error_response, json_response, read_body
from edgeinfer.server.offload import parse_json
from edgeinfer.server.parse import optional_int, parse_float, parse_int

_SMALL_BODY = 1 << 16


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await read_body(request, _SMALL_BODY)
    if not raw:
        return {}
    doc = await parse_json(raw, _SMALL_BODY)
    if not isinstance(doc, dict):
        raise InvalidInput("body must be a JSON object")
    return doc


def _query_int(request: Request, key: str, default: int) -> int:
    raw = request.query_params.get(key)
    return default if raw is None else parse_int(raw, f"query parameter '{key}'", 1)


class _Handlers:
    """The control routes' handlers."""

    def __init__(self, engine: EngineControl) -> None:
        self.engine = engine

    async def model_profile(self, request: Request) -> Response:
        """Per-layer timings from ONNX Runtime's profiler, on a separate session."""
        try:
            doc = await self.engine.profile(
                request.path_params["model"],
                request.path_params.get("version"),
                batch=_query_int(request, "batch", 1),
                runs=_query_int(request, "runs", 10),
            )
        except EdgeInferError as e:
            return error_response(e)
        return json_response(doc)

    async def repository_index(self, request: Request) -> Response:
        ready_only = False
        try:
            body = await read_body(request, _SMALL_BODY)
        except EdgeInferError as e:
            return error_response(e)
        if body:
            try:
                doc = orjson.loads(body)
                ready_only = bool(doc.get("ready", False)) if isinstance(doc, dict) else False
            except ValueError:
                return error_response(InvalidInput("repository index body must be JSON"))
        rows = []
        for s in self.engine.index(ready_only):
            row = {"name": s.name, "version": s.version, "state": s.state}
            if s.reason:
                row["reason"] = s.reason
            rows.append(row)
        return json_response(rows)

    async def repository_load(self, request: Request) -> Response:
        try:
            await self.engine.load(request.path_params["model"])
        except EdgeInferError as e:
            return error_response(e)
        return json_response({})

    async def repository_unload(self, request: Request) -> Response:
        try:
            await self.engine.unload(request.path_params["model"])
        except EdgeInferError as e:
            return error_response(e)
        return json_response({})

    async def lifecycle(self, request: Request) -> Response:
        model = request.path_params["model"]
        action = request.path_params.get("action", "status")
        try:
            doc = await _json_body(request)
            if action in ACTIONS:
                weight = doc.get("weight")
                await run_action(
                    self.engine,
                    model,
                    action,
                    optional_int(doc, "version"),
                    None if weight is None else parse_float(weight, "'weight'", 0.0, 1.0),
                )
            elif action != "status":
                return error_response(ModelNotFound(f"no lifecycle action '{action}'"))
            return json_response(self.engine.lifecycle_status(model).to_json())
        except EdgeInferError as e:
            return error_response(e)


def routes(engine: EngineControl) -> list[Route]:
    h = _Handlers(engine)
    m = "/v2/models/{model}"
    return [
        Route(m + "/profile", h.model_profile),
        Route(m + "/versions/{version}/profile", h.model_profile),
        Route("/v2/repository/index", h.repository_index, methods=["POST"]),
        Route("/v2/repository/models/{model}/load", h.repository_load, methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", h.repository_unload, methods=["POST"]),
        Route("/v2/repository/models/{model}/{action}", h.lifecycle, methods=["POST"]),
        Route("/v2/repository/models/{model}/status", h.lifecycle, methods=["GET"]),
    ]

"""GET /openapi.json: an OpenAPI 3.1 description generated from the app's own routes.

Paths and methods come from the routing table of the running app, so the document cannot list a
route that does not exist or miss one that does. What each operation takes and returns is looked
up by (method, path) in `openapi_operations.OPERATIONS`; a route without an entry still appears,
marked `x-edgeinfer-undocumented`, and tests/integration/test_openapi_fuzz.py fails until it is
written. Authentication comes from `auth_http.required_role`, the same function the middleware
obeys.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from edgeinfer import __version__
from edgeinfer.server.auth_http import required_role
from edgeinfer.server.openapi_operations import OPERATIONS
from edgeinfer.server.openapi_schemas import (
    JSON,
    PATH,
    PATH_PARAMS,
    RESPONSES,
    SCHEMAS,
    STR,
    Doc,
)

__all__ = ["PATH", "document", "route_operations", "routes"]

_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")


def routes(auth_enabled: bool, open_metrics: bool) -> list[Route]:
    cache: dict[int, bytes] = {}

    async def openapi(request: Request) -> Response:
        app = request.app
        if id(app) not in cache:  # routes are fixed once the app is built
            doc = document(app.routes, auth_enabled, open_metrics)
            cache[id(app)] = orjson.dumps(doc)
        return Response(cache[id(app)], media_type=JSON)

    return [Route(PATH, openapi)]


def route_operations(
    app_routes: Sequence[BaseRoute], prefix: str = ""
) -> Iterator[tuple[str, str]]:
    """(METHOD, OpenAPI path) of every HTTP route; HEAD is implied by GET and left out."""
    for route in app_routes:
        if isinstance(route, Mount):
            yield from route_operations(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            path = _PARAM.sub(r"{\1}", prefix + route.path)
            methods = route.methods or {"GET"}
            for method in sorted(methods - ({"HEAD"} if "GET" in methods else set())):
                yield method, path


def document(app_routes: Sequence[BaseRoute], auth_enabled: bool, open_metrics: bool) -> Doc:
    paths: dict[str, Doc] = {}
    for method, path in route_operations(app_routes):
        op = _operation(method, path, auth_enabled, open_metrics)
        paths.setdefault(path, {})[method.lower()] = op
    components: Doc = {"schemas": SCHEMAS, "responses": RESPONSES}
    if auth_enabled:
        components["securitySchemes"] = {
            "apiKey": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key made with `edgeinfer keys create`.",
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "edgeinfer", "version": __version__, "description": _DESCRIPTION},
        "paths": paths,
        "components": components,
    }


_DESCRIPTION = (
    "KServe v2 (Open Inference Protocol) with Triton's repository, configuration and statistics "
    "extensions, OpenAI-compatible /v1 routes and Prometheus metrics. Errors are "
    '`{"error": "message"}`, except under /v1, where they are OpenAI\'s '
    '`{"error": {"message", "type", "param", "code"}}`. Any path not listed answers 404 and a '
    "listed path with another method answers 405, both with the plain error body. Request "
    "bodies may be sent with `Content-Encoding: gzip` or `deflate`; the size limit "
    "(--max-request-bytes) applies after decompression and is answered with 413."
)


def _operation(method: str, path: str, auth_enabled: bool, open_metrics: bool) -> Doc:
    spec = OPERATIONS.get((method, path))
    if spec is None:
        op: Doc = {
            "summary": f"{method} {path}",
            "x-edgeinfer-undocumented": True,
            "responses": {"default": {"description": "Not described yet."}},
        }
    else:
        op = {k: v for k, v in spec.items() if k != "errors"}
        op["responses"] = dict(spec["responses"])
        for code in spec.get("errors", ()):
            op["responses"][str(code)] = _error_ref(code, path)
    params = [
        PATH_PARAMS.get(name, {"name": name, "in": "path", "required": True, "schema": STR})
        for name in _PARAM.findall(path)
    ]
    if params or "parameters" in op:
        op["parameters"] = params + list(op.get("parameters", []))
    role = required_role(method, path, open_metrics)
    op["x-edgeinfer-role"] = role or "open"
    if auth_enabled:
        op["security"] = [] if role is None else [{"apiKey": []}]
        if role is not None:  # the middleware answers these, always with the plain error body
            for code in (401, 429) + ((403,) if role == "admin" else ()):  # admin keys may do all
                mine = op["responses"].get(str(code))
                both = mine is not None and mine != _error_ref(code, "/")
                op["responses"][str(code)] = _error_ref(code, "/", both=both)
    op["operationId"] = method.lower() + re.sub(r"[^A-Za-z0-9]+", "_", path).rstrip("_")
    return op


def _error_ref(code: int, path: str, both: bool = False) -> Doc:
    kind = "EitherError" if both else "OpenAIError" if path.startswith("/v1/") else "Error"
    return {"$ref": f"#/components/responses/{kind}{code}"}

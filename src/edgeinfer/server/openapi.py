"""GET /openapi.json: an OpenAPI 3.1 description generated from the app's own routes.

Paths and methods come from the routing table of the running app, so the document cannot list a
route that does not exist or miss one that does. What each operation takes and returns is looked
up by (method, path) in `_OPERATIONS`; a route without an entry still appears, marked
`x-edgeinfer-undocumented`, and tests/integration/test_openapi_fuzz.py fails until it is written.
Authentication comes from `auth_http.required_role`, the same function the middleware obeys.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from edgeinfer import __version__
from edgeinfer.server.auth_http import required_role
from edgeinfer.types import DTYPE_TO_NUMPY

PATH = "/openapi.json"
JSON = "application/json"
SSE = "text/event-stream"
_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")
Doc = dict[str, Any]


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
    components: Doc = {"schemas": _SCHEMAS, "responses": _RESPONSES}
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
    spec = _OPERATIONS.get((method, path))
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
        _PATH_PARAMS.get(name, {"name": name, "in": "path", "required": True, "schema": _STR})
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


# ---- schemas ----------------------------------------------------------------------------------


def _obj(required: Sequence[str] = (), extra: bool = True, **props: Any) -> Doc:
    doc: Doc = {"type": "object", "properties": props}
    if required:
        doc["required"] = list(required)
    if not extra:
        doc["additionalProperties"] = False
    return doc


def _ref(name: str) -> Doc:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Doc, description: str = "OK") -> Doc:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _body(schema: Doc, required: bool = True, more: Doc | None = None) -> Doc:
    return {"required": required, "content": {JSON: {"schema": schema}, **(more or {})}}


_STR, _INT, _NUM, _BOOL = (
    {"type": "string"},
    {"type": "integer"},
    {"type": "number"},
    {"type": "boolean"},
)
_NAT = {"type": "integer", "minimum": 0}
_NULL_STR = {"type": ["string", "null"]}
_NULL_NAT = {"type": ["integer", "null"], "minimum": 0}
_STRS = {"type": "array", "items": _STR}
_DIGITS = {"type": "string", "pattern": "^[0-9]+$"}
_RETRY = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
_PATH_PARAMS: dict[str, Doc] = {
    "model": {
        "name": "model",
        "in": "path",
        "required": True,
        "schema": _STR,
        "description": "Model name: a folder of the model repository.",
    },
    "version": {
        "name": "version",
        "in": "path",
        "required": True,
        "schema": _STR,
        "description": "Model version number (a sub-folder of the model's folder).",
    },
    "action": {
        "name": "action",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": ["status", "rollback", "canary", "promote", "abort"]},
        "description": "Lifecycle action; another value answers 404.",
    },
}

_TENSOR_META = _obj(
    ("name", "datatype", "shape"),
    name=_STR,
    datatype=_ref("Datatype"),
    shape={"type": "array", "items": _INT, "description": "-1 is a variable dimension."},
)
_DATA = {
    "type": "array",
    "description": "Row-major tensor elements, flat or nested; BYTES elements are strings.",
    "items": {"type": ["number", "boolean", "string", "array"]},
}
_FINISH = {"type": ["string", "null"], "enum": ["stop", "length", "tool_calls", "abort", None]}
_USAGE = _obj(
    ("prompt_tokens", "completion_tokens", "total_tokens"),
    prompt_tokens=_NAT,
    completion_tokens=_NAT,
    total_tokens=_NAT,
    prompt_tokens_details=_obj(cached_tokens=_NAT),
)
_SAMPLING: Doc = {
    "max_tokens": {"type": ["integer", "null"], "minimum": 0},
    "temperature": _NUM,
    "top_p": _NUM,
    "top_k": _INT,
    "min_p": _NUM,
    "seed": {"type": ["integer", "null"]},
    "repetition_penalty": _NUM,
    "presence_penalty": _NUM,
    "frequency_penalty": _NUM,
    "stop": {"oneOf": [_STR, _STRS, {"type": "null"}]},
    "stop_token_ids": {"type": "array", "items": _INT},
    "ignore_eos": _BOOL,
    "n": {"type": "integer", "minimum": 1, "maximum": 8},
    "stream": _BOOL,
    "cache_prompt": _BOOL,
    "stream_options": _obj(include_usage=_BOOL),
    "logit_bias": {
        "type": "object",
        "description": "Token id -> bias added to its logit.",
        "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
    },
    "response_format": {
        "type": "object",
        "description": "{'type': 'text' | 'json_object' | "
        "'json_schema', 'json_schema': {'name', 'schema', 'strict'}}: decoding "
        "is constrained to JSON that validates against the schema.",
    },
}
_TOOL_CALL = _obj(
    ("id", "type", "function"),
    id=_STR,
    type={"const": "function"},
    function=_obj(("name", "arguments"), name=_STR, arguments=_STR),
)

_SCHEMAS: Doc = {
    "Error": _obj(("error",), error={"type": "string", "description": "What was wrong."}),
    "OpenAIError": _obj(
        ("error",),
        error=_obj(
            ("message", "type", "code"),
            message=_STR,
            param=_NULL_STR,
            code=_INT,
            type={
                "type": "string",
                "enum": [
                    "invalid_request_error",
                    "not_found_error",
                    "rate_limit_error",
                    "service_unavailable",
                    "timeout",
                    "server_error",
                ],
            },
        ),
    ),
    "Datatype": {"type": "string", "enum": sorted(DTYPE_TO_NUMPY)},
    "ServerMetadata": _obj(
        ("name", "version", "extensions"), name=_STR, version=_STR, extensions=_STRS
    ),
    "ModelMetadata": _obj(
        ("name", "versions", "platform", "inputs", "outputs"),
        name=_STR,
        versions=_STRS,
        platform=_STR,
        inputs={"type": "array", "items": _TENSOR_META},
        outputs={"type": "array", "items": _TENSOR_META},
    ),
    "InferRequest": _obj(
        ("inputs",),
        id={"type": "string", "description": "Echoed in the response."},
        parameters=_obj(
            priority=_NAT,
            timeout={**_NAT, "description": "Microseconds."},
            binary_data_output=_BOOL,
        ),
        inputs={
            "type": "array",
            "minItems": 1,
            "items": _obj(
                ("name", "datatype", "shape"),
                name=_STR,
                datatype=_ref("Datatype"),
                shape={"type": "array", "items": _NAT},
                parameters=_obj(
                    binary_data_size={
                        **_NAT,
                        "description": "Bytes of this input's data after the JSON header.",
                    }
                ),
                data=_DATA,
            ),
        },
        outputs={
            "type": "array",
            "items": _obj(("name",), name=_STR, parameters=_obj(binary_data=_BOOL)),
        },
    ),
    "InferResponse": _obj(
        ("model_name", "model_version", "outputs"),
        model_name=_STR,
        model_version=_STR,
        id=_STR,
        outputs={
            "type": "array",
            "items": _obj(
                ("name", "datatype", "shape"),
                name=_STR,
                datatype=_ref("Datatype"),
                shape={"type": "array", "items": _NAT},
                data=_DATA,
                parameters=_obj(("binary_data_size",), binary_data_size=_NAT),
            ),
        },
    ),
    "ModelConfig": _obj(
        ("name", "max_batch_size", "input", "output"),
        name=_STR,
        platform=_STR,
        backend=_STR,
        max_batch_size=_NAT,
        input={"type": "array", "items": {"type": "object"}},
        output={"type": "array", "items": {"type": "object"}},
    ),
    "LifecycleStatus": _obj(
        ("live", "canary", "resident", "blocked", "load_failures", "history"),
        live=_NULL_STR,
        canary={
            "oneOf": [
                {"type": "null"},
                _obj(("version", "weight"), version=_STR, weight={"type": "number"}),
            ]
        },
        resident=_STRS,
        blocked=_STRS,
        load_failures={
            "type": "array",
            "items": _obj(
                ("version", "reason", "message"), version=_STR, reason=_STR, message=_STR, time=_STR
            ),
        },
        memory={
            "type": "object",
            "additionalProperties": _obj(estimated_bytes=_NULL_NAT, measured_rss_bytes=_NULL_NAT),
        },
        history={"type": "array", "items": _obj(("event",), event=_STR, time=_STR)},
    ),
    "ModelStatistics": _obj(
        ("model_stats",),
        model_stats={
            "type": "array",
            "items": _obj(
                ("name", "version", "inference_count", "execution_count", "inference_stats"),
                name=_STR,
                version=_STR,
                last_inference=_NAT,
                inference_count=_NAT,
                execution_count=_NAT,
                inference_stats={"type": "object"},
                batch_stats={"type": "array"},
            ),
        },
        lifecycle=_ref("LifecycleStatus"),
    ),
    "RepositoryIndex": {
        "type": "array",
        "items": _obj(
            ("name", "version", "state"),
            name=_STR,
            version=_STR,
            reason=_STR,
            state={"type": "string", "enum": ["READY", "UNAVAILABLE", "LOADING", "UNLOADING"]},
        ),
    },
    "LifecycleBody": _obj(
        version={
            "oneOf": [_NAT, _DIGITS],
            "description": "rollback: the version to go back to (default: the previous one); canary: "
            "the canary version (required).",
        },
        weight={
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "default": 0.1,
            "description": "canary: the share of traffic for the canary version.",
        },
    ),
    "ModelList": _obj(
        ("object", "data"),
        object={"const": "list"},
        data={
            "type": "array",
            "items": _obj(
                ("id", "object", "created", "owned_by"),
                id=_STR,
                object={"const": "model"},
                created=_INT,
                owned_by=_STR,
            ),
        },
    ),
    "EmbeddingsRequest": _obj(
        ("model", "input"),
        model=_STR,
        user=_STR,
        input={"oneOf": [_STR, {"type": "array", "minItems": 1, "items": _STR}]},
        encoding_format={"type": "string", "enum": ["float", "base64"], "default": "float"},
    ),
    "Embeddings": _obj(
        ("object", "data", "model", "usage"),
        object={"const": "list"},
        model=_STR,
        data={
            "type": "array",
            "items": _obj(
                ("object", "index", "embedding"),
                object={"const": "embedding"},
                index=_NAT,
                embedding={
                    "oneOf": [
                        {"type": "array", "items": _NUM},
                        {"type": "string", "description": "base64 of float32 LE"},
                    ]
                },
            ),
        },
        usage=_obj(("prompt_tokens", "total_tokens"), prompt_tokens=_NAT, total_tokens=_NAT),
    ),
    "CompletionRequest": _obj(
        ("model", "prompt"),
        model=_STR,
        logprobs={"type": ["integer", "null"]},
        prompt={"oneOf": [_STR, {"type": "array", "items": _INT, "minItems": 1}]},
        **_SAMPLING,
    ),
    "ChatRequest": _obj(
        ("model", "messages"),
        model=_STR,
        logprobs=_BOOL,
        top_logprobs=_NAT,
        max_completion_tokens={"type": ["integer", "null"], "minimum": 0},
        messages={
            "type": "array",
            "minItems": 1,
            "items": _obj(
                ("role",),
                role=_STR,
                content={
                    "oneOf": [
                        _NULL_STR,
                        {
                            "type": "array",
                            "items": _obj(("type", "text"), type={"const": "text"}, text=_STR),
                        },
                    ]
                },
                tool_calls={"type": "array", "items": _TOOL_CALL},
                tool_call_id=_STR,
            ),
        },
        tools={
            "type": "array",
            "maxItems": 64,
            "items": _obj(
                ("type", "function"),
                type={"const": "function"},
                function=_obj(
                    ("name",), name=_STR, description=_STR, parameters={"type": "object"}
                ),
            ),
        },
        tool_choice={
            "oneOf": [
                {"enum": ["none", "auto", "required"]},
                _obj(
                    ("type", "function"),
                    type={"const": "function"},
                    function=_obj(("name",), name=_STR),
                ),
            ]
        },
        parallel_tool_calls=_BOOL,
        **_SAMPLING,
    ),
    "Completion": _obj(
        ("id", "object", "created", "model", "choices"),
        id=_STR,
        created=_INT,
        object={"enum": ["text_completion", "chat.completion"]},
        model=_STR,
        choices={
            "type": "array",
            "items": _obj(
                ("index", "finish_reason"),
                index=_NAT,
                finish_reason=_FINISH,
                text=_STR,
                message=_obj(
                    ("role", "content"),
                    role=_STR,
                    content=_NULL_STR,
                    tool_calls={"type": "array", "items": _TOOL_CALL},
                ),
            ),
        },
        usage=_USAGE,
    ),
    "GenerateRequest": _obj(
        ("text_input",),
        text_input=_STR,
        id=_STR,
        parameters={"type": "object", "properties": _SAMPLING},
    ),
    "GenerateResponse": _obj(
        ("model_name", "model_version", "text_output"),
        id=_STR,
        model_name=_STR,
        model_version=_STR,
        text_output=_STR,
        finish_reason=_FINISH,
        usage=_USAGE,
    ),
}

_STATUS_TEXT = {
    400: "Bad request: the message says what was wrong.",
    401: "Missing or unknown API key.",
    403: "The key's role may not do this.",
    404: "No such model, version or adapter.",
    413: "Request body over --max-request-bytes (after decompression).",
    429: "Queue full, or too many failed key attempts from this address.",
    503: "Model not ready, server shutting down or too hot.",
    504: "The request's timeout passed before it ran.",
}
_RESPONSES: Doc = {}
_EITHER = {"anyOf": [_ref("Error"), _ref("OpenAIError")]}
for _code, _text in _STATUS_TEXT.items():
    for _kind in ("Error", "OpenAIError", "EitherError"):
        _r = _json(_EITHER if _kind == "EitherError" else _ref(_kind), _text)
        if _code in (429, 503):
            _r["headers"] = _RETRY
        if _code == 401:
            _r["headers"] = {"WWW-Authenticate": {"schema": _STR}}
        _RESPONSES[f"{_kind}{_code}"] = _r

# ---- operations -------------------------------------------------------------------------------

_HEALTH: Doc = {
    "tags": ["health"],
    "errors": (),
    "responses": {"200": {"description": "Yes."}, "503": {"description": "No."}},
}
_META: Doc = {
    "tags": ["models"],
    "summary": "Model metadata (inputs and outputs).",
    "responses": {"200": _json(_ref("ModelMetadata"))},
    "errors": (404, 503),
}
_READY: Doc = {
    "tags": ["models"],
    "summary": "Whether the model (version) can serve.",
    "errors": (),
    "responses": {"200": {"description": "Ready."}, "400": {"description": "Not ready."}},
}
_CONFIG: Doc = {
    "tags": ["models"],
    "summary": "Triton-style model configuration.",
    "responses": {"200": _json(_ref("ModelConfig"))},
    "errors": (404, 503),
}
_STATS: Doc = {
    "tags": ["models"],
    "summary": "Triton statistics, plus this model's lifecycle.",
    "responses": {"200": _json(_ref("ModelStatistics"))},
    "errors": (404, 503),
}
_INFER: Doc = {
    "tags": ["inference"],
    "summary": "Run the model on tensors (JSON or binary tensor data).",
    "parameters": [
        {
            "name": "Inference-Header-Content-Length",
            "in": "header",
            "schema": _NAT,
            "description": "Binary tensor extension: bytes of the JSON header; the "
            "raw tensor data follows it.",
        }
    ],
    "requestBody": _body(
        _ref("InferRequest"),
        more={
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "JSON header then raw tensor data.",
                }
            }
        },
    ),
    "responses": {
        "200": {
            "description": "Outputs: all JSON, or a JSON header followed by binary output data.",
            "headers": {
                "Inference-Header-Content-Length": {
                    "schema": _NAT,
                    "description": "Present with binary outputs.",
                }
            },
            "content": {
                JSON: {"schema": _ref("InferResponse")},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
    "errors": (400, 404, 413, 429, 503, 504),
}
_GENERATE: Doc = {
    "tags": ["generation"],
    "requestBody": _body(_ref("GenerateRequest")),
    "errors": (400, 404, 413, 429, 503, 504),
}
_LIFECYCLE_OK: Doc = {"200": _json(_ref("LifecycleStatus"), "The model's lifecycle status.")}
_PROFILE: Doc = {
    "tags": ["models"],
    "summary": "Per-layer ONNX Runtime profile, run on a separate session (admin).",
    "parameters": [
        {
            "name": "batch",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "default": 1},
            "description": "Batch size, up to the model's max_batch_size.",
        },
        {
            "name": "runs",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
            "description": "Timed runs after warm-up.",
        },
    ],
    "responses": {
        "200": _json(
            _obj(
                ("model", "version", "runs", "run_us", "nodes"),
                model=_STR,
                version=_STR,
                runs=_NAT,
                warmup_runs=_NAT,
                kernel_us=_NUM,
                nodes={"type": "array", "items": {"type": "object"}},
                op_types={"type": "array", "items": {"type": "object"}},
                run_us=_obj(("mean", "p50", "min", "max"), mean=_NUM, p50=_NUM, min=_NUM, max=_NUM),
            )
        )
    },
    "errors": (400, 404, 503),
}
_TEXT: Doc = {
    "description": "Success: ... (plain text, as vLLM)",
    "content": {"text/plain": {"schema": _STR}},
}
_SSE: Doc = {
    "description": "Server-sent events, ending with `data: [DONE]` (OpenAI).",
    "content": {SSE: {"schema": _STR}},
}

_M, _MV = "/v2/models/{model}", "/v2/models/{model}/versions/{version}"
_OPERATIONS: dict[tuple[str, str], Doc] = {
    ("GET", "/v2/health/live"): {**_HEALTH, "summary": "Is the server live?"},
    ("GET", "/v2/health/ready"): {**_HEALTH, "summary": "Is every expected model ready?"},
    ("GET", "/v2"): {
        "tags": ["health"],
        "summary": "Server metadata.",
        "errors": (),
        "responses": {"200": _json(_ref("ServerMetadata"))},
    },
    ("GET", "/v2/models/stats"): {**_STATS, "summary": "Statistics of every loaded version."},
    ("GET", _M): _META,
    ("GET", _MV): _META,
    ("GET", _M + "/ready"): _READY,
    ("GET", _MV + "/ready"): _READY,
    ("GET", _M + "/config"): _CONFIG,
    ("GET", _MV + "/config"): _CONFIG,
    ("GET", _M + "/stats"): _STATS,
    ("GET", _MV + "/stats"): _STATS,
    ("GET", _M + "/profile"): _PROFILE,
    ("GET", _MV + "/profile"): _PROFILE,
    ("POST", _M + "/infer"): _INFER,
    ("POST", _MV + "/infer"): _INFER,
    ("POST", "/v2/repository/index"): {
        "tags": ["repository"],
        "summary": "Every model and version in the repository.",
        "requestBody": _body(
            _obj(ready={**_BOOL, "description": "Only ready versions."}), required=False
        ),
        "responses": {"200": _json(_ref("RepositoryIndex"))},
        "errors": (400, 413),
    },
    ("POST", "/v2/repository/models/{model}/load"): {
        "tags": ["repository"],
        "summary": "Load or reload the model from the repository.",
        "responses": {"200": _json(_obj(extra=False))},
        "errors": (400, 404, 503),
    },
    ("POST", "/v2/repository/models/{model}/unload"): {
        "tags": ["repository"],
        "summary": "Unload every version of the model.",
        "responses": {"200": _json(_obj(extra=False))},
        "errors": (400, 404, 503),
    },
    ("POST", "/v2/repository/models/{model}/{action}"): {
        "tags": ["repository"],
        "summary": "Lifecycle: rollback, canary, promote, abort, status.",
        "description": "`rollback` takes an optional `version`; `canary` a `version` and a "
        "`weight`; the others no body.",
        "requestBody": _body(_ref("LifecycleBody"), required=False),
        "responses": _LIFECYCLE_OK,
        "errors": (400, 404, 413, 503),
    },
    ("GET", "/v2/repository/models/{model}/status"): {
        "tags": ["repository"],
        "summary": "Live and canary versions, failures, history.",
        "responses": _LIFECYCLE_OK,
        "errors": (404, 503),
    },
    ("GET", "/v1/models"): {
        "tags": ["openai"],
        "summary": "Models that are ready.",
        "responses": {"200": _json(_ref("ModelList"))},
        "errors": (),
    },
    ("POST", "/v1/embeddings"): {
        "tags": ["openai"],
        "summary": "Embeddings from a text embedding model.",
        "requestBody": _body(_ref("EmbeddingsRequest")),
        "responses": {"200": _json(_ref("Embeddings"))},
        "errors": (400, 404, 413, 429, 503, 504),
    },
    ("POST", "/v1/completions"): {
        "tags": ["openai"],
        "summary": "Text completion (`stream: true`: SSE).",
        "requestBody": _body(_ref("CompletionRequest")),
        "responses": {
            "200": {
                **_json(_ref("Completion")),
                "content": {JSON: {"schema": _ref("Completion")}, **_SSE["content"]},
            }
        },
        "errors": (400, 404, 413, 429, 503, 504),
    },
    ("POST", "/v1/chat/completions"): {
        "tags": ["openai"],
        "summary": "Chat completion (`stream: true`: SSE).",
        "requestBody": _body(_ref("ChatRequest")),
        "responses": {
            "200": {
                **_json(_ref("Completion")),
                "content": {JSON: {"schema": _ref("Completion")}, **_SSE["content"]},
            }
        },
        "errors": (400, 404, 413, 429, 503, 504),
    },
    **{
        ("POST", base + "/generate"): {
            **_GENERATE,
            "summary": "Triton generate: one reply.",
            "responses": {"200": _json(_ref("GenerateResponse"))},
        }
        for base in (_M, _MV)
    },
    **{
        ("POST", base + "/generate_stream"): {
            **_GENERATE,
            "summary": "Triton generate: SSE of partial replies.",
            "responses": {
                "200": {
                    "description": "Server-sent events of GenerateResponse "
                    "(text_output is the new text).",
                    "content": {SSE: {"schema": _STR}},
                }
            },
        }
        for base in (_M, _MV)
    },
    ("POST", "/v1/load_lora_adapter"): {
        "tags": ["openai"],
        "summary": "Load a LoRA adapter at run time (vLLM's API; admin).",
        "requestBody": _body(
            _obj(
                ("lora_name", "lora_path"),
                lora_path={"type": "string", "minLength": 1},
                lora_name={"type": "string", "description": "base:adapter"},
                scale=_NUM,
                tenants={**_STRS, "description": "Tenants granted; absent or empty: every tenant."},
            )
        ),
        "responses": {"200": _TEXT},
        "errors": (400, 404, 413, 503),
    },
    ("POST", "/v1/unload_lora_adapter"): {
        "tags": ["openai"],
        "summary": "Unload a LoRA adapter (vLLM's API; admin).",
        "requestBody": _body(_obj(("lora_name",), lora_name=_STR)),
        "responses": {"200": _TEXT},
        "errors": (400, 404, 413, 503),
    },
    ("GET", "/metrics"): {
        "tags": ["observability"],
        "summary": "Prometheus metrics (Triton and vLLM names).",
        "responses": {
            "200": {
                "description": "Prometheus text exposition.",
                "content": {"text/plain": {"schema": _STR}},
            }
        },
        "errors": (),
    },
    ("GET", "/dashboard"): {
        "tags": ["observability"],
        "summary": "The live dashboard page.",
        "errors": (),
        "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": _STR}}}},
    },
    ("GET", "/v2/dashboard/data"): {
        "tags": ["observability"],
        "summary": "What the dashboard page polls.",
        "errors": (),
        "responses": {
            "200": _json(
                _obj(("server", "models"), server={"type": "object"}, models={"type": "array"})
            )
        },
    },
    ("GET", PATH): {
        "tags": ["observability"],
        "summary": "This document.",
        "errors": (),
        "responses": {"200": _json({"type": "object"})},
    },
}

"""The reusable parts of /openapi.json: schema builders, the `components` section (request and
reply schemas, error responses) and the path parameters shared by many routes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgeinfer.types import DTYPE_TO_NUMPY

PATH = "/openapi.json"
JSON = "application/json"
SSE = "text/event-stream"
Doc = dict[str, Any]


def obj(required: Sequence[str] = (), extra: bool = True, **props: Any) -> Doc:
    doc: Doc = {"type": "object", "properties": props}
    if required:
        doc["required"] = list(required)
    if not extra:
        doc["additionalProperties"] = False
    return doc


def ref(name: str) -> Doc:
    return {"$ref": f"#/components/schemas/{name}"}


def response(schema: Doc, description: str = "OK") -> Doc:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def body(schema: Doc, required: bool = True, more: Doc | None = None) -> Doc:
    return {"required": required, "content": {JSON: {"schema": schema}, **(more or {})}}


STR, _INT, NUM, BOOL = (
    {"type": "string"},
    {"type": "integer"},
    {"type": "number"},
    {"type": "boolean"},
)
NAT = {"type": "integer", "minimum": 0}
_NULL_STR = {"type": ["string", "null"]}
_NULL_NAT = {"type": ["integer", "null"], "minimum": 0}
STRS = {"type": "array", "items": STR}
_DIGITS = {"type": "string", "pattern": "^[0-9]+$"}
_RETRY = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
PATH_PARAMS: dict[str, Doc] = {
    "model": {
        "name": "model",
        "in": "path",
        "required": True,
        "schema": STR,
        "description": "Model name: a folder of the model repository.",
    },
    "version": {
        "name": "version",
        "in": "path",
        "required": True,
        "schema": STR,
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

_TENSOR_META = obj(
    ("name", "datatype", "shape"),
    name=STR,
    datatype=ref("Datatype"),
    shape={"type": "array", "items": _INT, "description": "-1 is a variable dimension."},
)
_DATA = {
    "type": "array",
    "description": "Row-major tensor elements, flat or nested; BYTES elements are strings.",
    "items": {"type": ["number", "boolean", "string", "array"]},
}
_FINISH = {"type": ["string", "null"], "enum": ["stop", "length", "tool_calls", "abort", None]}
_USAGE = obj(
    ("prompt_tokens", "completion_tokens", "total_tokens"),
    prompt_tokens=NAT,
    completion_tokens=NAT,
    total_tokens=NAT,
    prompt_tokens_details=obj(cached_tokens=NAT),
)
_SAMPLING: Doc = {
    "max_tokens": {"type": ["integer", "null"], "minimum": 0},
    "temperature": NUM,
    "top_p": NUM,
    "top_k": _INT,
    "min_p": NUM,
    "seed": {"type": ["integer", "null"]},
    "repetition_penalty": NUM,
    "presence_penalty": NUM,
    "frequency_penalty": NUM,
    "stop": {"oneOf": [STR, STRS, {"type": "null"}]},
    "stop_token_ids": {"type": "array", "items": _INT},
    "ignore_eos": BOOL,
    "n": {"type": "integer", "minimum": 1, "maximum": 8},
    "stream": BOOL,
    "cache_prompt": BOOL,
    "stream_options": obj(include_usage=BOOL),
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
_TOOL_CALL = obj(
    ("id", "type", "function"),
    id=STR,
    type={"const": "function"},
    function=obj(("name", "arguments"), name=STR, arguments=STR),
)

SCHEMAS: Doc = {
    "Error": obj(("error",), error={"type": "string", "description": "What was wrong."}),
    "OpenAIError": obj(
        ("error",),
        error=obj(
            ("message", "type", "code"),
            message=STR,
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
    "ServerMetadata": obj(
        ("name", "version", "extensions"), name=STR, version=STR, extensions=STRS
    ),
    "ModelMetadata": obj(
        ("name", "versions", "platform", "inputs", "outputs"),
        name=STR,
        versions=STRS,
        platform=STR,
        inputs={"type": "array", "items": _TENSOR_META},
        outputs={"type": "array", "items": _TENSOR_META},
    ),
    "InferRequest": obj(
        ("inputs",),
        id={"type": "string", "description": "Echoed in the response."},
        parameters=obj(
            priority=NAT,
            timeout={**NAT, "description": "Microseconds."},
            binary_data_output=BOOL,
        ),
        inputs={
            "type": "array",
            "minItems": 1,
            "items": obj(
                ("name", "datatype", "shape"),
                name=STR,
                datatype=ref("Datatype"),
                shape={"type": "array", "items": NAT},
                parameters=obj(
                    binary_data_size={
                        **NAT,
                        "description": "Bytes of this input's data after the JSON header.",
                    }
                ),
                data=_DATA,
            ),
        },
        outputs={
            "type": "array",
            "items": obj(("name",), name=STR, parameters=obj(binary_data=BOOL)),
        },
    ),
    "InferResponse": obj(
        ("model_name", "model_version", "outputs"),
        model_name=STR,
        model_version=STR,
        id=STR,
        outputs={
            "type": "array",
            "items": obj(
                ("name", "datatype", "shape"),
                name=STR,
                datatype=ref("Datatype"),
                shape={"type": "array", "items": NAT},
                data=_DATA,
                parameters=obj(("binary_data_size",), binary_data_size=NAT),
            ),
        },
    ),
    "ModelConfig": obj(
        ("name", "max_batch_size", "input", "output"),
        name=STR,
        platform=STR,
        backend=STR,
        max_batch_size=NAT,
        input={"type": "array", "items": {"type": "object"}},
        output={"type": "array", "items": {"type": "object"}},
    ),
    "LifecycleStatus": obj(
        ("live", "canary", "resident", "blocked", "load_failures", "history"),
        live=_NULL_STR,
        canary={
            "oneOf": [
                {"type": "null"},
                obj(("version", "weight"), version=STR, weight={"type": "number"}),
            ]
        },
        resident=STRS,
        blocked=STRS,
        load_failures={
            "type": "array",
            "items": obj(
                ("version", "reason", "message"), version=STR, reason=STR, message=STR, time=STR
            ),
        },
        memory={
            "type": "object",
            "additionalProperties": obj(estimated_bytes=_NULL_NAT, measured_rss_bytes=_NULL_NAT),
        },
        history={"type": "array", "items": obj(("event",), event=STR, time=STR)},
    ),
    "ModelStatistics": obj(
        ("model_stats",),
        model_stats={
            "type": "array",
            "items": obj(
                ("name", "version", "inference_count", "execution_count", "inference_stats"),
                name=STR,
                version=STR,
                last_inference=NAT,
                inference_count=NAT,
                execution_count=NAT,
                inference_stats={"type": "object"},
                batch_stats={"type": "array"},
            ),
        },
        lifecycle=ref("LifecycleStatus"),
    ),
    "RepositoryIndex": {
        "type": "array",
        "items": obj(
            ("name", "version", "state"),
            name=STR,
            version=STR,
            reason=STR,
            state={"type": "string", "enum": ["READY", "UNAVAILABLE", "LOADING", "UNLOADING"]},
        ),
    },
    "LifecycleBody": obj(
        version={
            "oneOf": [NAT, _DIGITS],
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
    "ModelList": obj(
        ("object", "data"),
        object={"const": "list"},
        data={
            "type": "array",
            "items": obj(
                ("id", "object", "created", "owned_by"),
                id=STR,
                object={"const": "model"},
                created=_INT,
                owned_by=STR,
            ),
        },
    ),
    "EmbeddingsRequest": obj(
        ("model", "input"),
        model=STR,
        user=STR,
        input={"oneOf": [STR, {"type": "array", "minItems": 1, "items": STR}]},
        encoding_format={"type": "string", "enum": ["float", "base64"], "default": "float"},
    ),
    "Embeddings": obj(
        ("object", "data", "model", "usage"),
        object={"const": "list"},
        model=STR,
        data={
            "type": "array",
            "items": obj(
                ("object", "index", "embedding"),
                object={"const": "embedding"},
                index=NAT,
                embedding={
                    "oneOf": [
                        {"type": "array", "items": NUM},
                        {"type": "string", "description": "base64 of float32 LE"},
                    ]
                },
            ),
        },
        usage=obj(("prompt_tokens", "total_tokens"), prompt_tokens=NAT, total_tokens=NAT),
    ),
    "CompletionRequest": obj(
        ("model", "prompt"),
        model=STR,
        logprobs={"type": ["integer", "null"]},
        prompt={"oneOf": [STR, {"type": "array", "items": _INT, "minItems": 1}]},
        **_SAMPLING,
    ),
    "ChatRequest": obj(
        ("model", "messages"),
        model=STR,
        logprobs=BOOL,
        top_logprobs=NAT,
        max_completion_tokens={"type": ["integer", "null"], "minimum": 0},
        messages={
            "type": "array",
            "minItems": 1,
            "items": obj(
                ("role",),
                role=STR,
                content={
                    "oneOf": [
                        _NULL_STR,
                        {
                            "type": "array",
                            "items": obj(("type", "text"), type={"const": "text"}, text=STR),
                        },
                    ]
                },
                tool_calls={"type": "array", "items": _TOOL_CALL},
                tool_call_id=STR,
            ),
        },
        tools={
            "type": "array",
            "maxItems": 64,
            "items": obj(
                ("type", "function"),
                type={"const": "function"},
                function=obj(("name",), name=STR, description=STR, parameters={"type": "object"}),
            ),
        },
        tool_choice={
            "oneOf": [
                {"enum": ["none", "auto", "required"]},
                obj(
                    ("type", "function"),
                    type={"const": "function"},
                    function=obj(("name",), name=STR),
                ),
            ]
        },
        parallel_tool_calls=BOOL,
        **_SAMPLING,
    ),
    "Completion": obj(
        ("id", "object", "created", "model", "choices"),
        id=STR,
        created=_INT,
        object={"enum": ["text_completion", "chat.completion"]},
        model=STR,
        choices={
            "type": "array",
            "items": obj(
                ("index", "finish_reason"),
                index=NAT,
                finish_reason=_FINISH,
                text=STR,
                message=obj(
                    ("role", "content"),
                    role=STR,
                    content=_NULL_STR,
                    tool_calls={"type": "array", "items": _TOOL_CALL},
                ),
            ),
        },
        usage=_USAGE,
    ),
    "GenerateRequest": obj(
        ("text_input",),
        text_input=STR,
        id=STR,
        parameters={"type": "object", "properties": _SAMPLING},
    ),
    "GenerateResponse": obj(
        ("model_name", "model_version", "text_output"),
        id=STR,
        model_name=STR,
        model_version=STR,
        text_output=STR,
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
RESPONSES: Doc = {}
_EITHER = {"anyOf": [ref("Error"), ref("OpenAIError")]}
for _code, _text in _STATUS_TEXT.items():
    for _kind in ("Error", "OpenAIError", "EitherError"):
        _r = response(_EITHER if _kind == "EitherError" else ref(_kind), _text)
        if _code in (429, 503):
            _r["headers"] = _RETRY
        if _code == 401:
            _r["headers"] = {"WWW-Authenticate": {"schema": STR}}
        RESPONSES[f"{_kind}{_code}"] = _r

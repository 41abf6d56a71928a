"""What each route of /openapi.json takes and returns, keyed by (method, OpenAPI path).

Data only: `openapi.document` adds path parameters, error responses and security to each entry.
"""

from __future__ import annotations

from edgeinfer.server.openapi_schemas import (
    BOOL,
    JSON,
    NAT,
    NUM,
    PATH,
    SSE,
    STR,
    STRS,
    Doc,
    body,
    obj,
    ref,
    response,
)

_HEALTH: Doc = {
    "tags": ["health"],
    "errors": (),
    "responses": {"200": {"description": "Yes."}, "503": {"description": "No."}},
}
_META: Doc = {
    "tags": ["models"],
    "summary": "Model metadata (inputs and outputs).",
    "responses": {"200": response(ref("ModelMetadata"))},
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
    "responses": {"200": response(ref("ModelConfig"))},
    "errors": (404, 503),
}
_STATS: Doc = {
    "tags": ["models"],
    "summary": "Triton statistics, plus this model's lifecycle.",
    "responses": {"200": response(ref("ModelStatistics"))},
    "errors": (404, 503),
}
_INFER: Doc = {
    "tags": ["inference"],
    "summary": "Run the model on tensors (JSON or binary tensor data).",
    "parameters": [
        {
            "name": "Inference-Header-Content-Length",
            "in": "header",
            "schema": NAT,
            "description": "Binary tensor extension: bytes of the JSON header; the "
            "raw tensor data follows it.",
        }
    ],
    "requestBody": body(
        ref("InferRequest"),
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
                    "schema": NAT,
                    "description": "Present with binary outputs.",
                }
            },
            "content": {
                JSON: {"schema": ref("InferResponse")},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
    "errors": (400, 404, 413, 429, 503, 504),
}
_GENERATE: Doc = {
    "tags": ["generation"],
    "requestBody": body(ref("GenerateRequest")),
    "errors": (400, 404, 413, 429, 503, 504),
}
_LIFECYCLE_OK: Doc = {"200": response(ref("LifecycleStatus"), "The model's lifecycle status.")}
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
        "200": response(
            obj(
                ("model", "version", "runs", "run_us", "nodes"),
                model=STR,
                version=STR,
                runs=NAT,
                warmup_runs=NAT,
                kernel_us=NUM,
                nodes={"type": "array", "items": {"type": "object"}},
                op_types={"type": "array", "items": {"type": "object"}},
                run_us=obj(("mean", "p50", "min", "max"), mean=NUM, p50=NUM, min=NUM, max=NUM),
            )
        )
    },
    "errors": (400, 404, 503),
}
_TEXT: Doc = {
    "description": "Success: ... (plain text, as vLLM)",
    "content": {"text/plain": {"schema": STR}},
}
_SSE: Doc = {
    "description": "Server-sent events, ending with `data: [DONE]` (OpenAI).",
    "content": {SSE: {"schema": STR}},
}

_M, _MV = "/v2/models/{model}", "/v2/models/{model}/versions/{version}"
OPERATIONS: dict[tuple[str, str], Doc] = {
    ("GET", "/v2/health/live"): {**_HEALTH, "summary": "Is the server live?"},
    ("GET", "/v2/health/ready"): {**_HEALTH, "summary": "Is every expected model ready?"},
    ("GET", "/v2"): {
        "tags": ["health"],
        "summary": "Server metadata.",
        "errors": (),
        "responses": {"200": response(ref("ServerMetadata"))},
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
        "requestBody": body(
            obj(ready={**BOOL, "description": "Only ready versions."}), required=False
        ),
        "responses": {"200": response(ref("RepositoryIndex"))},
        "errors": (400, 413),
    },
    ("POST", "/v2/repository/models/{model}/load"): {
        "tags": ["repository"],
        "summary": "Load or reload the model from the repository.",
        "responses": {"200": response(obj(extra=False))},
        "errors": (400, 404, 503),
    },
    ("POST", "/v2/repository/models/{model}/unload"): {
        "tags": ["repository"],
        "summary": "Unload every version of the model.",
        "responses": {"200": response(obj(extra=False))},
        "errors": (400, 404, 503),
    },
    ("POST", "/v2/repository/models/{model}/{action}"): {
        "tags": ["repository"],
        "summary": "Lifecycle: rollback, canary, promote, abort, status.",
        "description": "`rollback` takes an optional `version`; `canary` a `version` and a "
        "`weight`; the others no body.",
        "requestBody": body(ref("LifecycleBody"), required=False),
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
        "responses": {"200": response(ref("ModelList"))},
        "errors": (),
    },
    ("POST", "/v1/embeddings"): {
        "tags": ["openai"],
        "summary": "Embeddings from a text embedding model.",
        "requestBody": body(ref("EmbeddingsRequest")),
        "responses": {"200": response(ref("Embeddings"))},
        "errors": (400, 404, 413, 429, 503, 504),
    },
    ("POST", "/v1/completions"): {
        "tags": ["openai"],
        "summary": "Text completion (`stream: true`: SSE).",
        "requestBody": body(ref("CompletionRequest")),
        "responses": {
            "200": {
                **response(ref("Completion")),
                "content": {JSON: {"schema": ref("Completion")}, **_SSE["content"]},
            }
        },
        "errors": (400, 404, 413, 429, 503, 504),
    },
    ("POST", "/v1/chat/completions"): {
        "tags": ["openai"],
        "summary": "Chat completion (`stream: true`: SSE).",
        "requestBody": body(ref("ChatRequest")),
        "responses": {
            "200": {
                **response(ref("Completion")),
                "content": {JSON: {"schema": ref("Completion")}, **_SSE["content"]},
            }
        },
        "errors": (400, 404, 413, 429, 503, 504),
    },
    **{
        ("POST", base + "/generate"): {
            **_GENERATE,
            "summary": "Triton generate: one reply.",
            "responses": {"200": response(ref("GenerateResponse"))},
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
                    "content": {SSE: {"schema": STR}},
                }
            },
        }
        for base in (_M, _MV)
    },
    ("POST", "/v1/load_lora_adapter"): {
        "tags": ["openai"],
        "summary": "Load a LoRA adapter at run time (vLLM's API; admin).",
        "requestBody": body(
            obj(
                ("lora_name", "lora_path"),
                lora_path={"type": "string", "minLength": 1},
                lora_name={"type": "string", "description": "base:adapter"},
                scale=NUM,
                tenants={**STRS, "description": "Tenants granted; absent or empty: every tenant."},
            )
        ),
        "responses": {"200": _TEXT},
        "errors": (400, 404, 413, 503),
    },
    ("POST", "/v1/unload_lora_adapter"): {
        "tags": ["openai"],
        "summary": "Unload a LoRA adapter (vLLM's API; admin).",
        "requestBody": body(obj(("lora_name",), lora_name=STR)),
        "responses": {"200": _TEXT},
        "errors": (400, 404, 413, 503),
    },
    ("GET", "/metrics"): {
        "tags": ["observability"],
        "summary": "Prometheus metrics (Triton and vLLM names).",
        "responses": {
            "200": {
                "description": "Prometheus text exposition.",
                "content": {"text/plain": {"schema": STR}},
            }
        },
        "errors": (),
    },
    ("GET", "/dashboard"): {
        "tags": ["observability"],
        "summary": "The live dashboard page.",
        "errors": (),
        "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": STR}}}},
    },
    ("GET", "/v2/dashboard/data"): {
        "tags": ["observability"],
        "summary": "What the dashboard page polls.",
        "errors": (),
        "responses": {
            "200": response(
                obj(("server", "models"), server={"type": "object"}, models={"type": "array"})
            )
        },
    },
    ("GET", PATH): {
        "tags": ["observability"],
        "summary": "This document.",
        "errors": (),
        "responses": {"200": response({"type": "object"})},
    },
}

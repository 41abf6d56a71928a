"""vLLM's runtime LoRA routes: POST /v1/load_lora_adapter and /v1/unload_lora_adapter.

`{"lora_name": "base:adapter", "lora_path": "/path"}` (the path: a GGUF LoRA, an
.onnx_adapter, an adapter version directory or a PEFT directory); edgeinfer's extensions:
`tenants` (the tenants granted; absent or empty: every tenant) and `scale` (GGUF). Admin keys
only (server/auth_http.py). Replies are plain text, as vLLM's.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from edgeinfer.errors import EdgeInferError, InvalidInput
from edgeinfer.lifecycle.interfaces import EngineControl
from edgeinfer.server.http_common import read_json
from edgeinfer.server.openai_http import openai_error
from edgeinfer.server.parse import parse_float


def _doc(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict) or not isinstance(doc.get("lora_name"), str):
        raise InvalidInput("body must be a JSON object with a string 'lora_name'")
    return doc


def routes(engine: EngineControl, max_request_bytes: int) -> list[Route]:
    async def load(request: Request) -> Response:
        try:
            doc = _doc(await read_json(request, max_request_bytes))
            path, tenants = doc.get("lora_path"), doc.get("tenants")
            if not isinstance(path, str) or not path:
                raise InvalidInput("'lora_path' must be a non-empty string")
            if tenants is not None and (
                not isinstance(tenants, list) or not all(isinstance(t, str) for t in tenants)
            ):
                raise InvalidInput("'tenants' must be a list of strings")
            scale = parse_float(doc.get("scale", 1.0), "'scale'", -100.0, 100.0)
            name = await engine.load_adapter(doc["lora_name"], path, tenants, scale)
        except orjson.JSONDecodeError as e:
            return openai_error(InvalidInput(f"body is not valid JSON: {e}"))
        except EdgeInferError as e:
            return openai_error(e)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    async def unload(request: Request) -> Response:
        try:
            doc = _doc(await read_json(request, max_request_bytes))
            name = engine.unload_adapter(doc["lora_name"])
        except orjson.JSONDecodeError as e:
            return openai_error(InvalidInput(f"body is not valid JSON: {e}"))
        except EdgeInferError as e:
            return openai_error(e)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    return [
        Route("/v1/load_lora_adapter", load, methods=["POST"]),
        Route("/v1/unload_lora_adapter", unload, methods=["POST"]),
    ]

"""Text generation over HTTP: OpenAI `/v1/completions` and `/v1/chat/completions` (SSE with
`stream: true`), and Triton's generate extension `/v2/models/{m}[/versions/{v}]/generate[_stream]`.

Protocol translation only: requests become a GenerateRequest for the Engine, whose one stream of
chunks becomes either SSE events or (collected) a single JSON reply. Errors before the first
token are plain error replies with their status; an error after streaming began is sent as a
final `error` event, as OpenAI and Triton do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from edgeinfer.errors import EdgeInferError, InvalidInput, InvalidParameter
from edgeinfer.lifecycle.interfaces import EngineClient
from edgeinfer.server.errors import status_of
from edgeinfer.server.http_common import (
    ClientDisconnected,
    error_response,
    json_response,
    read_json,
    unless_disconnected,
)
from edgeinfer.server.offload import off_loop
from edgeinfer.server.openai_reply import Reply, merged, usage
from edgeinfer.server.openai_tools import plan, response_format
from edgeinfer.server.parse import parse_int
from edgeinfer.serving.llm_loop import GenChunk, GenerateRequest, GenerationStream
from edgeinfer.serving.sampling import SamplingParams, TokenLogprob
from edgeinfer.serving.tool_formats import GENERIC
from edgeinfer.telemetry.tracing import traced

SSE = "text/event-stream; charset=utf-8"
_NUMBERS = {
    "temperature": 1.0,
    "top_p": 1.0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}
MAX_CHOICES = 8


def _error(exc: BaseException) -> Response:
    return error_response(exc, openai=True)


def _int(doc: dict[str, Any], key: str, default: int | None) -> int | None:
    value = doc.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameter(key, f"'{key}' must be an integer")
    return value


def _float(doc: dict[str, Any], key: str, default: float) -> float:
    value = doc.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidParameter(key, f"'{key}' must be a number")
    try:
        return float(value)
    except OverflowError:  # an integer too large for a float: out of every range
        raise InvalidParameter(key, f"'{key}' is out of range") from None


def _logit_bias(raw: Any) -> tuple[tuple[int, float], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise InvalidParameter("logit_bias", "'logit_bias' must map token ids to numbers")
    out = []
    for key, value in raw.items():
        try:
            token = parse_int(key, "logit_bias key")  # ASCII digits: int() takes '٣' and '1_0'
        except InvalidInput:
            raise InvalidParameter(
                "logit_bias", f"logit_bias key {key!r} is not a token id"
            ) from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidParameter("logit_bias", f"logit_bias[{key!r}] must be a number")
        out.append((token, float(value)))
    return tuple(out)


def choices(doc: dict[str, Any]) -> int:
    """`n`: how many choices to generate (independent sequences on the same prompt)."""
    n = _int(doc, "n", 1)
    assert n is not None
    if not 1 <= n <= MAX_CHOICES:
        raise InvalidParameter("n", f"'n' must be between 1 and {MAX_CHOICES}")
    best_of = _int(doc, "best_of", None)
    if best_of not in (None, 1, n):
        raise InvalidParameter("best_of", "'best_of' must equal 'n' (no reranking is done)")
    return n


def sampling_params(
    doc: dict[str, Any],
    max_tokens: int | None,
    logprobs: int | None,
) -> SamplingParams:
    """The sampling fields OpenAI and vLLM clients send (top_k, min_p, repetition_penalty,
    stop_token_ids and ignore_eos are vLLM's extensions)."""
    if doc.get("suffix"):
        raise InvalidParameter("suffix", "'suffix' is not supported")
    stop = doc.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else stop
    if not isinstance(stop, list | tuple) or not all(isinstance(s, str) for s in stop):
        raise InvalidParameter("stop", "'stop' must be a string or a list of strings")
    ids = doc.get("stop_token_ids") or ()
    if not isinstance(ids, list | tuple) or not all(type(t) is int for t in ids):
        raise InvalidParameter("stop_token_ids", "'stop_token_ids' must be a list of integers")
    return SamplingParams(
        max_tokens=max_tokens,
        top_k=_int(doc, "top_k", 0) or 0,
        seed=_int(doc, "seed", None),
        stop=tuple(stop),
        stop_token_ids=tuple(ids),
        ignore_eos=bool(doc.get("ignore_eos")),
        logprobs=logprobs,
        logit_bias=_logit_bias(doc.get("logit_bias")),
        **{k: _float(doc, k, v) for k, v in _NUMBERS.items()},
    )


def _messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("'messages' must be a non-empty list")
    out = []
    for m in raw:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InvalidInput("each message needs a string 'role'")
        content = m.get("content") or ""
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise InvalidInput("only text content parts are supported")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise InvalidInput("message 'content' must be a string or a list of text parts")
        out.append({**m, "content": content})
    return out


def _prompt(raw: Any) -> str | list[int]:
    if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], str | list):
        raw = raw[0]  # a batch of one
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list) and raw and all(type(t) is int for t in raw):
        return raw
    raise InvalidInput("'prompt' must be a string or a list of token ids (one prompt)")


def _usage(c: GenChunk) -> dict[str, Any]:
    return usage(c.prompt_tokens, c.completion_tokens, c.cached_tokens)


def _cache_prompt(doc: dict[str, Any]) -> bool:
    """llama-server's `cache_prompt` (default true): false prefills the whole prompt."""
    value = doc.get("cache_prompt", True)
    if not isinstance(value, bool):
        raise InvalidInput("'cache_prompt' must be true or false")
    return value


async def _sse(events: AsyncIterator[Any], done: bool = True) -> AsyncIterator[bytes]:
    """Server-sent events; an error after the first event becomes a last `error` event."""
    try:
        async for event in events:
            yield b"data: " + orjson.dumps(event) + b"\n\n"
    except EdgeInferError as e:
        status, _, message = status_of(e)
        yield b"data: " + orjson.dumps({"error": {"message": message, "code": status}}) + b"\n\n"
    if done:
        yield b"data: [DONE]\n\n"


async def _collect(stream: GenerationStream) -> tuple[str, GenChunk, list[TokenLogprob]]:
    parts: list[str] = []
    lps: list[TokenLogprob] = []
    last: GenChunk | None = None
    async for c in stream:
        parts.append(c.text)
        lps += c.logprobs or []
        last = c
    assert last is not None
    return "".join(parts), last, lps


async def _start(engine: EngineClient, req: GenerateRequest, n: int) -> list[GenerationStream]:
    """`n` generations of one request (seed, seed + 1, ... when seeded); all or none."""
    streams: list[GenerationStream] = []
    try:
        for i in range(n):
            params = req.params
            if i and params.seed is not None:
                params = dataclasses.replace(params, seed=params.seed + i)
            streams.append(await engine.generate(dataclasses.replace(req, params=params)))
    except BaseException:
        for s in streams:
            s.cancel()
        raise
    return streams


def _openai_request(
    doc: dict[str, Any],
    chat: bool,
    headers: dict[str, str],
) -> tuple[GenerateRequest, Reply]:
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), str):
        raise InvalidInput("body must be a JSON object with a string 'model'")
    fmt = response_format(doc)
    tools = None
    if chat:
        messages, prompt = _messages(doc.get("messages")), None
        max_tokens = _int(doc, "max_completion_tokens", _int(doc, "max_tokens", None))
        top = _int(doc, "top_logprobs", 0) or 0
        logprobs = top if doc.get("logprobs") else None
        tools = plan(doc, messages, fmt)
        messages, fmt = tools.messages, tools.constraint
    else:
        messages, prompt = None, _prompt(doc.get("prompt"))
        if doc.get("echo"):
            raise InvalidParameter("echo", "'echo' is not supported")
        if doc.get("tools") is not None:
            raise InvalidParameter("tools", "'tools' needs /v1/chat/completions")
        max_tokens = _int(doc, "max_tokens", 16)
        logprobs = _int(doc, "logprobs", None)
    params = sampling_params(doc, max_tokens, logprobs)
    options = doc.get("stream_options") or {}
    if not isinstance(options, dict):
        raise InvalidParameter("stream_options", "'stream_options' must be an object")
    reply = Reply(
        chat,
        doc["model"],
        bool(doc.get("stream") and options.get("include_usage")),
        choices(doc),
        GENERIC if tools is not None and tools.envelope else "",
        logprobs is not None,
    )
    req = GenerateRequest(
        doc["model"],
        params,
        prompt=prompt,
        messages=messages,
        metadata=headers,
        constraint=fmt,
        cache_prompt=_cache_prompt(doc),
        tools=tools.spec if tools is not None else None,
    )
    return req, reply


def routes(engine: EngineClient, max_request_bytes: int) -> list[Route]:
    async def openai(request: Request, chat: bool) -> Response:
        try:
            doc = await read_json(request, max_request_bytes)
            length = request.headers.get("content-length", "")  # tools and schemas: linear work
            size = int(length) if length.isdigit() else 0
            req, reply = await off_loop(size, _openai_request, doc, chat, dict(request.headers))
            streams = await _start(engine, req, reply.n)
            if streams[0].tool_format:  # the model's own tool format, not the generic one
                reply.tools = streams[0].tool_format
        except orjson.JSONDecodeError as e:
            return _error(InvalidInput(f"body is not valid JSON: {e}"))
        except EdgeInferError as e:
            return _error(e)
        if doc.get("stream"):
            return StreamingResponse(_sse(reply.events(merged(streams))), media_type=SSE)
        try:
            body = await unless_disconnected(request, reply.whole(merged(streams)))
        except EdgeInferError as e:
            return _error(e)
        except ClientDisconnected:
            return Response(status_code=499)
        return json_response(body)

    def span(path: str, chat: bool) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            attrs = {"http.request.method": "POST", "url.path": path}
            return await traced(
                engine.tracer,
                f"POST {path}",
                request.headers,
                attrs,
                lambda _: openai(request, chat=chat),
                lambda response: response.status_code,
            )

        return route

    completions = span("/v1/completions", chat=False)
    chat_completions = span("/v1/chat/completions", chat=True)

    generate_routes = _generate_routes(engine, max_request_bytes)
    return [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        *generate_routes,
    ]


# ---- Triton's generate extension ------------------------------------------------------------
async def _start_generation(
    engine: EngineClient, request: Request, max_request_bytes: int
) -> tuple[dict[str, Any], str, GenerationStream, str]:
    """Parse a generate request and start it: (reply head, echoed prefix, stream, model)."""
    doc = await read_json(request, max_request_bytes)
    if not isinstance(doc, dict) or not isinstance(doc.get("text_input"), str):
        raise InvalidInput("body must be a JSON object with a string 'text_input'")
    params = {k: v for k, v in doc.items() if k not in ("id", "text_input", "parameters")}
    extra = doc.get("parameters") or {}
    if not isinstance(extra, dict):
        raise InvalidInput("'parameters' must be an object")
    params.update(extra)
    sampling = sampling_params(
        params, _int(params, "max_tokens", 16), _int(params, "logprobs", None)
    )
    if isinstance(params.get("response_format"), str):  # Triton parameters are scalars
        params["response_format"] = orjson.loads(params["response_format"])
    model = request.path_params["model"]
    stream = await engine.generate(
        GenerateRequest(
            model,
            sampling,
            prompt=doc["text_input"],
            version=request.path_params.get("version"),
            parameters=params,
            metadata=dict(request.headers),
            constraint=response_format(params),
            cache_prompt=_cache_prompt(params),
        )
    )
    prefix = doc["text_input"] if params.get("exclude_input_in_output") is False else ""
    head = {"model_name": model, "model_version": stream.version}
    if isinstance(doc.get("id"), str):
        head = {"id": doc["id"], **head}
    return head, prefix, stream, model


def _generate_routes(engine: EngineClient, max_request_bytes: int) -> list[Route]:
    """`{"text_input": ..., "parameters": {...}}` -> `{"model_name", "model_version",
    "text_output"}`. Sampling parameters may also sit at the top level (Triton passes extra
    fields as parameters). The output excludes the prompt unless exclude_input_in_output is
    false. max_tokens defaults to 16, as in Triton's vLLM backend."""

    fail = error_response

    def handler(streaming: bool) -> Callable[[Request], Any]:
        async def generate(request: Request) -> Response:
            try:
                head, prefix, stream, _ = await _start_generation(
                    engine, request, max_request_bytes
                )
            except orjson.JSONDecodeError as e:
                return fail(InvalidInput(f"body is not valid JSON: {e}"))
            except EdgeInferError as e:
                return fail(e)
            if streaming:
                return StreamingResponse(
                    _sse(_generate_events(head, prefix, stream), done=False), media_type=SSE
                )
            try:
                text, last, _ = await unless_disconnected(request, _collect(stream))
            except EdgeInferError as e:
                return fail(e)
            except ClientDisconnected:
                return Response(status_code=499)
            return json_response(
                {
                    **head,
                    "text_output": prefix + text,
                    "finish_reason": last.finish_reason,
                    "usage": _usage(last),
                }
            )

        return generate

    m, mv = "/v2/models/{model}", "/v2/models/{model}/versions/{version}"
    return [
        Route(base + "/" + name, handler(name.endswith("stream")), methods=["POST"])
        for base in (m, mv)
        for name in ("generate", "generate_stream")
    ]


async def _generate_events(
    head: dict[str, Any], prefix: str, stream: GenerationStream
) -> AsyncIterator[Any]:
    async for c in stream:
        if c.text or c.finish_reason or prefix:
            event = {**head, "text_output": prefix + c.text}
            prefix = ""
            if c.finish_reason:
                event["finish_reason"] = c.finish_reason
            yield event

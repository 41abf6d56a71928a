"""Text generation over HTTP: OpenAI `/v1/completions` and `/v1/chat/completions` (SSE with
`stream: true`), and Triton's generate extension `/v2/models/{m}[/versions/{v}]/generate[_stream]`.

Protocol translation only: requests become a GenerateRequest for the Engine, whose one stream of
chunks becomes either SSE events or (collected) a single JSON reply. Errors before the first
token are plain error replies with their status; an error after streaming began is sent as a
final `error` event, as OpenAI and Triton do.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from edgeinfer.errors import EdgeInferError, InvalidInput
from edgeinfer.lifecycle import Engine
from edgeinfer.server.errors import retry_after, status_of
from edgeinfer.server.http_common import (
    ClientDisconnected,
    json_response,
    read_json,
    unless_disconnected,
)
from edgeinfer.server.openai_http import openai_error
from edgeinfer.serving.llm_loop import GenChunk, GenerateRequest, GenerationStream
from edgeinfer.serving.sampling import SamplingParams, TokenLogprob

SSE = "text/event-stream; charset=utf-8"
_NUMBERS = {"temperature": 1.0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0,
            "presence_penalty": 0.0, "frequency_penalty": 0.0}  # fmt: skip
_UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "suffix")


def _error(exc: BaseException, param: str | None = None) -> Response:
    resp = openai_error(exc, param)
    ra = retry_after(exc)
    if ra is not None and resp.status_code in (429, 503):
        resp.headers["Retry-After"] = ra
    return resp


def _int(doc: dict[str, Any], key: str, default: int | None) -> int | None:
    value = doc.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"'{key}' must be an integer")
    return value


def _float(doc: dict[str, Any], key: str, default: float) -> float:
    value = doc.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"'{key}' must be a number")
    return float(value)


def sampling_params(doc: dict[str, Any], max_tokens: int | None, logprobs: int | None,
                    ) -> SamplingParams:  # fmt: skip
    """The sampling fields OpenAI and vLLM clients send (top_k, min_p, repetition_penalty,
    stop_token_ids and ignore_eos are vLLM's extensions)."""
    if _int(doc, "n", 1) != 1 or _int(doc, "best_of", 1) != 1:
        raise InvalidInput("only n = 1 (and best_of = 1) is supported")
    for key in _UNSUPPORTED:
        if doc.get(key):
            raise InvalidInput(f"'{key}' is not supported")
    if doc.get("logit_bias"):
        raise InvalidInput("'logit_bias' is not supported")
    fmt = doc.get("response_format")
    if fmt and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise InvalidInput("only response_format {'type': 'text'} is supported")
    stop = doc.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else stop
    if not isinstance(stop, list | tuple) or not all(isinstance(s, str) for s in stop):
        raise InvalidInput("'stop' must be a string or a list of strings")
    ids = doc.get("stop_token_ids") or ()
    if not isinstance(ids, list | tuple) or not all(type(t) is int for t in ids):
        raise InvalidInput("'stop_token_ids' must be a list of integers")
    return SamplingParams(
        max_tokens=max_tokens, top_k=_int(doc, "top_k", 0) or 0, seed=_int(doc, "seed", None),
        stop=tuple(stop), stop_token_ids=tuple(ids), ignore_eos=bool(doc.get("ignore_eos")),
        logprobs=logprobs, **{k: _float(doc, k, v) for k, v in _NUMBERS.items()},
    )  # fmt: skip


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


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def _completion_logprobs(lps: list[TokenLogprob], offset: int) -> dict[str, Any]:
    tokens, offsets = [], []
    for lp in lps:
        offsets.append(offset)
        tokens.append(_text(lp.piece))
        offset += len(tokens[-1])
    return {
        "tokens": tokens,
        "token_logprobs": [lp.logprob for lp in lps],
        "top_logprobs": [{_text(p): v for p, (_, v) in zip(lp.top_pieces, lp.top, strict=True)}
                         for lp in lps],
        "text_offset": offsets,
    }  # fmt: skip


def _chat_logprobs(lps: list[TokenLogprob]) -> dict[str, Any]:
    def entry(piece: bytes, logprob: float) -> dict[str, Any]:
        return {"token": _text(piece), "logprob": logprob, "bytes": list(piece)}

    return {"content": [
        {**entry(lp.piece, lp.logprob),
         "top_logprobs": [entry(p, v) for p, (_, v) in zip(lp.top_pieces, lp.top, strict=True)]}
        for lp in lps
    ]}  # fmt: skip


def _usage(c: GenChunk) -> dict[str, int]:
    return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens}  # fmt: skip


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


class _Reply:
    """Shapes one generation as an OpenAI completion or chat completion."""

    def __init__(self, chat: bool, model: str, include_usage: bool) -> None:
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage
        self.object = "chat.completion" if chat else "text_completion"

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": None}  # fmt: skip

    def whole(self, text: str, last: GenChunk, lps: list[TokenLogprob] | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": last.finish_reason}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
            choice["logprobs"] = _chat_logprobs(lps) if lps is not None else None
        else:
            choice["text"] = text
            choice["logprobs"] = _completion_logprobs(lps, 0) if lps is not None else None
        return {**self._head(self.object), "choices": [choice], "usage": _usage(last)}

    async def events(self, stream: GenerationStream, logprobs: bool) -> AsyncIterator[Any]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        extra = {"usage": None} if self.include_usage else {}
        if self.chat:
            first = {"index": 0, "delta": {"role": "assistant", "content": ""},
                     "logprobs": None, "finish_reason": None}  # fmt: skip
            yield {**self._head(obj), "choices": [first], **extra}
        offset, last = 0, None
        async for c in stream:
            last = c
            if not (c.text or c.finish_reason or (logprobs and c.logprobs)):
                continue  # held back (a possible stop string or an incomplete character)
            lp: Any = None
            if logprobs and c.logprobs:
                lp = (_chat_logprobs(c.logprobs) if self.chat
                      else _completion_logprobs(c.logprobs, offset))  # fmt: skip
            offset += len(c.text)
            choice: dict[str, Any] = {"index": 0, "logprobs": lp, "finish_reason": c.finish_reason}
            if self.chat:
                choice["delta"] = {"content": c.text} if c.text else {}
            else:
                choice["text"] = c.text
            yield {**self._head(obj), "choices": [choice], **extra}
        if self.include_usage and last is not None:
            yield {**self._head(obj), "choices": [], "usage": _usage(last)}


def routes(engine: Engine, max_request_bytes: int) -> list[Route]:
    async def openai(request: Request, chat: bool) -> Response:
        try:
            doc = await read_json(request, max_request_bytes)
            if not isinstance(doc, dict) or not isinstance(doc.get("model"), str):
                raise InvalidInput("body must be a JSON object with a string 'model'")
            if chat:
                messages, prompt = _messages(doc.get("messages")), None
                max_tokens = _int(doc, "max_completion_tokens", _int(doc, "max_tokens", None))
                top = _int(doc, "top_logprobs", 0) or 0
                logprobs = top if doc.get("logprobs") else None
            else:
                messages, prompt = None, _prompt(doc.get("prompt"))
                if doc.get("echo"):
                    raise InvalidInput("'echo' is not supported")
                max_tokens = _int(doc, "max_tokens", 16)
                logprobs = _int(doc, "logprobs", None)
            params = sampling_params(doc, max_tokens, logprobs)
            options = doc.get("stream_options") or {}
            if not isinstance(options, dict):
                raise InvalidInput("'stream_options' must be an object")
            reply = _Reply(chat, doc["model"], bool(doc.get("stream") and
                                                    options.get("include_usage")))  # fmt: skip
            stream = await engine.generate(GenerateRequest(
                doc["model"], params, prompt=prompt, messages=messages,
                metadata=dict(request.headers)))  # fmt: skip
        except orjson.JSONDecodeError as e:
            return _error(InvalidInput(f"body is not valid JSON: {e}"))
        except EdgeInferError as e:
            return _error(e)
        if doc.get("stream"):
            return StreamingResponse(_sse(reply.events(stream, logprobs is not None)),
                                     media_type=SSE)  # fmt: skip
        try:
            text, last, lps = await unless_disconnected(request, _collect(stream))
        except EdgeInferError as e:
            return _error(e)
        except ClientDisconnected:
            return Response(status_code=499)
        return json_response(reply.whole(text, last, lps if logprobs is not None else None))

    async def completions(request: Request) -> Response:
        return await openai(request, chat=False)

    async def chat_completions(request: Request) -> Response:
        return await openai(request, chat=True)

    generate_routes = _generate_routes(engine, max_request_bytes)
    return [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        *generate_routes,
    ]


# ---- Triton's generate extension ------------------------------------------------------------
def _generate_routes(engine: Engine, max_request_bytes: int) -> list[Route]:
    """`{"text_input": ..., "parameters": {...}}` -> `{"model_name", "model_version",
    "text_output"}`. Sampling parameters may also sit at the top level (Triton passes extra
    fields as parameters). The output excludes the prompt unless exclude_input_in_output is
    false. max_tokens defaults to 16, as in Triton's vLLM backend."""

    def fail(e: BaseException) -> Response:
        status, _, message = status_of(e)
        headers = {"Retry-After": ra} if (ra := retry_after(e)) and status in (429, 503) else None
        return json_response({"error": message}, status, headers)

    async def start(request: Request) -> tuple[dict[str, Any], str, GenerationStream, str]:
        doc = await read_json(request, max_request_bytes)
        if not isinstance(doc, dict) or not isinstance(doc.get("text_input"), str):
            raise InvalidInput("body must be a JSON object with a string 'text_input'")
        params = {k: v for k, v in doc.items() if k not in ("id", "text_input", "parameters")}
        extra = doc.get("parameters") or {}
        if not isinstance(extra, dict):
            raise InvalidInput("'parameters' must be an object")
        params.update(extra)
        sampling = sampling_params(params, _int(params, "max_tokens", 16),
                                   _int(params, "logprobs", None))  # fmt: skip
        model = request.path_params["model"]
        stream = await engine.generate(GenerateRequest(
            model, sampling, prompt=doc["text_input"],
            version=request.path_params.get("version"), parameters=params,
            metadata=dict(request.headers)))  # fmt: skip
        prefix = doc["text_input"] if params.get("exclude_input_in_output") is False else ""
        head = {"model_name": model, "model_version": stream.version}
        if isinstance(doc.get("id"), str):
            head = {"id": doc["id"], **head}
        return head, prefix, stream, model

    def handler(streaming: bool) -> Callable[[Request], Any]:
        async def generate(request: Request) -> Response:
            try:
                head, prefix, stream, _ = await start(request)
            except orjson.JSONDecodeError as e:
                return fail(InvalidInput(f"body is not valid JSON: {e}"))
            except EdgeInferError as e:
                return fail(e)
            if streaming:
                return StreamingResponse(_sse(_generate_events(head, prefix, stream), done=False),
                                         media_type=SSE)  # fmt: skip
            try:
                text, last, _ = await unless_disconnected(request, _collect(stream))
            except EdgeInferError as e:
                return fail(e)
            except ClientDisconnected:
                return Response(status_code=499)
            return json_response({**head, "text_output": prefix + text,
                                  "finish_reason": last.finish_reason, "usage": _usage(last)})  # fmt: skip

        return generate

    m, mv = "/v2/models/{model}", "/v2/models/{model}/versions/{version}"
    return [
        Route(base + "/" + name, handler(name.endswith("stream")), methods=["POST"])
        for base in (m, mv)
        for name in ("generate", "generate_stream")
    ]


async def _generate_events(head: dict[str, Any], prefix: str,
                           stream: GenerationStream) -> AsyncIterator[Any]:  # fmt: skip
    async for c in stream:
        if c.text or c.finish_reason or prefix:
            event = {**head, "text_output": prefix + c.text}
            prefix = ""
            if c.finish_reason:
                event["finish_reason"] = c.finish_reason
            yield event

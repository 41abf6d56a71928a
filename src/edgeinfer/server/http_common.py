"""Helpers shared by the HTTP front ends: JSON responses, errors, bounded body reads."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from edgeinfer.errors import InvalidInput, PayloadTooLarge
from edgeinfer.server.errors import retry_after, status_of
from edgeinfer.server.offload import inflate, off_loop, parse_json
from edgeinfer.server.parse import parse_int

T = TypeVar("T")

JOIN_RELEASES_GIL = 1 << 20  # bytes.join drops the GIL past this many bytes


class ClientDisconnected(Exception):
    """The HTTP client went away before its response was ready."""


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (a queued request then leaves
    the queue; a running one has its result dropped). Call after the body has been read."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    try:
        if not task.done():
            task.cancel()
            raise ClientDisconnected
        return task.result()
    finally:
        # An error raised here carries a traceback holding this frame; the frame must not hold
        # the task that holds the error, or the request (and its body) waits for a full GC.
        del task, watcher


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


_OPENAI_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout",
}


def error_response(exc: BaseException, openai: bool = False, param: str | None = None) -> Response:
    """The one error reply: status and message from server/errors.py, Retry-After on 429/503;
    KServe's body {"error": message}, or with `openai` OpenAI's {"error": {message, type,
    param, code}} (an InvalidParameter names its own `param`)."""
    status, _, message = status_of(exc)
    headers = {}
    if (ra := retry_after(exc)) is not None and status in (429, 503):
        headers["Retry-After"] = ra
    if not openai:
        return json_response({"error": message}, status, headers)
    body = {
        "error": {
            "message": message,
            "type": _OPENAI_TYPES.get(status, "server_error"),
            "param": getattr(exc, "param", None) or param,
            "code": status,
        }
    }
    return json_response(body, status, headers)


async def read_body(request: Request, limit: int, flag: str = "--max-request-bytes") -> bytes:
    """The request body, refused with PayloadTooLarge past `limit` bytes (before reading it all
    when Content-Length says so), and inflated when Content-Encoding is gzip or deflate. `flag`
    names the setting behind `limit` in the error."""
    declared = request.headers.get("content-length")
    if declared is not None and parse_int(declared, "Content-Length") > limit:
        raise PayloadTooLarge(
            f"request body of {declared} bytes exceeds the limit of {limit} bytes ({flag})"
        )
    chunks = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes ({flag})")
            chunks.append(chunk)
    except ClientDisconnect:  # gone mid-body: nobody to answer, nothing to log
        raise ClientDisconnected from None
    # bytes.join releases the GIL while copying past 1 MiB (CPython 3.9+): a thread then frees the
    # event loop for the copy and the page faults of a body of tens of megabytes. Below that it
    # holds the GIL, so a thread would free nothing and only add a hop (~1 ms at c=1 when the
    # model's threads hold every core).
    body = b"".join(chunks) if size <= JOIN_RELEASES_GIL else await off_loop(size, b"".join, chunks)
    del chunks
    encoding = request.headers.get("content-encoding", "").lower()
    if encoding in ("gzip", "deflate"):
        return await inflate(body, encoding, limit)
    if encoding not in ("", "identity"):
        raise InvalidInput(f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none")
    return body


async def read_json(request: Request, limit: int) -> Any:
    """A JSON body of at most `limit` bytes (--max-json-bytes), parsed off the event loop when
    large; InvalidInput when it is not JSON."""
    return await parse_json(await read_body(request, limit, "--max-json-bytes"), limit)

"""The HTTP connection limits uvicorn leaves open, as a subclass of its httptools protocol.

uvicorn arms no timer before a request's headers are complete (its keep-alive timer runs only
between requests and is cancelled by the next byte), does not cap open connections
(`limit_concurrency` answers 503 to new *requests* once there are that many connections, so
a few hundred idle sockets would lock everyone out) and has no header size limit with
httptools. Here each request head gets an absolute deadline, from the connection's start or
from the first byte of the next request on a kept-alive connection: a client sending headers
at one byte per second is answered 408 and closed, however steadily it trickles. Connections
beyond the cap are answered 503 and closed at once, so descriptors stay bounded."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("edgeinfer.server")

_REASONS = {
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


def guarded_protocol(
    header_timeout_s: float, max_connections: int, max_header_bytes: int
) -> type[asyncio.Protocol]:
    """The protocol class to give uvicorn.Config(http=...)."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout_s": header_timeout_s,
            "max_connections": max_connections,
            "max_header_bytes": max_header_bytes,
        },
    )


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout_s = 10.0
    max_connections = 512
    max_header_bytes = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # received while the head is incomplete (bounds buffering)
        self._head_size = 0  # parsed request line and headers (bounds a head read at once)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse(503, f"more than {self.max_connections} open connections; retry later")
            return
        self._arm_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_timer is not None:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._head_timer is not None and self._head_bytes > self.max_header_bytes:
            self._refuse(431, f"request line and headers exceed {self.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # a new request on a kept-alive (or pipelined) connection
            self._arm_head()

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm_head()
        if self._head_size <= self.max_header_bytes:
            super().on_headers_complete()
            return
        # A head that arrived in one read: answer it through uvicorn's own request cycle (as
        # its limit_concurrency does), so the parser state stays consistent.
        app, self.app = self.app, _head_too_large
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def _arm_head(self) -> None:
        self._head_bytes = self._head_size = 0
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def _disarm_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        self._refuse(408, f"request headers not received within {self.header_timeout_s:g} s")

    def _refuse(self, status: int, message: str) -> None:
        self._disarm_head()
        if self.transport.is_closing():
            return
        body = message.encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, _REASONS[status], len(body), body)
        )
        self.transport.close()


async def _head_too_large(scope: Any, receive: Any, send: Any) -> None:
    body = b"request line and headers are too large"
    await send(
        {
            "type": "http.response.start",
            "status": 431,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", b"%d" % len(body)),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

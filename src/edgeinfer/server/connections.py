"""The HTTP connection limits uvicorn leaves open, as a subclass of its httptools protocol.

uvicorn arms no timer before a request's headers are complete (its keep-alive timer runs only
between requests and is cancelled by the next byte), does not cap open connections
(`limit_concurrency` answers 503 to new *requests* once there are that many connections, so
a few hundred idle sockets would lock everyone out) and has no header size limit with
httptools. Here each request head gets an absolute deadline, from the connection's start or
from the first byte of the next request on a kept-alive connection: a client sending headers
at one byte per second is answered 408 and closed, however steadily it trickles. Connections
beyond the cap are answered 503 and closed at once, so descriptors stay bounded.

The per-request cost is two attribute writes: the deadlines are enforced by one sweep over the
open connections a few times per timeout (not a timer armed and cancelled per request, which
cost ~10 % of a tiny model's throughput), and a head's size is only added up when the bytes
received while it was incomplete could exceed the limit."""

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
            "_sweeping": None,
        },
    )


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout_s = 10.0
    max_connections = 512
    max_header_bytes = 64 * 1024
    # The loop whose sweep runs for this server's connections (a class per server, made by
    # guarded_protocol); None while it has none.
    _sweeping: asyncio.AbstractEventLoop | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_since: float | None = None  # loop time the incomplete head started
        self._head_bytes = 0  # received while the head is incomplete (bounds buffering)
        self._read_bytes = 0  # the read being parsed now

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse(503, f"more than {self.max_connections} open connections; retry later")
            return
        self._head_since = self.loop.time()
        self._head_bytes = 0
        cls = type(self)
        if cls._sweeping is not self.loop:
            cls._sweeping = self.loop
            self.loop.call_later(cls._period(), cls._sweep_heads, self.loop, self.connections)

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_since = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._read_bytes = len(data)
        if self._head_since is None:
            super().data_received(data)
            return
        self._head_bytes += len(data)
        super().data_received(data)
        if self._head_since is not None and self._head_bytes > self.max_header_bytes:
            self._refuse(431, f"request line and headers exceed {self.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_since is None:  # a new request on a kept-alive (or pipelined) connection
            self._head_since = self.loop.time()
            self._head_bytes = self._read_bytes  # at most this read holds its head so far

    def on_headers_complete(self) -> None:
        self._head_since = None
        if self._head_bytes <= self.max_header_bytes or self._head_size() <= self.max_header_bytes:
            super().on_headers_complete()
            return
        # A head that arrived in one read: answer it through uvicorn's own request cycle (as
        # its limit_concurrency does), so the parser state stays consistent.
        app, self.app = self.app, _head_too_large
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def _head_size(self) -> int:
        return len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers)

    @classmethod
    def _period(cls) -> float:
        """How often heads are checked: a deadline is enforced at most this late."""
        return max(0.05, min(1.0, cls.header_timeout_s / 4))

    @classmethod
    def _sweep_heads(cls, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        """408 for every connection of this server whose head is past its deadline; runs while
        the server has connections. A connection whose refusal fails is logged and skipped: the
        sweep always goes on, or no deadline of this server would be enforced again."""
        now = loop.time()
        try:
            for conn in list(connections):
                since = getattr(conn, "_head_since", None)
                if since is None or now - since < cls.header_timeout_s:
                    continue
                try:
                    conn._head_timeout()
                except Exception:
                    conn._head_since = None  # refused once; not again every sweep
                    log.exception("closing a connection past its header deadline failed")
        finally:
            if connections:
                loop.call_later(cls._period(), cls._sweep_heads, loop, connections)
            else:
                cls._sweeping = None

    def _head_timeout(self) -> None:
        self._refuse(408, f"request headers not received within {self.header_timeout_s:g} s")

    def _refuse(self, status: int, message: str) -> None:
        self._head_since = None
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

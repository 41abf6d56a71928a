"""The guarded HTTP protocol on a real uvicorn listener: header deadline, header size, cap."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from edgeinfer.server.connections import guarded_protocol
from tests.helpers import free_port, wait_until


async def hello(request: object) -> PlainTextResponse:
    return PlainTextResponse("hello")


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(
        Starlette(routes=[Route("/", hello)]), host="127.0.0.1", port=port, log_level="error",
        http=guarded_protocol(header_timeout_s=1.0, max_connections=20, max_header_bytes=4096),
        timeout_keep_alive=1, lifespan="off",
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 10, "uvicorn to listen")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(4096):
        out += chunk
    return out


def test_a_trickled_head_gets_408_and_is_closed(url: str) -> None:
    s = _connect(url)
    start = time.monotonic()
    for b in b"GET / HTTP/1.1\r\nHost: x\r\n":  # one byte every 0.1 s: past the 1 s deadline
        try:
            s.send(bytes([b]))
        except OSError:
            break
        time.sleep(0.1)
    reply = _read_all(s)
    assert reply.startswith(b"HTTP/1.1 408 ") and 0.9 < time.monotonic() - start < 4
    s.close()


def test_a_silent_connection_is_closed(url: str) -> None:
    s = _connect(url)
    assert _read_all(s).startswith(b"HTTP/1.1 408 ")


def test_oversized_headers_get_431_in_one_read_or_many(url: str) -> None:
    s = _connect(url)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8192 + b"\r\n\r\n")
    assert _read_all(s).startswith(b"HTTP/1.1 431 ")
    s = _connect(url)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
    try:
        for _ in range(4):  # never completed: refused once the buffered bytes pass the limit
            s.sendall(b"a" * 2000)
            time.sleep(0.05)
    except OSError:
        pass
    assert _read_all(s).startswith(b"HTTP/1.1 431 ")


def test_connections_over_the_cap_get_503_and_the_rest_are_served(url: str) -> None:
    held = [_connect(url) for _ in range(20)]
    time.sleep(0.2)
    extra = _connect(url)
    assert _read_all(extra).startswith(b"HTTP/1.1 503 ")
    for s in held:
        s.close()
    time.sleep(0.2)
    assert httpx.get(url).text == "hello"


def test_kept_alive_requests_each_get_a_fresh_deadline(url: str) -> None:
    with httpx.Client() as client:
        for _ in range(3):  # one connection, 0.6 s apart: 1.8 s in all, past one deadline
            assert client.get(url).text == "hello"
            time.sleep(0.6)  # the time between requests is the behaviour under test

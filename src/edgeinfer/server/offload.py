"""Work proportional to a request's size runs in a worker thread, not on the event loop.

Parsing a large JSON body, decoding tensors (base64, binary, BYTES elements), inflating a gzip
body and encoding a large response each take time in proportion to the request; on the event
loop that time is a stall for every other client, health checks included. Below
`OFFLOAD_BYTES` a thread hop (~50 µs) costs more than the work, so small bodies stay inline.

The work goes to one dedicated thread, not asyncio's default executor: that one grows to
cpu_count + 4 threads, and glibc gives each thread that allocates its own malloc arena, which
keeps the freed request bodies (measured: +23 MB RSS after ResNet requests of 600 KB at
concurrency 32 on 2 cores, and `malloc_trim` does not return it). The work holds the GIL for
most of its time anyway, so more threads would not run it faster.

A worker thread frees the loop only while the work releases the GIL. orjson holds it for a whole
`loads`, so JSON bodies also have a size limit (`--max-json-bytes`, see docs/server.md): the
longest stall a JSON body can cause is the time to parse that many bytes. Tensors sent with the
binary tensor extension are not JSON and may use the whole `--max-request-bytes`.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson

from edgeinfer.errors import InvalidInput, PayloadTooLarge
from edgeinfer.runtime.memory import release_free_memory

T = TypeVar("T")

OFFLOAD_BYTES = 64 * 1024


async def off_loop(size: int, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)`, in a worker thread when `size` (the bytes it works on) is past
    OFFLOAD_BYTES, inline otherwise."""
    if size <= OFFLOAD_BYTES:
        return fn(*args)
    return await in_offload_thread(fn, *args)


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, thread_name_prefix="edgeinfer-offload")


async def in_offload_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on the offload thread, with this task's context (as asyncio.to_thread)."""
    call = functools.partial(contextvars.copy_context().run, fn, *args)
    return await asyncio.get_running_loop().run_in_executor(_pool(), call)


def _loads(raw: bytes | memoryview) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"request body is not valid JSON: {e}") from e


async def parse_json(raw: bytes, limit: int) -> Any:
    """A JSON body as Python values (InvalidInput when malformed, PayloadTooLarge past
    `limit` bytes), parsed off the event loop when large."""
    check_json_size(len(raw), limit)
    return await off_loop(len(raw), _loads, raw)


def check_json_size(size: int, limit: int) -> None:
    if size > limit:
        raise PayloadTooLarge(
            f"JSON body of {size} bytes exceeds the limit of {limit} bytes (--max-json-bytes); "
            "send large tensors with the binary tensor extension"
        )


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    d = zlib.decompressobj(31 if encoding == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise InvalidInput(f"request body is not valid {encoding} data: {e}") from e
    if len(out) > limit or d.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed request body exceeds the limit of {limit} bytes")
    return out


async def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip or deflate body, inflated to at most `limit` bytes, always in a worker thread:
    a body of a few kilobytes can inflate to `limit` (zlib releases the GIL meanwhile)."""
    return await in_offload_thread(_inflate, body, encoding, limit)


# A request that took this long (or was this large) worked through a lot of memory (tokenizing, a big batch's
# intermediate tensors); glibc keeps what was freed in its arenas, so RSS stayed 2.4x up after
# 64 strings of 16 KB went through MiniLM (237 -> 570 MB). Trimming after such a request, in a
# worker thread (ctypes releases the GIL) and at most once a second, brings it back.
TRIM_AFTER_S = 0.1
_TRIM_EVERY_S = 1.0
_last_trim = 0.0


TRIM_AFTER_BYTES = 4 << 20


def trim_after(started_ns: int, size: int = 0) -> None:
    """Call when a request of `size` bytes that started at `started_ns`
    (time.perf_counter_ns()) finishes: long or large ones are followed by a trim."""
    global _last_trim
    now = time.perf_counter()
    if now - started_ns / 1e9 < TRIM_AFTER_S and size < TRIM_AFTER_BYTES:
        return
    if now - _last_trim < _TRIM_EVERY_S:
        return
    _last_trim = now
    asyncio.get_running_loop().run_in_executor(None, release_free_memory)

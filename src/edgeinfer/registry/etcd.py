"""A small asyncio client for etcd v3's JSON gateway (`/v3/...`, etcd 3.4+), on httpx.

Why not a client library: `etcd3` 0.12 ships protobuf-3-era generated code that does not import
under protobuf >= 4 (ours is 6), and `etcd3gw` is synchronous (requests + threads) and its watch
iterator neither ends nor raises when etcd goes away (measured: killed etcd, consumer blocked
forever), so a reconnect could never be noticed. The gateway is a stable, documented API; the
handful of calls below is all a fleet needs, and httpx is already a dependency.

Keys and values are base64 in the gateway's JSON; int64 fields arrive as strings; fields equal to
their zero value are omitted (a failed transaction has no `succeeded`, an expired lease no `TTL`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx


class EtcdError(Exception):
    """etcd answered with an error or could not be reached."""


class Compacted(EtcdError):
    """The watch's start revision was compacted away: read everything again."""


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True)
class Event:
    kind: str  # PUT | DELETE
    kv: KeyValue


@dataclass(frozen=True)
class WatchBatch:
    revision: int  # the store's revision when the batch was sent
    events: tuple[Event, ...]  # empty for the creation notice


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(raw["key"]).decode(),
        value=base64.b64decode(raw.get("value", "")),
        mod_revision=int(raw.get("mod_revision", 0)),
    )


def prefix_end(prefix: str) -> str:
    """The range end that makes [prefix, end) every key starting with `prefix`."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1  # prefixes here end in '/', never 0xff
    return _b64(bytes(raw))


class EtcdClient:
    def __init__(self, endpoint: str, timeout: float = 5.0) -> None:
        """`endpoint`: http://host:port of one etcd member's client URL."""
        self._http = httpx.AsyncClient(base_url=endpoint.rstrip("/") + "/v3", timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            resp = await self._http.post(path, json=body)
        except httpx.HTTPError as e:
            raise EtcdError(f"etcd at {self._http.base_url} unreachable: {e!r}") from e
        if resp.status_code != 200:
            raise EtcdError(f"etcd {path} answered {resp.status_code}: {resp.text[:200]}")
        doc: dict[str, Any] = resp.json()
        return doc

    async def range_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under `prefix` and the store's revision they were read at."""
        doc = await self._call("/kv/range", {"key": _b64(prefix), "range_end": prefix_end(prefix)})
        return [_kv(kv) for kv in doc.get("kvs", [])], int(doc["header"]["revision"])

    async def get(self, key: str) -> KeyValue | None:
        doc = await self._call("/kv/range", {"key": _b64(key)})
        kvs = doc.get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        doc = await self._call("/kv/put", body)
        return int(doc["header"]["revision"])

    async def delete(self, key: str) -> None:
        await self._call("/kv/deleterange", {"key": _b64(key)})

    async def compare_and_put(self, key: str, value: bytes, mod_revision: int) -> bool:
        """Write `value` only if `key` was last modified at `mod_revision` (0: does not exist).
        False when someone else wrote it first."""
        compare = {"key": _b64(key), "result": "EQUAL"}
        compare.update(
            {"target": "MOD", "mod_revision": str(mod_revision)}
            if mod_revision
            else {"target": "CREATE", "create_revision": "0"}
        )
        put = {"request_put": {"key": _b64(key), "value": _b64(value)}}
        doc = await self._call("/kv/txn", {"compare": [compare], "success": [put]})
        return bool(doc.get("succeeded", False))

    async def grant(self, ttl: int) -> int:
        doc = await self._call("/lease/grant", {"TTL": str(ttl)})
        return int(doc["ID"])

    async def keepalive(self, lease: int) -> int:
        """Refresh `lease`; its remaining TTL, 0 if it already expired."""
        doc = await self._call("/lease/keepalive", {"ID": str(lease)})
        return int(doc.get("result", {}).get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        await self._call("/kv/lease/revoke", {"ID": str(lease)})

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchBatch]:
        """Changes under `prefix` from `start_revision` on (events missed while disconnected
        included). Ends with EtcdError when the stream breaks, Compacted when the revision is
        gone; never ends quietly."""
        create = {
            "key": _b64(prefix),
            "range_end": prefix_end(prefix),
            "start_revision": str(start_revision),
        }
        timeout = httpx.Timeout(self._http.timeout.connect, read=None)  # a quiet watch is fine
        try:
            async with self._http.stream(
                "POST", "/watch", json={"create_request": create}, timeout=timeout
            ) as resp:
                if resp.status_code != 200:
                    raise EtcdError(f"etcd watch answered {resp.status_code}")
                async for line in resp.aiter_lines():
                    if line.strip():
                        yield _watch_batch(json.loads(line))
        except httpx.HTTPError as e:
            raise EtcdError(f"etcd watch broke: {e!r}") from e
        raise EtcdError("etcd closed the watch stream")


def _watch_batch(doc: dict[str, Any]) -> WatchBatch:
    if "error" in doc:
        raise EtcdError(f"etcd watch error: {doc['error']}")
    result = doc.get("result", {})
    if int(result.get("compact_revision", 0)):
        raise Compacted(f"revision compacted (oldest kept {result['compact_revision']})")
    if result.get("canceled"):
        raise EtcdError(f"etcd canceled the watch: {result.get('cancel_reason', '')}")
    events = tuple(Event(e.get("type", "PUT"), _kv(e["kv"])) for e in result.get("events", []))
    return WatchBatch(int(result.get("header", {}).get("revision", 0)), events)

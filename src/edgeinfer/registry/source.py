"""Where desired state lives: the `Registry` interface, the local (no-op) one and etcd's.

etcd layout under the URL's prefix (`etcd://host:2379/edgeinfer` -> `/edgeinfer`):

    /edgeinfer/groups/<group>/models/<model>   DesiredModel JSON (see desired.py)
    /edgeinfer/status/<device-id>              what the device runs, bound to its lease
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qs, urlsplit

from edgeinfer.registry.desired import Change, Desired, DesiredError, DesiredModel, Snapshot
from edgeinfer.registry.etcd import Compacted, EtcdClient, EtcdError, KeyValue

log = logging.getLogger("edgeinfer.registry")

DEFAULT_TTL = 10
T = TypeVar("T")


class RegistryError(Exception):
    """The registry could not be reached or refused a call (retry later)."""


class Resync(RegistryError):
    """The watch cannot resume from the revision asked for: take a new snapshot."""


class Registry(Protocol):
    """Desired state per device group, and observed state per device."""

    description: str

    async def snapshot(self, group: str) -> Snapshot: ...

    def watch(self, group: str, start_revision: int) -> AsyncIterator[Change]:
        """Changes from `start_revision` on; raises RegistryError when the connection breaks
        and Resync when that revision is gone."""
        ...

    async def report(self, device: str, status: Mapping[str, Any]) -> None:
        """Publish this device's observed state; it disappears if the device stops reporting."""
        ...

    async def statuses(self) -> dict[str, dict[str, Any]]: ...

    async def write(
        self, group: str, model: str, desired: DesiredModel, expect: int | None = None
    ) -> bool:
        """Store `desired`; with `expect` (the mod revision read, 0 = absent) only if nobody
        wrote since (compare-and-swap). False if the comparison failed."""
        ...

    async def close(self) -> None: ...


class LocalRegistry:
    """The repository itself is the desired state: nothing to watch, nowhere to report."""

    description = "local repository"

    async def snapshot(self, group: str) -> Snapshot:
        return Snapshot({}, 0)

    async def watch(self, group: str, start_revision: int) -> AsyncIterator[Change]:
        await asyncio.Event().wait()  # never changes
        yield Change("", None, start_revision)  # pragma: no cover (unreachable)

    async def report(self, device: str, status: Mapping[str, Any]) -> None:
        return None

    async def statuses(self) -> dict[str, dict[str, Any]]:
        return {}

    async def write(
        self, group: str, model: str, desired: DesiredModel, expect: int | None = None
    ) -> bool:
        raise RegistryError("the local registry has no desired state to write: use --registry")

    async def close(self) -> None:
        return None


class EtcdRegistry:
    def __init__(self, endpoint: str, prefix: str, ttl: int = DEFAULT_TTL) -> None:
        self.description = f"etcd {endpoint}{prefix}"
        self.prefix = prefix.rstrip("/")
        self.ttl = ttl
        self._etcd = EtcdClient(endpoint, timeout=max(1.0, min(5.0, ttl / 3)))
        self._lease = 0
        self._reported: tuple[str, bytes] | None = None

    def _group_prefix(self, group: str) -> str:
        return f"{self.prefix}/groups/{group}/models/"

    def _status_key(self, device: str) -> str:
        return f"{self.prefix}/status/{device}"

    async def snapshot(self, group: str) -> Snapshot:
        kvs, revision = await _wrap(self._etcd.range_prefix(self._group_prefix(group)))
        models = {}
        for kv in kvs:
            name = kv.key.rsplit("/", 1)[1]
            desired = _desired(kv)
            if desired is not None:
                models[name] = desired
        return Snapshot(models, revision)

    async def watch(self, group: str, start_revision: int) -> AsyncIterator[Change]:
        prefix = self._group_prefix(group)
        first = True
        try:
            async for batch in self._etcd.watch(prefix, start_revision):
                if first and batch.revision < start_revision - 1:
                    # The store is older than what we saw: a restored or new etcd.
                    raise Resync(
                        f"etcd is at revision {batch.revision}, we saw {start_revision - 1}"
                    )
                first = False
                for event in batch.events:
                    name = event.kv.key.removeprefix(prefix)
                    if "/" in name or not name:
                        continue
                    desired = None if event.kind == "DELETE" else _desired(event.kv)
                    if event.kind != "DELETE" and desired is None:
                        continue  # malformed: keep what we had (logged)
                    yield Change(name, desired, event.kv.mod_revision)
        except Compacted as e:
            raise Resync(str(e)) from e
        except EtcdError as e:
            raise RegistryError(str(e)) from e

    async def report(self, device: str, status: Mapping[str, Any]) -> None:
        body = json.dumps(status, sort_keys=True).encode()
        if self._lease and await _wrap(self._etcd.keepalive(self._lease)) <= 0:
            self._lease = 0  # expired while we were away: the key is gone with it
        if not self._lease:
            self._lease = await _wrap(self._etcd.grant(self.ttl))
            self._reported = None
        if self._reported != (device, body):
            await _wrap(self._etcd.put(self._status_key(device), body, self._lease))
            self._reported = (device, body)

    async def statuses(self) -> dict[str, dict[str, Any]]:
        kvs, _ = await _wrap(self._etcd.range_prefix(f"{self.prefix}/status/"))
        out = {}
        for kv in kvs:
            with contextlib.suppress(ValueError):
                doc = json.loads(kv.value)
                if isinstance(doc, dict):
                    out[kv.key.rsplit("/", 1)[1]] = doc
        return out

    async def write(
        self, group: str, model: str, desired: DesiredModel, expect: int | None = None
    ) -> bool:
        key = self._group_prefix(group) + model
        body = json.dumps(desired.to_json(), sort_keys=True).encode()
        if expect is None:
            await _wrap(self._etcd.put(key, body))
            return True
        return await _wrap(self._etcd.compare_and_put(key, body, expect))

    async def groups(self) -> dict[str, dict[str, Desired]]:
        """Every group's desired state: {group: {model: desired}}."""
        kvs, _ = await _wrap(self._etcd.range_prefix(f"{self.prefix}/groups/"))
        out: dict[str, dict[str, Desired]] = {}
        for kv in kvs:
            parts = kv.key.removeprefix(f"{self.prefix}/groups/").split("/")
            desired = _desired(kv) if len(parts) == 3 and parts[1] == "models" else None
            if desired is not None:
                out.setdefault(parts[0], {})[parts[2]] = desired
        return out

    async def read(self, group: str, model: str) -> Desired | None:
        kv = await _wrap(self._etcd.get(self._group_prefix(group) + model))
        return _desired(kv) if kv is not None else None

    async def close(self) -> None:
        """Revoke the status lease (the device leaves the status table at once)."""
        if self._lease:
            with contextlib.suppress(EtcdError, TimeoutError):
                async with asyncio.timeout(2.0):  # not wait_for: it can swallow a cancel on 3.11
                    await self._etcd.revoke(self._lease)
            self._lease = 0
        await self._etcd.aclose()


async def _wrap(call: Awaitable[T]) -> T:
    try:
        return await call
    except EtcdError as e:
        raise RegistryError(str(e)) from e


def _desired(kv: KeyValue) -> Desired | None:
    try:
        return Desired(DesiredModel.from_json(json.loads(kv.value)), kv.mod_revision)
    except (ValueError, DesiredError) as e:
        log.warning("ignoring malformed desired state at %s: %s", kv.key, e)
        return None


def parse_url(url: str) -> tuple[str, str, int]:
    """`etcd://host:2379/prefix[?ttl=10]` -> ("http://host:2379", "/prefix", ttl)."""
    parts = urlsplit(url)
    if parts.scheme != "etcd" or not parts.hostname:
        raise ValueError(f"registry URL {url!r}: expected etcd://HOST:PORT/PREFIX")
    query = parse_qs(parts.query)
    ttl = int(query.get("ttl", [DEFAULT_TTL])[0])
    if ttl < 2:
        raise ValueError(f"registry URL {url!r}: ttl must be >= 2 seconds")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    prefix = "/" + (parts.path.strip("/") or "edgeinfer")
    return f"http://{host}:{parts.port or 2379}", prefix, ttl


def open_registry(url: str) -> Registry:
    """'' or 'local': the repository itself; etcd://…: an etcd cluster."""
    if url in ("", "local"):
        return LocalRegistry()
    endpoint, prefix, ttl = parse_url(url)
    return EtcdRegistry(endpoint, prefix, ttl)

"""An in-memory registry with etcd's semantics that matter here: revisions, CAS, a watch that
breaks while the "network" is down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

from edgeinfer.registry.desired import Change, Desired, DesiredModel, Snapshot
from edgeinfer.registry.source import RegistryError


class MemoryRegistry:
    description = "memory"
    ttl = 3

    def __init__(self) -> None:
        self.models: dict[tuple[str, str], Desired] = {}
        self.revision = 0
        self.reports: dict[str, dict[str, Any]] = {}
        self.down = False
        self.writes = 0
        self._log: list[tuple[str, Change]] = []  # (group, change), in revision order

    def _check(self) -> None:
        if self.down:
            raise RegistryError("registry unreachable (test)")

    async def snapshot(self, group: str) -> Snapshot:
        self._check()
        return Snapshot({m: d for (g, m), d in self.models.items() if g == group}, self.revision)

    async def watch(self, group: str, start_revision: int) -> AsyncIterator[Change]:
        seen = 0
        while True:
            self._check()
            for g, change in self._log[seen:]:
                if g == group and change.revision >= start_revision:
                    yield change
            seen = len(self._log)
            await asyncio.sleep(0.01)

    async def report(self, device: str, status: Mapping[str, Any]) -> None:
        self._check()
        self.reports[device] = dict(status)

    async def statuses(self) -> dict[str, dict[str, Any]]:
        self._check()
        return dict(self.reports)

    async def write(
        self, group: str, model: str, desired: DesiredModel, expect: int | None = None
    ) -> bool:
        self._check()
        current = self.models.get((group, model))
        if expect is not None and (current.mod_revision if current else 0) != expect:
            return False
        self.revision += 1
        self.writes += 1
        stored = Desired(desired, self.revision)
        self.models[(group, model)] = stored
        self._log.append((group, Change(model, stored, self.revision)))
        return True

    def put(self, group: str, model: str, desired: DesiredModel) -> None:
        """An operator's unconditional write (`fleet set`)."""
        self.revision += 1
        stored = Desired(desired, self.revision)
        self.models[(group, model)] = stored
        self._log.append((group, Change(model, stored, self.revision)))

    async def close(self) -> None:
        return None

"""The byte budget across every resident model version: checked before a load, never after.

A version that would not fit first makes room by unloading idle versions (kept resident only for
instant rollback, least recently used first); if that is not enough the load is refused with a
message naming what would not fit and by how much. Live and canary versions are never evicted.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from edgeinfer.config import ServerSettings
from edgeinfer.hardware import (
    BudgetExceeded,
    Governor,
    GovernorConfig,
    MemoryBudget,
    default_budget_bytes,
    estimate_onnx_bytes,
    read_readings,
)
from edgeinfer.hardware.budget import CONV_RUNTIME_FACTOR

log = logging.getLogger("edgeinfer.budget")

# (model, version) -> coroutine that unloads it if it is idle; returns whether it did.
Evictor = Callable[[str, int], Awaitable[bool]]


def _key(model: str, version: int) -> str:
    return f"{model}:v{version}"


class BudgetGate:
    def __init__(self, budget: MemoryBudget, evict: Evictor) -> None:
        self.budget = budget
        self._evict = evict
        self.estimates: dict[str, int] = {}
        self._pinned: set[str] = set()

    async def admit(self, model: str, version: int, version_dir: Path, instances: int) -> int:
        """Reserve room for a version before loading it; returns the estimate in bytes."""
        need = await asyncio.to_thread(_estimate, version_dir) * instances
        key = _key(model, version)
        try:
            self.budget.reserve(key, need)
        except BudgetExceeded:
            for name in self.budget.evict_candidates(need):
                m, _, v = name.rpartition(":v")
                if await self._evict(m, int(v)):
                    log.warning("evicted idle %s to make room for %s", name, key)
            self.budget.reserve(key, need)  # raises BudgetExceeded if still short
        self.estimates[key] = need
        return need

    def release(self, model: str, version: int) -> None:
        key = _key(model, version)
        self.budget.release(key)
        self.estimates.pop(key, None)
        self._pinned.discard(key)

    def mark(self, model: str, version: int, in_use: bool) -> None:
        """Live and canary versions are pinned (never evicted); others are idle."""
        key = _key(model, version)
        if in_use and key not in self._pinned:
            self.budget.pin(key)
            self._pinned.add(key)
        elif not in_use and key in self._pinned:
            self.budget.unpin(key)
            self._pinned.discard(key)


# A GGUF is memory-mapped: its pages count once touched, plus the KV cache and compute buffers
# (~10 % of the weights for the small models this serves, plus a fixed context overhead).
GGUF_FACTOR = 1.1
GGUF_OVERHEAD_BYTES = 32 * 2**20


def _estimate(version_dir: Path) -> int:
    gguf = version_dir / "model.gguf"
    if gguf.is_file():
        return int(gguf.stat().st_size * GGUF_FACTOR) + GGUF_OVERHEAD_BYTES
    path = version_dir / "model.onnx"
    if not path.is_file():  # model.tflite, model.xml + .bin: weights plus activations
        files = [p for p in version_dir.iterdir() if p.is_file()] if version_dir.is_dir() else []
        return int(sum(p.stat().st_size for p in files) * CONV_RUNTIME_FACTOR)
    try:
        return estimate_onnx_bytes(path)
    except Exception:  # not parseable as ONNX: the load will fail and say why
        return int(path.stat().st_size * CONV_RUNTIME_FACTOR)


def device_guards(settings: ServerSettings, evict: Evictor) -> tuple[Governor, BudgetGate | None]:
    """The thermal governor and the memory gate (None when no budget is known) of a server:
    --memory-budget-mb, else the cgroup limit or available memory minus a margin."""
    root = settings.hardware_root
    governor = Governor(
        reader=functools.partial(read_readings, root),
        config=GovernorConfig(temp_soft_c=settings.temp_soft_c, temp_hard_c=settings.temp_hard_c),
    )
    limit = (
        settings.memory_budget_mb * 2**20
        if settings.memory_budget_mb
        else default_budget_bytes(read_readings(root))
    )
    return governor, BudgetGate(MemoryBudget(limit), evict) if limit else None

"""A byte budget for resident models and adapters, with an LRU of the idle ones.

The budget is bookkeeping, not enforcement: callers reserve an estimate before loading and
release it after unloading. `estimate_onnx_bytes` gives the estimate for an ONNX model.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeinfer.errors import Unavailable
from edgeinfer.hardware.device import Readings

MB = 1 << 20
# Keep this much of the limit out of the budget for the Python process itself, request buffers,
# tokenizers and the page cache: 10 % of the limit, at least 256 MB.
SAFETY_FRACTION = 0.10
SAFETY_MIN_BYTES = 256 * MB


def _mb(n: int) -> str:
    return f"{n / MB:.1f} MB"


class BudgetExceeded(Unavailable):
    """A reservation would not fit in the memory budget (503: retry after unloading something)."""

    def __init__(self, message: str, needed: int, short: int) -> None:
        super().__init__(message, retry_after=5.0)
        self.needed = needed
        self.short = short


@dataclass(frozen=True)
class Reservation:
    name: str
    nbytes: int


@dataclass
class _Item:
    nbytes: int
    pins: int = 0  # > 0: in use, never an eviction candidate


class MemoryBudget:
    """Reservations by name within `limit_bytes`. Thread-safe.

    Items are idle unless pinned (`pin`/`unpin` around use, e.g. while a model has requests in
    flight). `touch` marks an item most recently used; `evict_candidates` proposes the least
    recently used idle items whose release would make room.
    """

    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes < 0:
            raise ValueError(f"limit_bytes must be >= 0, got {limit_bytes}")
        self.limit_bytes = limit_bytes
        self._items: OrderedDict[str, _Item] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(item.nbytes for item in self._items.values())

    @property
    def free_bytes(self) -> int:
        return max(0, self.limit_bytes - self.used_bytes)

    def would_fit(self, nbytes: int) -> bool:
        return nbytes <= self.free_bytes

    def reservations(self) -> list[Reservation]:
        """Least recently used first."""
        with self._lock:
            return [Reservation(n, item.nbytes) for n, item in self._items.items()]

    def reserve(self, name: str, nbytes: int) -> Reservation:
        """Reserve `nbytes` for `name` (most recently used, idle); `BudgetExceeded` if it does
        not fit. Reserving a name again replaces its size (e.g. a re-estimate)."""
        if nbytes < 0:
            raise ValueError(f"cannot reserve a negative size ({nbytes}) for {name!r}")
        with self._lock:
            previous = self._items.get(name)
            used = sum(item.nbytes for item in self._items.values())
            used -= previous.nbytes if previous else 0
            free = self.limit_bytes - used
            if nbytes > free:
                raise self._exceeded(name, nbytes, free)
            self._items[name] = _Item(nbytes, previous.pins if previous else 0)
            self._items.move_to_end(name)
            return Reservation(name, nbytes)

    def _exceeded(self, name: str, nbytes: int, free: int) -> BudgetExceeded:
        short = nbytes - max(0, free)
        idle = [n for n, item in self._items.items() if item.pins == 0 and n != name]
        hint = f"; idle, least recently used first: {', '.join(idle)}" if idle else ""
        return BudgetExceeded(
            f"{name!r} needs {_mb(nbytes)} but the memory budget has {_mb(max(0, free))} free "
            f"of {_mb(self.limit_bytes)}: short by {_mb(short)}. Unload a model or raise the "
            f"budget{hint}",
            needed=nbytes,
            short=short,
        )

    def release(self, name: str) -> int:
        """Forget `name`; the bytes it held (0 if it held none: releasing twice is harmless)."""
        with self._lock:
            item = self._items.pop(name, None)
            return item.nbytes if item else 0

    def touch(self, name: str) -> None:
        with self._lock:
            if name in self._items:
                self._items.move_to_end(name)

    def pin(self, name: str) -> None:
        with self._lock:
            if name in self._items:
                self._items[name].pins += 1
                self._items.move_to_end(name)

    def unpin(self, name: str) -> None:
        with self._lock:
            item = self._items.get(name)
            if item is not None and item.pins > 0:
                item.pins -= 1

    def evict_candidates(self, needed: int) -> list[str]:
        """Idle names, least recently used first, whose release frees room for `needed` bytes.
        [] when it already fits, or when releasing every idle item would still not be enough."""
        with self._lock:
            free = self.limit_bytes - sum(item.nbytes for item in self._items.values())
            if needed <= free:
                return []
            chosen: list[str] = []
            for name, item in self._items.items():
                if item.pins:
                    continue
                chosen.append(name)
                free += item.nbytes
                if needed <= free:
                    return chosen
            return []


def default_budget_bytes(readings: Readings) -> int | None:
    """The budget for models: the tighter of the cgroup limit and MemAvailable, minus a safety
    margin (10 %, at least 256 MB). None when neither is known."""
    known = [n for n in (readings.cgroup_memory_limit_bytes, readings.memory_available_bytes) if n]
    if not known:
        return None
    base = min(known)
    return max(0, base - max(int(base * SAFETY_FRACTION), SAFETY_MIN_BYTES))


# ---- estimating a model's memory ------------------------------------------------------------
# Measured with onnxruntime 1.32 on x86-64 (AVX-512, glibc), edgeinfer's session options (arena
# off, level "all"): RSS added by creating a session and running it once, relative to the bytes
# of the file (tests/unit/hardware/test_budget.py measures it again on every run):
#
#   model                          peak (VmHWM)   resident after   resident after malloc_trim(0)
#   MatMul, 2 x 16 MB weights          2.2x            1.7x              1.2x
#   MatMul, 2 x 32 MB weights          1.6x            1.1x              1.1x
#   ResNet-18-shaped CNN, 45 MB        3.6x            2.8-3.3x          1.15x
#
# The peak is real: graph optimization builds transformed weights (prepacked MatMul B, NCHWc-
# reordered Conv weights at level "all", x86 only) before it frees the originals. glibc then
# keeps most of the freed blocks, so RSS stays near the peak until malloc_trim(0) returns them.
# `estimate_onnx_bytes` gives the peak, which is what must fit while a model loads; once it is
# loaded and free memory has been trimmed, re-reserve with `factor=RESIDENT_FACTOR`.
RUNTIME_FACTOR = 2.2
CONV_RUNTIME_FACTOR = 3.6
RESIDENT_FACTOR = 1.3
SESSION_OVERHEAD_BYTES = 8 * MB  # an empty session's RSS cost (measured: ~6 MB)


def _all_tensors(graph: Any) -> list[Any]:
    tensors = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                tensors.append(attr.t)
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                tensors += _all_tensors(sub)
    return tensors


def _op_types(graph: Any) -> set[str]:
    ops = set()
    for node in graph.node:
        ops.add(node.op_type)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                ops |= _op_types(sub)
    return ops


def onnx_file_bytes(path: str | os.PathLike[str]) -> tuple[int, bool]:
    """(bytes of the model file plus its external data files, whether it has Conv ops)."""
    import onnx  # lazy: ~0.2 s to import

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    external: set[Path] = set()
    for tensor in _all_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), None)
            if location:
                external.add(path.parent / location)
    size = path.stat().st_size + sum(p.stat().st_size for p in external if p.is_file())
    ops = _op_types(model.graph)
    return size, bool(ops & {"Conv", "ConvTranspose", "QLinearConv", "ConvInteger"})


def estimate_onnx_bytes(path: str | os.PathLike[str], factor: float | None = None) -> int:
    """Bytes an ONNX Runtime CPU session for this model needs at its peak while loading: file
    bytes (with external data) x a runtime factor, plus a fixed session overhead. The factor is
    `RUNTIME_FACTOR`, or `CONV_RUNTIME_FACTOR` for models with convolutions; pass
    `factor=RESIDENT_FACTOR` for the steady size after loading and malloc_trim (see above)."""
    size, has_conv = onnx_file_bytes(path)
    if factor is None:
        factor = CONV_RUNTIME_FACTOR if has_conv else RUNTIME_FACTOR
    return int(size * factor) + SESSION_OVERHEAD_BYTES

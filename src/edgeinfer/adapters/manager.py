"""LoRA adapters at run time: lookup with tenant grants, on-demand loading into the model that
serves the request, reference counts, unloading that waits for running requests, and an LRU
within a byte budget.

The request path: `acquire(model, name, tenant, instance, loop)` checks the grant (403) and
that the adapter exists and is not being unloaded (404), loads what is missing (the adapter's
data once, then its per-model form: an ORT LoraAdapter, a slot in the model's stacked table, or
a llama.cpp handle loaded on the model's engine thread), pins it and returns a `Lease`; the
request releases the lease when it is retired. An unloaded adapter is refused at once for new
requests; its memory is freed when its last lease is released. Idle adapters are evicted least
recently used first when another needs room, and reloaded on their next request.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeinfer.adapters.convert import PEFT_WEIGHTS, resolve_adapter_path
from edgeinfer.adapters.paths import confine
from edgeinfer.adapters.store import ADAPTERS_DIR, AdapterSpec, check_name, scan
from edgeinfer.auth import PermissionDenied
from edgeinfer.errors import AdapterNotFound, EdgeInferError, InvalidInput, LoadError
from edgeinfer.hardware import BudgetExceeded, MemoryBudget
from edgeinfer.runtime.memory import release_free_memory
from edgeinfer.serving.llm_loop import LlmLoop, LoopAdapter

log = logging.getLogger("edgeinfer.adapters")
_SCAN_TTL = 2.0  # seconds a scan of a model's adapters directory is reused


@dataclass(eq=False)
class _Adapter:
    spec: AdapterSpec
    refs: int = 0
    removed: bool = False
    resident: bool = False
    nbytes: int = 0
    ort: Any = None  # per-run ORT LoraAdapter
    weights: Any = None  # target -> (A, B) for stacked tables
    tables: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)
    loops: weakref.WeakKeyDictionary[LlmLoop, LoopAdapter] = field(
        default_factory=weakref.WeakKeyDictionary
    )
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_load_s: float = 0.0


@dataclass
class AdapterStats:
    loads: dict[tuple[str, str], int] = field(default_factory=dict)
    unloads: dict[tuple[str, str, str], int] = field(default_factory=dict)  # + reason
    load_seconds_sum: float = 0.0
    load_count: int = 0
    tenant_requests: dict[tuple[str, str], int] = field(default_factory=dict)  # tenant, model
    tenant_tokens: dict[tuple[str, str, str], int] = field(default_factory=dict)  # + kind
    per_request: bool = True  # off (--no-metrics): `record` counts nothing


class Lease:
    """One request's hold on a resident adapter; `release` exactly once (any thread)."""

    def __init__(
        self,
        manager: AdapterManager,
        adapter: _Adapter,
        run_adapter: Any = None,
        index: int = 0,
        loop_adapter: LoopAdapter | None = None,
    ) -> None:
        self._manager, self._adapter = manager, adapter
        self.run_adapter = run_adapter  # per_run ONNX: pass to the scheduler
        self.index = index  # stacked ONNX: the row's slot
        self.loop_adapter = loop_adapter  # GGUF: pass to the LLM loop
        self._released = False

    @property
    def spec(self) -> AdapterSpec:
        return self._adapter.spec

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._manager._release(self._adapter)


class AdapterManager:
    def __init__(
        self,
        root: Path | None,
        budget: MemoryBudget | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`root`: the model repository (adapters under `<model>/adapters/`); `budget`: the
        byte budget adapters are reserved in as `model:adapter:name` (None: unbounded)."""
        self.root = root
        self.budget = budget
        self.stats = AdapterStats()
        self._clock = clock
        self._lock = threading.Lock()  # refs and removal: releases come from engine threads
        self._api: dict[tuple[str, str], AdapterSpec] = {}
        self._hidden: set[tuple[str, str]] = set()  # repository adapters unloaded by the API
        self._live: dict[tuple[str, str], _Adapter] = {}
        self._scans: dict[str, tuple[float, dict[str, AdapterSpec]]] = {}
        self._converted: dict[tuple[str, str], Path] = {}  # temporary dirs of PEFT conversions
        self._convert_lock = asyncio.Lock()  # one conversion at a time: each may take a core

    # ---- lookup ----------------------------------------------------------------------------
    def _disk(self, model: str) -> dict[str, AdapterSpec]:
        if self.root is None:
            return {}
        now = self._clock()
        cached = self._scans.get(model)
        if cached is None or now - cached[0] > _SCAN_TTL:
            cached = (now, scan(self.root / model))
            self._scans[model] = cached
        return cached[1]

    def specs(self, model: str) -> dict[str, AdapterSpec]:
        """Every adapter a model has now (repository ones not unloaded, plus API ones)."""
        out = {n: s for n, s in self._disk(model).items() if (model, n) not in self._hidden}
        out.update({n: s for (m, n), s in self._api.items() if m == model})
        return out

    def check(self, model: str, name: str, tenant: str | None) -> AdapterSpec:
        spec = self.specs(model).get(name)
        if spec is None:
            raise AdapterNotFound(f"model '{model}' has no adapter '{name}'")
        if not spec.allows(tenant):
            raise PermissionDenied(
                f"adapter '{model}:{name}' is not granted to "
                f"{'tenant ' + repr(tenant) if tenant else 'requests without a tenant'}"
            )
        return spec

    def visible(self, models: list[str], tenant: str | None) -> list[AdapterSpec]:
        """The adapters of `models` that `tenant` may use (what /v1/models lists)."""
        return [s for m in models for _, s in sorted(self.specs(m).items()) if s.allows(tenant)]

    # ---- registration (the load/unload API) ------------------------------------------------
    def register(
        self,
        model: str,
        name: str,
        file: Path,
        tenants: list[str] | None = None,
        scale: float = 1.0,
    ) -> AdapterSpec:
        check_name(name)
        if not file.is_file():
            raise InvalidInput(f"lora_path {file}: no such adapter file")
        if name in self.specs(model):
            raise InvalidInput(f"The lora adapter '{model}:{name}' has already been loaded.")
        self._check_fits(model, name, file.stat().st_size)
        spec = AdapterSpec(model, name, file, frozenset(tenants or ()), scale, 0, "api")
        self._api[(model, name)] = spec
        self._hidden.discard((model, name))
        return spec

    async def load_path(
        self,
        model: str,
        name: str,
        raw_path: str,
        base_file: Path,
        tenants: list[str] | None,
        scale: float,
        allowed_dirs: Sequence[str | Path],
    ) -> AdapterSpec:
        """Register an adapter from a path the load API was given: confined to the model's
        adapters folder and `allowed_dirs`, PEFT directories converted off the event loop."""
        check_name(name)
        if name in self.specs(model):
            raise InvalidInput(f"The lora adapter '{model}:{name}' has already been loaded.")
        roots = [Path(d) for d in allowed_dirs]
        if self.root is not None:
            roots.append(self.root / model / ADAPTERS_DIR)
        async with self._convert_lock:
            file, owned = await asyncio.to_thread(
                self._resolve, model, name, raw_path, base_file, roots
            )
        try:
            spec = self.register(model, name, file, tenants, scale)
        except BaseException:
            if owned is not None:
                shutil.rmtree(owned, ignore_errors=True)
            raise
        if owned is not None:
            self._converted[(model, name)] = owned
        return spec

    def _resolve(
        self, model: str, name: str, raw_path: str, base_file: Path, roots: list[Path]
    ) -> tuple[Path, Path | None]:
        """Runs in a worker thread: file system checks and the conversion."""
        path = confine(raw_path, roots)
        weights = path / PEFT_WEIGHTS
        if path.is_dir() and weights.is_file():
            self._check_fits(model, name, weights.stat().st_size)  # before reading it
        try:
            return resolve_adapter_path(path, base_file, name)
        except (EdgeInferError, MemoryError):
            raise
        except Exception as e:  # a malformed adapter is the request's fault, not the server's
            log.warning("adapter %s:%s from %s: %r", model, name, path, e, exc_info=True)
            raise InvalidInput(f"lora_path {path}: not a usable adapter: {e}") from None

    def unregister(self, model: str, name: str) -> None:
        """New requests get 404 at once; running ones finish; then the memory is freed."""
        if name not in self.specs(model):
            raise AdapterNotFound(f"The lora adapter '{model}:{name}' cannot be found.")
        self._api.pop((model, name), None)
        owned = self._converted.pop((model, name), None)
        if owned is not None:  # loaded forms live in memory; the converted file is not needed
            shutil.rmtree(owned, ignore_errors=True)
        self._hidden.add((model, name))
        with self._lock:
            a = self._live.get((model, name))
            if a is None:
                return
            a.removed = True
            idle = a.refs == 0
        if idle:
            self._drop(a, "unload")

    # ---- the request path ------------------------------------------------------------------
    async def acquire(
        self, model: str, name: str, tenant: str | None, instance: Any, loop: LlmLoop | None = None
    ) -> Lease:
        spec = self.check(model, name, tenant)
        replaced = None
        with self._lock:
            a = self._live.get((model, name))
            if a is None or a.removed or a.spec != spec:
                if a is not None and not a.removed:  # a new version (or grants) on disk
                    a.removed, replaced = True, a
                a = self._live[(model, name)] = _Adapter(spec)
            a.refs += 1  # held from here: eviction and unloading wait for it
            drop_replaced = replaced is not None and replaced.refs == 0
        if drop_replaced:  # busy: freed when its last request ends (_release)
            assert replaced is not None
            log.info(
                "adapter %s:%s: version %s replaces %s",
                model,
                name,
                spec.version,
                replaced.spec.version,
            )
            self._drop(replaced, "replace")
        try:
            async with a.lock:
                return await self._lease(a, instance, loop)
        except BaseException:
            self._release(a)
            raise

    async def _lease(self, a: _Adapter, instance: Any, loop: LlmLoop | None) -> Lease:
        spec = a.spec
        started = time.perf_counter()
        loaded = False
        if not a.resident:
            await self._reserve(a, _resident_bytes(spec, instance))
            a.resident, loaded = True, True
        if self.budget is not None:
            self.budget.pin(spec.key)
        try:
            if spec.kind == "gguf":
                if loop is None:
                    raise InvalidInput(
                        f"adapter '{spec.model}:{spec.name}' is a GGUF LoRA but "
                        "the model is not served by llama.cpp"
                    )
                la = a.loops.get(loop)
                if la is None:
                    backend: Any = loop.backend
                    handle = await loop.call(lambda: backend.load_adapter(spec.file))
                    la = a.loops[loop] = LoopAdapter(spec.key, handle, spec.scale)
                    loaded = True
                lease = Lease(self, a, loop_adapter=la)
            else:
                lease = await self._onnx_lease(a, instance)
                loaded = loaded or lease.index < 0
                lease.index = abs(lease.index)
        except BaseException:
            if self.budget is not None:
                self.budget.unpin(spec.key)
            raise
        if loaded:
            a.last_load_s = time.perf_counter() - started
            key = (spec.model, spec.name)
            self.stats.loads[key] = self.stats.loads.get(key, 0) + 1
            self.stats.load_seconds_sum += a.last_load_s
            self.stats.load_count += 1
        return lease

    async def _onnx_lease(self, a: _Adapter, instance: Any) -> Lease:
        from edgeinfer.runtime.lora_onnx import (
            LoraOnnxModel,
            load_ort_adapter,
            read_onnx_adapter,
        )

        spec = a.spec
        if not isinstance(instance, LoraOnnxModel):
            raise InvalidInput(
                f"model '{spec.model}' has no LoRA inputs: convert its graph with "
                "`edgeinfer adapters convert --base` first"
            )
        table = instance.table
        if table is None:
            if a.ort is None:
                a.ort = await asyncio.to_thread(load_ort_adapter, spec.file)
            return Lease(self, a, run_adapter=a.ort)
        slot = table.slot(spec.key)
        if slot is not None:
            return Lease(self, a, index=slot)
        if a.weights is None:
            a.weights = await asyncio.to_thread(read_onnx_adapter, spec.file)
        slot = table.add(spec.key, a.weights)  # rebuilds the stacks, never the session
        a.tables.add(table)
        return Lease(self, a, index=-slot)  # negative: freshly loaded (for the load counter)

    async def _reserve(self, a: _Adapter, need: int) -> None:
        a.nbytes = need
        budget = self.budget
        if budget is None:
            return
        self._check_fits(a.spec.model, a.spec.name, need)
        try:
            budget.reserve(a.spec.key, need)
            return
        except BudgetExceeded:
            pass
        for name in budget.evict_candidates(need):
            victim = self._by_key(name)
            if victim is not None:
                with self._lock:
                    idle = victim.refs == 0
                if idle:
                    log.info("evicting idle adapter %s for %s", name, a.spec.key)
                    self._drop(victim, "evict")
        try:
            budget.reserve(a.spec.key, need)
        except BudgetExceeded as e:
            raise BudgetExceeded(
                f"adapter '{a.spec.model}:{a.spec.name}' does not fit even after "
                f"evicting idle adapters: {e.message}",
                e.needed,
                e.short,
            ) from None

    def _check_fits(self, model: str, name: str, nbytes: int) -> None:
        """Refuse (4xx, no retry) an adapter larger than the whole budget: evicting cannot
        make room, so a 503 would have clients retry forever."""
        if self.budget is not None and nbytes > self.budget.limit_bytes:
            raise LoadError(
                f"adapter '{model}:{name}' needs {nbytes / 2**20:.1f} MB but the "
                f"adapter budget is {self.budget.limit_bytes / 2**20:.1f} MB in all: "
                "raise --adapter-budget-mb (or --memory-budget-mb when adapters "
                "share it) or use a smaller adapter"
            )

    def _by_key(self, key: str) -> _Adapter | None:
        model, _, name = key.partition(":adapter:")
        a = self._live.get((model, name.partition("@")[0])) if name else None
        return a if a is not None and a.spec.key == key else None

    def _release(self, a: _Adapter) -> None:
        with self._lock:
            a.refs -= 1
            drop = a.refs == 0 and a.removed
        if self.budget is not None and a.resident:
            self.budget.unpin(a.spec.key)
        if drop:
            self._drop(a, "unload")

    def _drop(self, a: _Adapter, reason: str) -> None:
        """Free every resident form of an idle adapter (GGUF handles on their engine threads)."""
        if not a.resident:
            if a.removed:
                self._forget(a)
            return
        a.resident = False
        onnx_forms = a.ort is not None or a.weights is not None
        a.ort, a.weights = None, None
        for table in list(a.tables):
            table.remove(a.spec.key)
        a.tables = weakref.WeakSet()
        for loop, la in list(a.loops.items()):
            loop.drop_adapter(la)
        a.loops = weakref.WeakKeyDictionary()
        if self.budget is not None:
            self.budget.release(a.spec.key)
        key = (a.spec.model, a.spec.name, reason)
        self.stats.unloads[key] = self.stats.unloads.get(key, 0) + 1
        if a.removed:
            self._forget(a)
        if onnx_forms:  # GGUF handles are freed (and the heap trimmed) on the engine thread
            release_free_memory()

    def _forget(self, a: _Adapter) -> None:
        with self._lock:
            if self._live.get((a.spec.model, a.spec.name)) is a:
                del self._live[(a.spec.model, a.spec.name)]

    def evict(self, model: str, name: str) -> bool:
        """Unload an idle adapter now (it reloads on its next request)."""
        a = self._live.get((model, name))
        if a is None or a.refs:
            return False
        self._drop(a, "evict")
        return True

    def resident(self) -> list[AdapterSpec]:
        return [a.spec for a in list(self._live.values()) if a.resident]

    def last_load_seconds(self, model: str, name: str) -> float:
        a = self._live.get((model, name))
        return a.last_load_s if a else 0.0

    # ---- tenants ---------------------------------------------------------------------------
    def record(
        self,
        tenant: str | None,
        model: str,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        request: bool = False,
    ) -> None:
        """Per-tenant counts (requests without a tenant count as tenant ""). Called on the event
        loop thread only, as the scrape that reads them, so it takes no lock (it runs once per
        request)."""
        s = self.stats
        if not s.per_request:
            return
        t = tenant or ""
        if request:
            key = (t, model)
            s.tenant_requests[key] = s.tenant_requests.get(key, 0) + 1
        for kind, n in (("prompt", prompt_tokens), ("generation", completion_tokens)):
            if n:
                tk = (t, model, kind)
                s.tenant_tokens[tk] = s.tenant_tokens.get(tk, 0) + n


def _resident_bytes(spec: AdapterSpec, instance: Any) -> int:
    """Bytes an adapter holds once loaded: its file, or for a stacked ONNX model the larger of
    that and its slot (padded to the graph's rank) in the model's table."""
    size = spec.file.stat().st_size
    table = getattr(instance, "table", None)
    return max(size, table.slot_bytes) if table is not None else size

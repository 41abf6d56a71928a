"""Everything live for one model name: resident versions, the live one, the canary, rollbacks.

Reconciling reads the repository and the persisted state, loads and verifies what is missing
in the background, then swaps the resident set and the route in one assignment each. In-flight
requests keep the handle they started with; replaced versions are drained, then released.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from edgeinfer.config import ModelConfig
from edgeinfer.errors import EdgeInferError, InvalidInput, LoadError, ModelNotFound, ModelNotReady
from edgeinfer.hardware import BudgetExceeded
from edgeinfer.lifecycle.budget import BudgetGate
from edgeinfer.lifecycle.decide import choose_live, plan
from edgeinfer.lifecycle.health import WindowStats, regression
from edgeinfer.lifecycle.models import LoadedVersion, State, load_version, manifest_digest
from edgeinfer.lifecycle.verify import VerifyError
from edgeinfer.repository import Repository, version_number
from edgeinfer.repository.layout import ModelEntry, VersionEntry
from edgeinfer.repository.state import Canary, ModelState, load_state, save_state
from edgeinfer.serving.router import Route
from edgeinfer.serving.runner import Runner
from edgeinfer.telemetry.metrics import RestartCounts

log = logging.getLogger("edgeinfer.lifecycle")

# (model, version, reason, message) for every version that failed to load or verify.
FailureHook = Callable[[str, int, str, str], None]


@dataclass(frozen=True)
class Watch:
    """A newly live version under observation for automatic rollback."""

    previous: int
    candidate: int
    since: float
    baseline: WindowStats


class ModelManager:
    def __init__(
        self,
        name: str,
        repository: Repository,
        runner: Runner,
        on_failure: FailureHook,
        gate: BudgetGate | None = None,
        capacity: Callable[[], tuple[float, str]] | None = None,
        record_stats: bool = True,
        restarts: RestartCounts | None = None,
    ) -> None:
        self.name = name
        self._restarts = restarts  # counts this model's crashed and restarted workers
        self._record_stats = record_stats  # off: versions' stats record nothing (--no-metrics)
        self.repository = repository
        self.config: ModelConfig | None = None
        self.versions: dict[int, LoadedVersion] = {}  # resident; replaced, never mutated
        self.route: Route | None = None
        self.state = ModelState()
        self.status = State.UNAVAILABLE
        self.reason = "not loaded"
        self.failures: dict[int, tuple[str, str, str]] = {}  # version -> (digest, reason, msg)
        self.watch: Watch | None = None
        self.rollbacks = {"manual": 0, "auto": 0}
        self.loads: dict[int, int] = {}  # version -> successful loads (verified, started)
        self._runner = runner
        self._on_failure = on_failure
        self._gate = gate
        self._capacity = capacity
        self._lock = asyncio.Lock()
        self._rng = random.Random()
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def ready(self) -> bool:
        """Loaded, and no worker of a resident version is down."""
        return self.status == State.READY and all(h.healthy for h in self.versions.values())

    # ---- request path ----------------------------------------------------------------------
    def handle(
        self, version: str | None, params: Mapping[str, Any], metadata: Mapping[str, str]
    ) -> LoadedVersion:
        versions, route = self.versions, self.route
        if not versions or route is None:
            raise ModelNotReady(f"model '{self.name}' is not ready: {self.reason}")
        if version:
            v = version_number(version)
            if v is None:
                raise ModelNotFound(f"model '{self.name}' has no version {version[:40]!r}")
            if v not in versions:
                raise ModelNotFound(
                    f"model '{self.name}' version {v} is not loaded; loaded: {sorted(versions)}"
                )
            return versions[v]
        key = params.get(route.key, metadata.get(route.key))
        return versions[route.pick(None if key is None else str(key), self._rng)]

    # ---- reconciling -----------------------------------------------------------------------
    async def reconcile(self, *, force: bool = False) -> None:
        """Bring the resident set in line with the repository and the state file. `force`
        retries versions that failed before (an explicit load); polling does not."""
        async with self._lock:
            entry = await asyncio.to_thread(self.repository.model, self.name)
            state = await asyncio.to_thread(load_state, entry.path)
            await self._apply(entry, state, force)

    async def _apply(
        self, entry: ModelEntry, state: ModelState, force: bool, record: bool = True
    ) -> None:
        """`record`: a change of live version is a promotion (logged in the history and
        watched for regressions); a rollback records its own event instead."""
        eligible = {v.version: v for v in entry.versions}
        live_now = self.route.live if self.route else None
        p = plan(entry.config, state, eligible, live_now)
        if not p.selected and state.live not in eligible and not self.versions:
            self.status, self.reason = State.UNAVAILABLE, "no published version on disk"
            raise LoadError(f"model '{self.name}' has no published version in {entry.path}")
        canary, wanted = p.canary, p.wanted
        if not self.versions:
            self.status, self.reason = State.LOADING, "loading"
        loaded = await self._load_missing(entry, [eligible[v] for v in sorted(wanted)], force)
        live = choose_live(p.target, loaded, live_now, self.versions)
        if live is not None and live not in loaded:
            loaded[live] = self.versions[live]  # the new version failed: the live one stays
        if live is None:
            reasons = "; ".join(msg for _, _, msg in self.failures.values())
            if not self.versions:
                self.status, self.reason = State.UNAVAILABLE, f"failed to load: {reasons}"
            raise LoadError(f"model '{self.name}' failed to load: {reasons}")
        if canary is not None and canary.version not in loaded:
            canary = None
        old_live = self.route.live if self.route else None
        if live != state.live:
            state = replace(state, live=live)
        if old_live != live and record:
            state = state.event("promote", **{"from": old_live, "to": live})
            self._start_watch(old_live, live)
        self._swap(entry.config, loaded, live, canary)
        if state != self.state:
            await asyncio.to_thread(save_state, entry.path, state)
        self.state = state
        failed = sorted(v for v in wanted if v in self.failures and v not in loaded)
        if failed:
            details = "; ".join(f"v{v}: {self.failures[v][2]}" for v in failed)
            raise LoadError(f"model '{self.name}': {details} (v{live} keeps serving)")

    async def _load_missing(
        self, entry: ModelEntry, wanted: Iterable[VersionEntry], force: bool
    ) -> dict[int, LoadedVersion]:
        loaded: dict[int, LoadedVersion] = {}
        for ventry in wanted:
            digest = await asyncio.to_thread(manifest_digest, ventry.path)
            current = self.versions.get(ventry.version)
            if current is not None and current.digest == digest and current.config == entry.config:
                loaded[ventry.version] = current
                continue
            failed = self.failures.get(ventry.version)
            if failed and failed[0] == digest and not force:
                continue  # same files failed before: do not thrash on every poll
            try:
                if self._gate is not None:
                    await self._gate.admit(
                        self.name, ventry.version, ventry.path, entry.config.instance_count
                    )
                h = await asyncio.to_thread(load_version, ventry, entry.config)
            except EdgeInferError as e:
                if self._gate is not None and not isinstance(e, BudgetExceeded):
                    self._gate.release(self.name, ventry.version)
                reason = (
                    "memory"
                    if isinstance(e, BudgetExceeded)
                    else e.reason
                    if isinstance(e, VerifyError)
                    else "load"
                )
                self.failures[ventry.version] = (digest, reason, e.message)
                self._on_failure(self.name, ventry.version, reason, e.message)
                log.warning(
                    "%s v%d not loaded (%s): %s", self.name, ventry.version, reason, e.message
                )
                continue
            self.failures.pop(ventry.version, None)
            h.stats.enabled = self._record_stats
            h.start(self._runner, self._capacity, self._worker_restarted)
            self.loads[ventry.version] = self.loads.get(ventry.version, 0) + 1
            loaded[ventry.version] = h
        return loaded

    def _worker_restarted(self) -> None:
        if self._restarts is not None:
            self._restarts.add(self.name, "scheduler")

    def _swap(
        self,
        config: ModelConfig,
        loaded: dict[int, LoadedVersion],
        live: int,
        canary: Canary | None,
    ) -> None:
        old = self.versions
        self.config = config
        self.versions = loaded  # one reference assignment each
        self.route = Route(
            live,
            canary.version if canary else None,
            canary.weight if canary else 0.0,
            config.lifecycle.traffic_key,
        )
        self.status, self.reason = State.READY, ""
        if self._gate is not None:
            for v in loaded:
                self._gate.mark(self.name, v, v in (live, canary.version if canary else None))
        self._retire(h for v, h in old.items() if loaded.get(v) is not h)

    def _retire(self, handles: Iterable[LoadedVersion]) -> None:
        for h in handles:
            if h.queue is not None:
                task = asyncio.create_task(self._close(h))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)

    async def _close(self, h: LoadedVersion) -> None:
        await h.close(drain=True)
        if self._gate is not None and self.versions.get(h.version) is not h:
            self._gate.release(self.name, h.version)

    async def evict(self, version: int) -> bool:
        """Unload `version` if it is resident only for rollback (not live, not canary)."""
        route = self.route
        if route is None or version in (route.live, route.canary) or version not in self.versions:
            return False
        victim = self.versions[version]
        self.versions = {v: h for v, h in self.versions.items() if v != version}
        self._retire([victim])
        await asyncio.gather(*self._retiring, return_exceptions=True)
        return True

    async def unload(self) -> None:
        async with self._lock:
            old, self.versions, self.route = self.versions, {}, None
            self.status, self.reason = State.UNAVAILABLE, "unloaded"
            self.watch = None
            self._retire(old.values())

    async def drained(self) -> None:
        await asyncio.gather(*self._retiring, return_exceptions=True)

    # ---- rollback, canary ------------------------------------------------------------------
    async def rollback(self, to: int | None = None, reason: str = "manual") -> int:
        async with self._lock:
            if self.route is None:
                raise ModelNotReady(f"model '{self.name}' is not loaded")
            entry = await asyncio.to_thread(self.repository.model, self.name)
            current = self.route.live
            target = to if to is not None else self.state.previous_live()
            if target is None:
                raise InvalidInput(f"model '{self.name}' has no previous version to roll back to")
            if target == current:
                raise InvalidInput(f"model '{self.name}' version {target} is already live")
            if target not in {v.version for v in entry.versions}:
                raise ModelNotFound(f"model '{self.name}' has no published version {target}")
            blocked = tuple(sorted({*self.state.blocked, current} - {target}))
            state = replace(self.state, live=target, blocked=blocked)
            state = state.event("rollback", **{"from": current, "to": target, "reason": reason})
            self.rollbacks["auto" if reason.startswith("auto") else "manual"] += 1
            self.watch = None
            await asyncio.to_thread(save_state, entry.path, state)
            self.state = state
            await self._apply(entry, state, force=True, record=False)
            log.warning("%s rolled back v%s -> v%s: %s", self.name, current, target, reason)
            return target

    async def set_canary(self, version: int | None, weight: float = 0.0) -> None:
        """Route `weight` of unpinned traffic to `version` (None: abort the canary)."""
        if version is not None and not 0.0 <= weight <= 1.0:
            raise InvalidInput("canary weight must be between 0 and 1")
        async with self._lock:
            entry = await asyncio.to_thread(self.repository.model, self.name)
            if version is not None and version not in {v.version for v in entry.versions}:
                raise ModelNotFound(f"model '{self.name}' has no published version {version}")
            canary = Canary(version, weight) if version is not None else None
            state = replace(
                self.state,
                canary=canary,
                blocked=tuple(v for v in self.state.blocked if v != version),
            )
            state = state.event("canary" if canary else "abort", version=version, weight=weight)
            await asyncio.to_thread(save_state, entry.path, state)
            self.state = state
            await self._apply(entry, state, force=True)
            if canary is not None and (self.route is None or self.route.canary != version):
                why = self.failures.get(canary.version, ("", "", "unknown"))[2]
                raise LoadError(f"canary version {version} failed to load: {why}")

    async def promote(self) -> int:
        """Make the canary the live version."""
        async with self._lock:
            if self.route is None or self.route.canary is None:
                raise InvalidInput(f"model '{self.name}' has no canary to promote")
            entry = await asyncio.to_thread(self.repository.model, self.name)
            new = self.route.canary
            state = replace(self.state, live=new, canary=None).event("canary", version=None)
            await self._apply(entry, state, force=False)  # records the promotion, starts watch
            return new

    # ---- automatic rollback ----------------------------------------------------------------
    def _start_watch(self, previous: int | None, candidate: int) -> None:
        old = self.versions.get(previous) if previous is not None else None
        if (
            previous is None
            or old is None
            or self.config is None
            or not self.config.lifecycle.auto_rollback
        ):
            self.watch = None
            return
        now = time.monotonic()
        n, errors, p99 = old.stats.window(now - self.config.lifecycle.window_s, now)
        self.watch = Watch(previous, candidate, now, WindowStats(n, errors, p99))

    async def check_health(self, now: float) -> str | None:
        """Roll back a newly live version that regressed; returns the reason if it did."""
        watch, config = self.watch, self.config
        if watch is None or config is None:
            return None
        if now - watch.since > config.lifecycle.window_s:
            self.watch = None  # survived its window
            return None
        h = self.versions.get(watch.candidate)
        if h is None:
            self.watch = None
            return None
        n, errors, p99 = h.stats.window(watch.since, now)
        why = regression(watch.baseline, WindowStats(n, errors, p99), config.lifecycle)
        if why is None:
            return None
        await self.rollback(watch.previous, reason=f"auto: {why}")
        return why

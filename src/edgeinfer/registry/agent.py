"""The fleet agent: keeps one server in line with its group's desired state.

Two tasks. The connection task takes a snapshot, then watches the group's keys (resuming from
the last revision seen after a reconnect) and, on a heartbeat, keeps the status lease alive,
publishes what runs here and applies the canary-halting rule. The apply task turns desired state
into engine calls whenever it changes, and every `resync_s` to correct drift. They share only
`desired`, so an unreachable registry stops neither: the last desired state (also persisted in
`<repo>/.fleet-state.json` for restarts) keeps being served, and nothing is ever unloaded because
the registry went away or a model's key was deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import random
import socket
import tempfile
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client.core import GaugeMetricFamily, Metric

from edgeinfer.errors import EdgeInferError, LoadError
from edgeinfer.registry.converge import converge, observe
from edgeinfer.registry.desired import Change, Desired, DesiredError, DesiredModel, Snapshot
from edgeinfer.registry.fetch import FetchError, ensure_version
from edgeinfer.registry.rollout import halt_reason
from edgeinfer.registry.source import Registry, RegistryError, Resync, open_registry
from edgeinfer.serving.supervisor import supervise, within

if TYPE_CHECKING:
    from edgeinfer.config import ServerSettings
    from edgeinfer.lifecycle import Engine

log = logging.getLogger("edgeinfer.fleet")

STATE_FILE = ".fleet-state.json"

T = TypeVar("T")


class FleetAgent:
    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        device_id: str,
        group: str,
        *,
        resync_s: float = 10.0,
        backoff: tuple[float, float] = (0.5, 5.0),
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.device_id = device_id
        self.group = group
        self.desired: dict[str, Desired] = {}
        self.revision = 0
        self.connected = False
        self.errors: dict[str, str] = {}  # model -> last error applying its desired state
        self.registry_error = ""
        ttl = float(getattr(registry, "ttl", 10))
        self.heartbeat_s = max(0.5, min(3.0, ttl / 3))
        self.call_timeout_s = max(1.0, ttl)  # a registry call not answered by then has failed
        self.resync_s = resync_s
        self._backoff = backoff
        self._failed: dict[str, int] = {}  # model -> mod revision whose apply failed for good
        self._applied: dict[str, int] = {}  # model -> mod revision last converged
        self._state_path = engine.repository.root / STATE_FILE
        self._changed = asyncio.Event()
        # Ready (for load balancers) once the desired state read at start was applied once, or
        # the registry could not be reached at start (then the last known state serves).
        self.settled = False
        self._snapshot_seen = False
        self._report_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_settings(cls, engine: Engine, settings: ServerSettings) -> FleetAgent:
        return cls(
            engine,
            open_registry(settings.registry),
            settings.device_id or socket.gethostname(),
            settings.device_group,
        )

    # ---- start, stop -----------------------------------------------------------------------
    def prime(self) -> None:
        """Before the engine starts: restore the last known desired state and pin versions, so
        a restarted device comes back to it even with the registry unreachable."""
        try:
            doc = json.loads(self._state_path.read_text())
            if doc.get("group") != self.group:
                return
            self.desired = {
                n: Desired(DesiredModel.from_json(d["desired"]), int(d["mod_revision"]))
                for n, d in doc.get("models", {}).items()
            }
            self.revision = int(doc.get("revision", 0))
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError, DesiredError) as e:
            log.warning("ignoring %s: %s", self._state_path, e)
            return
        for name, d in self.desired.items():
            self.engine.pin_version(name, d.model.version)
        log.info(
            "restored desired state of %d model(s) at revision %d", len(self.desired), self.revision
        )

    def start(self) -> None:
        self.engine.register_collector(_Collector(self))
        self.engine.add_ready_gate(lambda: self.settled)
        restarted = functools.partial(self.engine.restarts.add, "", "fleet")
        self._tasks = [
            asyncio.create_task(supervise(f"fleet {what} loop", loop, on_restart=restarted))
            for what, loop in (("registry", self._connection_loop), ("apply", self._apply_loop))
        ]
        log.info(
            "fleet: device %s in group %s, desired state from %s",
            self.device_id,
            self.group,
            self.registry.description,
        )

    async def close(self) -> None:
        """Stop both loops and close the registry; neither may hold up a shutdown."""
        for t in self._tasks:
            t.cancel()
        await within(5.0, "stopping the fleet agent", *self._tasks)
        await within(self.call_timeout_s, "closing the registry", self.registry.close())

    async def _call(self, call: Awaitable[T]) -> T:
        """A registry call with a deadline: an unanswered call is a registry error."""
        try:
            async with asyncio.timeout(self.call_timeout_s):
                return await call
        except TimeoutError:
            raise RegistryError(f"no answer within {self.call_timeout_s:.0f} s") from None

    # ---- registry connection ---------------------------------------------------------------
    async def _connection_loop(self) -> None:
        delay, need_snapshot = self._backoff[0], True
        while True:
            try:
                if need_snapshot:
                    self._replace(await self._call(self.registry.snapshot(self.group)))
                    need_snapshot = False
                await self._session()
            except Resync as e:
                log.info("fleet: re-reading desired state: %s", e)
                need_snapshot = True
                continue
            except RegistryError as e:
                error = str(e)
            except Exception as e:  # never let the fleet take the server down
                log.exception("fleet: registry session crashed")
                error = repr(e)
            if not self.settled and not self._snapshot_seen:
                self.settled = True
                log.warning(
                    "fleet: no desired state from the registry at start (%s); ready "
                    "with the last known one",
                    error,
                )
            # A session that got through retries soon; repeated failures back off.
            delay = self._backoff[0] if self.connected else min(delay * 2, self._backoff[1])
            self._set_connected(False, error)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))

    def _set_connected(self, up: bool, error: str) -> None:
        if up != self.connected:
            (log.info if up else log.warning)(
                "fleet: registry %s%s",
                "connected" if up else "unreachable",
                "" if up else f" ({error}); serving the last desired state, retrying",
            )
        self.connected, self.registry_error = up, error

    async def _session(self) -> None:
        tasks = [asyncio.create_task(self._watch()), asyncio.create_task(self._heartbeat())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            t.result()
        raise RegistryError("registry session ended")

    async def _watch(self) -> None:
        async for change in self.registry.watch(self.group, self.revision + 1):
            self._update(change)

    async def _heartbeat(self) -> None:
        """Refresh the lease and publish the status every `heartbeat_s`, and at once after a
        change was applied; judge running canaries every other beat."""
        checked = 0.0
        while True:
            self._report_now.clear()
            await self._call(self.registry.report(self.device_id, self.status()))
            self._set_connected(True, "")
            if time.monotonic() - checked >= 2 * self.heartbeat_s:
                checked = time.monotonic()
                await self._check_canaries()
            await _wait(self._report_now, self.heartbeat_s)

    async def _check_canaries(self) -> None:
        active = {n: d for n, d in self.desired.items() if d.model.active_canary}
        if not active:
            return
        statuses = await self._call(self.registry.statuses())
        for name, d in active.items():
            reason = halt_reason(d.model, statuses, self.group, name)
            if reason is None:
                continue
            halted = d.model.with_changes(halted=reason)
            if await self._call(
                self.registry.write(self.group, name, halted, expect=d.mod_revision)
            ):
                log.warning("fleet: halted the rollout of %s: %s", name, reason)

    # ---- desired state ---------------------------------------------------------------------
    def _replace(self, snapshot: Snapshot) -> None:
        self.desired = dict(snapshot.models)
        self.revision = snapshot.revision
        self._snapshot_seen = True
        self._persist()
        self._changed.set()

    def _update(self, change: Change) -> None:
        if change.desired is None:
            self.desired.pop(change.model, None)  # no longer managed; keeps serving as it is
        else:
            self.desired[change.model] = change.desired
        self.revision = max(self.revision, change.revision)
        self._persist()
        self._changed.set()

    def _persist(self) -> None:
        doc = {
            "group": self.group,
            "revision": self.revision,
            "models": {
                n: {"desired": d.model.to_json(), "mod_revision": d.mod_revision}
                for n, d in sorted(self.desired.items())
            },
        }
        try:
            _write_atomic(self._state_path, json.dumps(doc, indent=2).encode())
        except OSError as e:  # a read-only repository: restarts then wait for the registry
            log.warning("fleet: cannot persist the desired state to %s: %s", self._state_path, e)

    # ---- applying --------------------------------------------------------------------------
    async def _apply_loop(self) -> None:
        while True:
            await _wait(self._changed, self.resync_s)
            self._changed.clear()
            after_snapshot = self._snapshot_seen  # this pass applies what the registry said
            for name, d in sorted(self.desired.items()):
                try:
                    await self._apply(name, d)
                except Exception as e:  # one model's bug must not stop the others
                    log.exception("fleet: applying %s crashed", name)
                    self.errors[name] = repr(e)
            if after_snapshot and not self.settled:
                self.settled = True
                log.info("fleet: desired state applied; ready")
            self._report_now.set()

    async def _apply(self, name: str, d: Desired) -> None:
        if self._failed.get(name) == d.mod_revision:
            return  # failed for good; waits for a new desired state
        if self._applied.get(name) == d.mod_revision and self._rolled_back_here(name, d.model):
            return  # a local automatic rollback after a regression stands; reported in status
        want = d.model
        self.engine.pin_version(name, want.version)
        repo = self.engine.repository
        try:
            await ensure_version(
                repo, name, want.version, want.artifacts.get(want.version), want.config
            )
            canary_error = ""
            if want.active_canary is not None:
                c = want.active_canary.version
                try:
                    await ensure_version(repo, name, c, want.artifacts.get(c), want.config)
                except FetchError as e:  # the live version still converges; no canary
                    canary_error, want = str(e), want.with_changes(canary=None)
                    if e.permanent:
                        self._failed[name] = d.mod_revision
            await converge(self.engine, name, want)
        except FetchError as e:
            self._fail(name, d, str(e), e.permanent)
            return
        except EdgeInferError as e:
            self._fail(name, d, e.message, isinstance(e, LoadError))
            return
        self._applied[name] = d.mod_revision
        if canary_error:
            self._fail(name, d, canary_error, name in self._failed)
        else:
            self.errors.pop(name, None)

    def _fail(self, name: str, d: Desired, message: str, permanent: bool) -> None:
        if self.errors.get(name) != message:
            log.warning("fleet: %s: %s", name, message)
        self.errors[name] = message
        if permanent:
            self._failed[name] = d.mod_revision

    def _rolled_back_here(self, name: str, want: DesiredModel) -> bool:
        try:
            st = self.engine.lifecycle_status(name)
        except EdgeInferError:
            return False
        last = st.history[-1] if st.history else {}
        if (
            st.live is not None
            and st.live != want.version
            and last.get("event") == "rollback"
            and str(last.get("reason", "")).startswith("auto")
            and last.get("from") == want.version
        ):
            self.errors[name] = f"v{want.version} was rolled back here: {last['reason']}"
            return True
        return False

    # ---- observed state --------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        names = set(self.desired) | {s.name for s in self.engine.index(ready_only=True)}
        models = {}
        for name in sorted(names):
            models[name] = observe(self.engine, name)
            models[name]["error"] = self.errors.get(name, "")
            d = self.desired.get(name)
            models[name]["desired"] = d.model.version if d else None
        return {
            "device": self.device_id,
            "group": self.group,
            "healthy": self.engine.ready(),
            "revision": self.revision,
            "models": models,
        }


class _Collector:
    def __init__(self, agent: FleetAgent) -> None:
        self._agent = agent

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "edgeinfer_registry_connected",
            "1 while the desired-state registry is reachable",
            value=int(self._agent.connected),
        )
        yield GaugeMetricFamily(
            "edgeinfer_registry_revision",
            "Registry revision of the desired state this device knows",
            value=self._agent.revision,
        )


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Until `event` is set or `seconds` pass. Not asyncio.wait_for: on Python 3.11 it can
    swallow a cancellation that arrives as the event is set, and a loop that misses its
    cancellation runs on and holds up the shutdown for ever."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["STATE_FILE", "FleetAgent"]

"""The fleet agent against an in-memory registry and a real engine with tiny models."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from edgeinfer.config import ServerSettings
from edgeinfer.lifecycle import Engine
from edgeinfer.registry import STATE_FILE, Canary, DesiredModel, FileSource, FleetAgent
from edgeinfer.repository import Repository
from edgeinfer.testing import models
from tests.helpers import until
from tests.unit.registry.fakes import MemoryRegistry


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[Path, str]]:
    d = tmp_path_factory.mktemp("agent-build")
    out = {}
    for v in (1, 2, 3):
        p = models.mlp(d / f"v{v}.onnx", seed=60 + v)
        out[v] = (p, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def _files(builds: dict[int, tuple[Path, str]], *versions: int) -> dict:
    return {v: {"model.onnx": FileSource(str(builds[v][0]), builds[v][1])} for v in versions}


def _repo(tmp_path: Path, builds: dict[int, tuple[Path, str]]) -> Path:
    root = tmp_path / "repo"
    if not root.exists():
        models.publish(root, "m", builds[1][0], "max_batch_size = 8\n")
    return root


@asynccontextmanager
async def running(root: Path, reg: MemoryRegistry) -> AsyncIterator[tuple[Engine, FleetAgent]]:
    engine = Engine(Repository(root), ServerSettings(repository=root))
    agent = FleetAgent(engine, reg, "d1", "g", resync_s=0.1, backoff=(0.01, 0.05))
    agent.prime()
    await engine.start()
    agent.start()
    try:
        yield engine, agent
    finally:
        await agent.close()
        await engine.close()


def _route(engine: Engine) -> tuple[str | None, dict | None]:
    st = engine.lifecycle_status("m").to_json()
    return st["live"], st["canary"]


def test_desired_versions_and_canary_go_through_the_engine(
    tmp_path: Path, builds: dict[int, tuple[Path, str]]
) -> None:
    reg = MemoryRegistry()
    root = _repo(tmp_path, builds)

    async def go() -> None:
        async with running(root, reg) as (engine, agent):
            reg.put("g", "m", DesiredModel(2, artifacts=_files(builds, 2)))
            await until(lambda: _route(engine) == ("2", None))
            # A canary of a version new to the device is loaded as a canary, not promoted.
            reg.put("g", "m", DesiredModel(2, Canary(3, 0.25), _files(builds, 2, 3)))
            await until(lambda: _route(engine) == ("2", {"version": "3", "weight": 0.25}))
            # Promote by making it the version; then roll back to 2 and forward again.
            for live in (3, 2, 3):
                reg.put("g", "m", DesiredModel(live, artifacts=_files(builds, 2, 3)))
                await until(lambda live=live: _route(engine) == (str(live), None))  # type: ignore[misc]
            await until(lambda: reg.reports.get("d1", {}).get("models", {}).get("m", {})
                        .get("live") == "3")  # fmt: skip
            report = reg.reports["d1"]
            assert report["group"] == "g" and report["healthy"] is True
            assert report["models"]["m"]["error"] == "" and report["models"]["m"]["desired"] == 3
            assert agent.connected

    asyncio.run(go())


def test_a_flapping_registry_never_unloads_and_restarts_keep_the_desired_state(
    tmp_path: Path, builds: dict[int, tuple[Path, str]]
) -> None:
    reg = MemoryRegistry()
    root = _repo(tmp_path, builds)

    async def flap() -> None:
        async with running(root, reg) as (engine, agent):
            reg.put("g", "m", DesiredModel(2, Canary(3, 0.5), _files(builds, 2, 3)))
            await until(lambda: _route(engine) == ("2", {"version": "3", "weight": 0.5}))
            for i in range(30):
                reg.down = i % 2 == 0
                await asyncio.sleep(0.03)
                assert engine.model_ready("m") and _route(engine)[0] == "2"
            reg.down = True
            await until(lambda: not agent.connected)
            metrics = engine.metrics().decode()
            assert "edgeinfer_registry_connected 0.0" in metrics
            reg.down = False
            await until(lambda: agent.connected)

    asyncio.run(flap())
    saved = json.loads((root / STATE_FILE).read_text())
    assert saved["group"] == "g" and saved["models"]["m"]["desired"]["version"] == 2

    # Restart with the registry unreachable: the persisted desired state is served, and v3
    # (newest on disk, never promoted) does not go live on its own.
    reg.down = True

    async def restart() -> None:
        async with running(root, reg) as (engine, agent):
            assert _route(engine) == ("2", {"version": "3", "weight": 0.5})
            await asyncio.sleep(0.3)
            assert _route(engine)[0] == "2" and not agent.connected

    asyncio.run(restart())


def test_bad_artifacts_are_refused_and_reported(
    tmp_path: Path, builds: dict[int, tuple[Path, str]]
) -> None:
    reg = MemoryRegistry()
    root = _repo(tmp_path, builds)

    async def go() -> None:
        async with running(root, reg) as (engine, agent):
            wrong = {2: {"model.onnx": FileSource(str(builds[2][0]), "0" * 64)}}
            reg.put("g", "m", DesiredModel(2, artifacts=wrong))
            await until(lambda: "sha256" in agent.errors.get("m", ""))
            assert _route(engine) == ("1", None) and not (root / "m" / "2").exists()
            await until(lambda: "sha256" in reg.reports["d1"]["models"]["m"]["error"])
            # A refused canary does not stop the live version from converging.
            canary_wrong = {**_files(builds, 2), 3: wrong[2]}
            reg.put("g", "m", DesiredModel(2, Canary(3, 0.5), canary_wrong))
            await until(lambda: _route(engine) == ("2", None))
            await until(lambda: "v3" in agent.errors.get("m", ""))
            # A fixed desired state clears the error.
            reg.put("g", "m", DesiredModel(2, artifacts=_files(builds, 2)))
            await until(lambda: "m" not in agent.errors)

    asyncio.run(go())


def test_halting_rule_writes_halted_once_with_compare_and_swap(
    tmp_path: Path, builds: dict[int, tuple[Path, str]]
) -> None:
    reg = MemoryRegistry()
    root = _repo(tmp_path, builds)
    want = DesiredModel(2, Canary(3, 0.5), _files(builds, 2, 3), max_error_rate=0.1,
                        min_requests=10)  # fmt: skip

    async def go() -> None:
        async with running(root, reg) as (engine, _agent):
            reg.put("g", "m", want)
            await until(lambda: _route(engine)[1] is not None)
            # Another device of the group saw the canary fail.
            reg.reports["other"] = {"group": "g", "models": {"m": {"versions": {
                "3": {"requests": 20, "errors": 5}}}}}  # fmt: skip
            await until(lambda: reg.models[("g", "m")].model.halted != "")
            assert "5/20" in reg.models[("g", "m")].model.halted
            await until(lambda: _route(engine) == ("2", None))  # the canary stops here too
            writes = reg.writes
            await asyncio.sleep(0.3)
            assert reg.writes == writes  # halted once; a halted rollout is not judged again
            # A write based on a stale revision loses: a newer `fleet set` is never undone.
            stale = reg.models[("g", "m")].mod_revision - 1
            assert not await reg.write("g", "m", want.with_changes(halted="x"), expect=stale)

    asyncio.run(go())


def test_the_agent_stops_even_when_a_change_arrives_as_it_is_stopped(
    tmp_path: Path, builds: dict[int, tuple[Path, str]]
) -> None:
    """A change (or a heartbeat's report request) arriving in the same moment as the stop: the
    loops waited with asyncio.wait_for, which on Python 3.11 returns the event instead of raising
    the cancellation, so the loop ran on and close() waited for it for ever."""
    reg = MemoryRegistry()
    root = _repo(tmp_path, builds)

    async def go() -> None:
        async with running(root, reg) as (_engine, agent):
            await until(lambda: agent.settled and agent.connected)
            await asyncio.sleep(0.05)  # both loops are waiting for their events now
            agent._changed.set()
            agent._report_now.set()
            async with asyncio.timeout(10):
                await agent.close()
            assert all(t.done() for t in agent._tasks)

    asyncio.run(go())

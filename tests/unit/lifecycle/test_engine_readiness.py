"""Readiness tells the truth: a failed load of an unknown or broken model leaves the server's
readiness as it was, and a model whose worker is down is not ready (nor is the server) until the
worker is restarted. A real engine with tiny ONNX models; the only fake is a hardware reading."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest

from edgeinfer.config import ServerSettings
from edgeinfer.errors import LoadError, ModelNotFound
from edgeinfer.lifecycle import Engine
from edgeinfer.repository import Repository
from edgeinfer.testing import models
from edgeinfer.types import InferRequest, Tensor
from tests.helpers import until

DEADLINE_S = 20.0


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    models.publish(root, "mlp", models.mlp(tmp_path / "mlp.onnx", seed=1), "max_batch_size = 8\n")
    return root


def broken(root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not an onnx model")
    models.publish(root, "broken", bad)


@asynccontextmanager
async def engine_on(root: Path, before_start: Callable[[Engine], None] | None = None,
                    ) -> AsyncIterator[Engine]:  # fmt: skip
    engine = Engine(Repository(root), ServerSettings(repository=root))
    if before_start is not None:
        before_start(engine)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()


def run(test: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(DEADLINE_S):
            await test()

    asyncio.run(bounded())


def request() -> InferRequest:
    return InferRequest("mlp", [Tensor("x", np.ones((2, 16), np.float32))])


def test_loading_an_unknown_model_is_not_found_and_readiness_stays(repo: Path) -> None:
    async def go() -> None:
        async with engine_on(repo) as engine:
            assert engine.ready()
            with pytest.raises(ModelNotFound, match="digitz"):
                await engine.load("digitz")
            assert engine.ready() and not engine.model_ready("digitz")
            await engine.infer(request())

    run(go)


def test_loading_a_broken_model_fails_and_readiness_stays(repo: Path, tmp_path: Path) -> None:
    async def go() -> None:
        async with engine_on(repo) as engine:
            broken(repo, tmp_path)
            with pytest.raises(LoadError, match="could not load"):
                await engine.load("broken")
            assert engine.ready() and not engine.model_ready("broken")
            await engine.infer(request())
        # Present at start, too: the other models serve and the server says so.
        async with engine_on(repo) as engine:
            assert engine.ready() and engine.model_ready("mlp")
            assert not engine.model_ready("broken")
            # A model that served and was unloaded is no longer waited for.
            await engine.unload("mlp")
            assert engine.ready()
            await engine.load("mlp")
            assert engine.ready() and engine.model_ready("mlp")

    run(go)


def test_a_model_whose_worker_is_down_is_not_ready_until_the_worker_is_back(repo: Path) -> None:
    """The governor's reading (a hardware reader) raises inside the model's worker: the worker
    dies and is restarted with backoff. Meanwhile the model and the server are not ready and the
    restarts are counted; once the reading works again the queued request is served."""
    failing = True

    def fault(engine: Engine) -> None:
        real = engine.governor.capacity

        def capacity() -> tuple[float, str]:
            task = asyncio.current_task()
            if failing and task is not None and "worker" in task.get_name():
                raise RuntimeError("thermal zone vanished")
            return real()

        engine.governor.capacity = capacity  # type: ignore[method-assign]

    async def go() -> None:
        nonlocal failing
        async with engine_on(repo, fault) as engine:
            assert engine.ready() and engine.model_ready("mlp")
            pending = asyncio.create_task(engine.infer(request()))
            await until(lambda: b'restarts_total{model="mlp",task="scheduler"}' in engine.metrics())
            assert not engine.ready()
            assert not engine.model_ready("mlp") and not engine.model_ready("mlp", "1")
            assert not pending.done()  # queued, not failed: it runs once the worker is back
            failing = False
            response = await pending
            assert response.outputs[0].data.shape == (2, 4)
            await until(engine.ready)
            assert engine.model_ready("mlp")
            await engine.infer(request())

    run(go)

"""A scheduler survives any exception: the failing batch's requests get an error naming it, the
next request is served. The backend is a fake (it stands in for ONNX Runtime); the scheduler,
its workers, the runner and the supervisor are the real ones."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import pytest

from edgeinfer.errors import BackendError, InvalidInput
from edgeinfer.serving.batcher import BatchPolicy
from edgeinfer.serving.runner import Runner
from edgeinfer.serving.scheduler import Scheduler
from edgeinfer.telemetry.stats import VersionStats

# Every await below has a deadline: before the fix, a crashed worker left requests waiting forever.
DEADLINE_S = 10.0


class FakeBackend:
    """Doubles its input; raises the queued exceptions first, one per run."""

    platform = "fake"
    inputs = ()
    outputs = ()

    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self.runs = 0

    def run(self, feeds: dict[str, np.ndarray], output_names: Any = None) -> dict[str, np.ndarray]:
        self.runs += 1
        if self.errors:
            raise self.errors.pop(0)
        return {"y": feeds["x"] * 2}

    def warmup(self) -> None:
        return None

    def close(self) -> None:
        return None


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(DEADLINE_S):
            await test()

    asyncio.run(bounded())


def scheduler(backend: FakeBackend, **kw: Any) -> tuple[Scheduler, Runner]:
    runner = Runner(workers=1)
    policy = BatchPolicy(max_batch_size=8)
    sched = Scheduler([backend], policy, runner, VersionStats("fake", "1"), dynamic=True,
                      batch_axis=True, **kw)  # fmt: skip
    return sched, runner


def rows(n: int) -> dict[str, np.ndarray]:
    return {"x": np.arange(n * 2, dtype=np.float32).reshape(n, 2)}


@pytest.mark.parametrize(
    "error",
    [
        ZeroDivisionError("division by zero"),
        IndexError("index 0 is out of bounds"),
        MemoryError(),
    ],
    ids=["ZeroDivisionError", "IndexError", "MemoryError"],
)
def test_a_backend_exception_fails_its_batch_and_the_next_request_is_served(
    error: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FakeBackend()
    sched, runner = scheduler(backend)

    async def go() -> None:
        backend.errors.append(error)
        with pytest.raises(BackendError, match=type(error).__name__) as info:
            await sched.submit(rows(2))
        assert "model 'fake' version 1" in info.value.message
        out, _ = await sched.submit(rows(3))
        np.testing.assert_array_equal(out["y"], rows(3)["x"] * 2)
        assert sched.healthy
        await sched.close()

    with caplog.at_level(logging.ERROR, logger="edgeinfer.scheduler"):
        run(go)
    runner.shutdown()
    logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(logged) == 1 and logged[0].exc_info is not None  # once, with the traceback
    assert logged[0].exc_info[0] is type(error)


def test_a_domain_error_reaches_the_client_as_it_is() -> None:
    backend = FakeBackend()
    sched, runner = scheduler(backend)

    async def go() -> None:
        backend.errors.append(InvalidInput("token id 99 is out of range"))
        with pytest.raises(InvalidInput, match="token id 99"):
            await sched.submit(rows(1))
        out, _ = await sched.submit(rows(1))
        assert out["y"].shape == (1, 2)
        await sched.close()

    run(go)
    runner.shutdown()


def test_every_request_of_a_failed_batch_gets_the_error_and_the_rest_are_served() -> None:
    backend = FakeBackend()
    sched, runner = scheduler(backend)

    async def go() -> None:
        backend.errors.append(IndexError("boom"))
        # Queued together before the worker starts: one batch of three requests.
        results = await asyncio.gather(*(sched.submit(rows(1)) for _ in range(3)),
                                       return_exceptions=True)  # fmt: skip
        assert backend.runs == 1
        assert all(isinstance(r, BackendError) for r in results)
        outs = await asyncio.gather(*(sched.submit(rows(i + 1)) for i in range(3)))
        assert [o["y"].shape[0] for o, _ in outs] == [1, 2, 3]
        await sched.close()

    run(go)
    runner.shutdown()


def test_an_empty_batch_after_the_rate_is_known_does_not_stop_the_worker() -> None:
    """The reproduction of a zero-row request reaching the scheduler: once the service rate had
    three samples, the rate update divided by the predicted time of 0 rows."""
    backend = FakeBackend()
    sched, runner = scheduler(backend)

    async def go() -> None:
        for _ in range(4):
            await sched.submit(rows(2))
        assert sched.rate.seconds_for(2) is not None
        out, _ = await sched.submit(rows(0))
        assert out["y"].shape == (0, 2)
        out, _ = await sched.submit(rows(1))
        assert out["y"].shape == (1, 2)
        await sched.close()

    run(go)
    runner.shutdown()


def test_a_crash_outside_a_batch_restarts_the_worker_and_counts_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The governor's reading (a hardware reader, faked here) raises once in the worker's
    scheduling step: the worker dies, is restarted, and the queued request is served."""
    backend = FakeBackend()
    # The first reading is admission's, the second the worker's.
    readings: list[BaseException | tuple[float, str]] = [(1.0, ""), RuntimeError("sysfs gone")]
    restarts: list[int] = []

    def capacity() -> tuple[float, str]:
        reading = readings.pop(0) if readings else (1.0, "")
        if isinstance(reading, BaseException):
            raise reading
        return reading

    sched, runner = scheduler(backend, capacity=capacity, on_restart=lambda: restarts.append(1))

    async def go() -> None:
        with caplog.at_level(logging.ERROR, logger="edgeinfer.supervisor"):
            out, _ = await sched.submit(rows(2))
        assert out["y"].shape == (2, 2)
        assert restarts == [1] and sched.healthy
        await sched.close()

    run(go)
    runner.shutdown()
    crashed = [r for r in caplog.records if "crashed" in r.getMessage()]
    assert len(crashed) == 1 and crashed[0].exc_info is not None

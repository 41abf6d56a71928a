"""supervise(): a crashed loop is logged once, reported down, restarted after a backoff."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from edgeinfer.serving.supervisor import Backoff, supervise


class FakeTime:
    """A clock and a sleep that records the delays asked for and returns at once."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(10):
            await test()

    asyncio.run(bounded())


def test_a_crashing_loop_is_restarted_with_backoff_and_reported_down_meanwhile(
    caplog: pytest.LogCaptureFixture,
) -> None:
    t = FakeTime()
    events: list[str] = []
    crashes = [ZeroDivisionError("a"), IndexError("b"), MemoryError(), KeyError("c")]

    async def loop() -> None:
        events.append("run")
        t.now += 1.0  # each run lasts a second
        if crashes:
            raise crashes.pop(0)

    async def go() -> None:
        await supervise("loop", loop, on_crash=lambda: events.append("down"),
                        on_restart=lambda: events.append("up"),
                        backoff=Backoff(first=0.1, most=0.5, reset_after=30),
                        clock=t.clock, sleep=t.sleep)  # fmt: skip

    with caplog.at_level(logging.ERROR, logger="edgeinfer.supervisor"):
        run(go)
    assert events == ["run", "down", "up"] * 4 + ["run"]
    assert t.sleeps == [0.1, 0.2, 0.4, 0.5]
    logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(logged) == 4 and all(r.exc_info is not None for r in logged)
    assert [r.exc_info[0] for r in logged if r.exc_info] == [
        ZeroDivisionError, IndexError, MemoryError, KeyError]  # fmt: skip
    assert "loop crashed" in logged[0].getMessage()


def test_a_loop_that_ran_a_long_time_restarts_after_the_first_delay_again() -> None:
    t = FakeTime()
    lengths = [0.0, 0.0, 0.0, 100.0, 0.0]

    async def loop() -> None:
        if not lengths:
            return
        t.now += lengths.pop(0)
        raise RuntimeError("again")

    run(lambda: supervise("loop", loop, backoff=Backoff(0.1, 5.0, reset_after=30),
                          clock=t.clock, sleep=t.sleep))  # fmt: skip
    assert t.sleeps == [0.1, 0.2, 0.4, 0.1, 0.2]


def test_cancelling_the_supervisor_ends_the_loop_and_is_not_caught() -> None:
    started = asyncio.Event()
    seen: list[str] = []

    async def loop() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def go() -> None:
        task = asyncio.create_task(supervise("loop", loop))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(go)
    assert seen == ["cancelled"]


def test_a_failing_callback_does_not_end_the_supervision() -> None:
    t = FakeTime()
    runs: list[int] = []

    async def loop() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise ValueError("x")

    def broken() -> None:
        raise RuntimeError("callback bug")

    run(lambda: supervise("loop", loop, on_crash=broken, on_restart=broken,
                          clock=t.clock, sleep=t.sleep))  # fmt: skip
    assert len(runs) == 3

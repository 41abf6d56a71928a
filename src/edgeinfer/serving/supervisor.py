"""Keeps a long-running task alive: a crash is logged, reported and followed by a restart.

Work loops (a scheduler's workers, the repository watcher, the rollback monitor, the fleet
agent) handle the errors they expect. Anything else would end the task silently and stop that
part of the server for good while health checks still pass. `supervise` logs the error with its
traceback, tells the owner the task is down (so readiness can say so and a metric can count
it), waits a backoff and runs the loop again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("edgeinfer.supervisor")


@dataclass(frozen=True)
class Backoff:
    """Delays between restarts: doubling from `first` up to `most`; a run that lasted
    `reset_after` seconds or more starts again from `first`."""

    first: float = 0.05
    most: float = 5.0
    reset_after: float = 30.0


def _nothing() -> None:
    return None


async def supervise(
    what: str,
    run: Callable[[], Awaitable[None]],
    *,
    on_crash: Callable[[], None] = _nothing,
    on_restart: Callable[[], None] = _nothing,
    backoff: Backoff = Backoff(),
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Run `run()` until it returns. When it raises, log it once at ERROR with the traceback,
    call `on_crash()` (the task is down now), sleep the backoff, call `on_restart()` and run it
    again. Cancelling the supervisor cancels the running task; cancellation is never caught."""
    delay = backoff.first
    while True:
        started = clock()
        try:
            await run()
            return
        except Exception:
            if clock() - started >= backoff.reset_after:
                delay = backoff.first
            log.exception("%s crashed; restarting it in %.2f s", what, delay)
        try:
            on_crash()
        except Exception:  # a broken callback must not end the supervision
            log.exception("%s: crash callback failed", what)
        await sleep(delay)
        delay = min(delay * 2, backoff.most)
        try:
            on_restart()
        except Exception:
            log.exception("%s: restart callback failed", what)


async def within(seconds: float, what: str, *steps: Awaitable[Any]) -> bool:
    """Await `steps` (run as tasks) for at most `seconds`; what is still running then is
    cancelled and left behind with a warning, so a stuck step cannot hold up a shutdown. Errors
    of the steps are logged, never raised. True when every step finished in time."""
    tasks = [asyncio.ensure_future(s) for s in steps]
    if not tasks:
        return True
    done, pending = await asyncio.wait(tasks, timeout=seconds)
    for t in pending:
        t.cancel()
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            log.warning("%s failed", what, exc_info=t.exception())
    if pending:
        log.warning("%s did not finish within %.0f s; going on without it", what, seconds)
    return not pending

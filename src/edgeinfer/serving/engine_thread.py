"""The supervised thread pair under the LLM loop: an engine thread that runs steps back to back,
and a notifier thread that hands each step's results to the event loop.

The steps run back to back on one engine thread per model version, not as `asyncio.to_thread`
calls from the event loop: on a shared 2-core CPU every thread handoff waits for a core, and the
two handoffs per step cost 2-3 ms (measured: 2.1-3.0 ms per token against 0.3 ms for the same
loop with the decode inline; ~15-20% of a 336M model's decode step). The engine thread never
waits for the event loop; the event loop only receives results, so HTTP handling and other
models keep running during decodes.

This module also owns what keeps the threads alive:
- an exception from a step is handed to `on_error` (which fails the requests it concerns) and
  the thread goes on with the next step; an exception from `on_error` itself is logged;
- if the engine thread dies anyway (a BaseException), `healthy` turns False (the model reports
  not ready), and the next `revive()` or `wake()` starts a new thread, which first runs
  `on_restart` (the loop fails what the dead thread held) and counts the restart;
- the notifier survives every exception, and is restarted like the engine thread;
- `stop(timeout)` waits at most `timeout` seconds for the current step: a stuck backend call
  cannot hold the server's shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("edgeinfer.llm")

Delivery = list[tuple[Any, Any]]  # (request, chunk or error) pairs for `publish`


class EngineThread:
    def __init__(
        self,
        step: Callable[[], bool],
        on_error: Callable[[Exception], None],
        on_restart: Callable[[], None],
        publish: Callable[[Delivery], None],
        name: str = "llm-engine",
    ) -> None:
        """`step()` runs one step (False: nothing to do, wait for `wake`); `publish` runs on
        the event loop with what `deliver` handed over."""
        self._step = step
        self._on_error = on_error
        self._on_restart = on_restart
        self._publish = publish
        self._name = name
        self.calls: deque[Callable[[], None]] = deque()  # run on the engine thread between steps
        self.restarts = 0
        self.stopping = False
        self._wakeup = threading.Event()
        self._ready: deque[Delivery] = deque()
        self._ready_event = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._engine: threading.Thread | None = None
        self._notifier: threading.Thread | None = None
        self._recover = False  # the next engine thread first runs on_restart
        self._start_lock = threading.Lock()

    # ---- state -----------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._engine is not None

    @property
    def healthy(self) -> bool:
        """False while a started engine or notifier thread is dead (until it is revived)."""
        if self._engine is None or self.stopping:
            return True
        return self._engine.is_alive() and self._notifier is not None and self._notifier.is_alive()

    def in_engine_thread(self) -> bool:
        return threading.current_thread() is self._engine

    # ---- starting, waking, reviving ----------------------------------------------------------
    def wake(self) -> None:
        """From the event loop: start the threads (or revive dead ones), then wake the engine."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self.revive()
        self._wakeup.set()

    def poke(self) -> None:
        """From any thread: wake the engine thread if it waits (starts nothing)."""
        self._wakeup.set()

    def revive(self) -> bool:
        """Start the threads that are not running; True when one had died (a restart)."""
        if self.stopping or self._loop is None:
            return False
        with self._start_lock:
            restarted = False
            if self._engine is not None and not self._engine.is_alive():
                log.error("the %s thread had died: restarting it", self._name)
                self.restarts += 1
                self._recover = restarted = True
            if self._engine is None or restarted:
                self._engine = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._engine.start()
            if self._notifier is not None and not self._notifier.is_alive():
                log.error("the %s notifier thread had died: restarting it", self._name)
                self.restarts += 1
                restarted = True
                self._notifier = None
            if self._notifier is None:
                self._notifier = threading.Thread(
                    target=self._notify, daemon=True, name=self._name + "-notify"
                )
                self._notifier.start()
        self._wakeup.set()
        self._ready_event.set()
        return restarted

    # ---- the engine thread -----------------------------------------------------------------
    def _run(self) -> None:
        try:
            if self._recover:
                self._recover = False
                self._guarded(self._on_restart)
            while not self.stopping:
                self._wakeup.clear()
                self.run_calls()
                if not self._guarded(self._step):
                    self._wakeup.wait()
        except BaseException:  # the thread ends here; `healthy` says so until revive()
            log.critical("the %s thread died", self._name, exc_info=True)

    def _guarded(self, fn: Callable[[], Any]) -> Any:
        """fn(); an exception is logged once and handed to on_error. True after an error, so
        the loop looks for more work at once."""
        try:
            return fn()
        except Exception as e:
            log.exception("%s step failed; failing the requests it concerned", self._name)
            try:
                self._on_error(e)
            except Exception:
                log.exception("%s: failing the requests of a failed step failed too", self._name)
            return True

    def call(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Queue `fn` for the engine thread; the future (of the running loop) gets its result.
        The caller wakes the thread."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def run() -> None:
            try:
                result: Any = fn()
            except BaseException as e:  # handed to the awaiting coroutine
                loop.call_soon_threadsafe(_settle, fut, None, e)
            else:
                loop.call_soon_threadsafe(_settle, fut, result, None)

        self.calls.append(run)
        return fut

    def run_calls(self) -> None:
        while self.calls:
            fn = self.calls.popleft()
            try:
                fn()
            except Exception:  # a failed adapter free must not stop the engine
                log.exception("engine-thread call failed")

    # ---- handing results to the event loop ---------------------------------------------------
    def deliver(self, batch: Delivery) -> None:
        """Hand one step's results to the notifier thread. Waking the event loop from the
        engine thread would cost it ~1 ms a step: the woken loop takes the GIL while this
        thread still needs it. The notifier gets the GIL only once this thread enters the next
        decode (which releases it), so the loop's work overlaps the decode."""
        if batch:
            self._ready.append(batch)
            self._ready_event.set()

    def _notify(self) -> None:
        while True:
            self._ready_event.wait()
            self._ready_event.clear()
            try:
                batch: Delivery = []
                while self._ready:
                    batch += self._ready.popleft()
                loop = self._loop
                if batch and loop is not None and not loop.is_closed():
                    loop.call_soon_threadsafe(self._publish_guarded, batch)
            except Exception:  # e.g. the loop closed between the check and the call
                log.exception("%s notifier failed to hand over results", self._name)
            if self.stopping and not self._ready:
                return

    def _publish_guarded(self, batch: Delivery) -> None:
        try:
            self._publish(batch)
        except Exception:
            log.exception("%s: delivering results failed", self._name)

    def drain_ready(self) -> None:
        """On the event loop once the threads stopped: publish what is left."""
        while self._ready:
            self._publish_guarded(self._ready.popleft())

    # ---- stopping --------------------------------------------------------------------------
    async def stop(self, timeout: float) -> bool:
        """Stop after the current step; False when the engine thread is still inside a step
        after `timeout` seconds (then the backend must not be freed under it)."""
        self.stopping = True
        self._wakeup.set()
        engine = self._engine
        if engine is not None and engine.is_alive():
            await asyncio.to_thread(engine.join, max(0.0, timeout))
        self._ready_event.set()  # the notifier hands over what is left and ends
        return engine is None or not engine.is_alive()


def _settle(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)

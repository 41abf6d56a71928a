"""Thread scheduling: inference threads run at a higher nice value than the event loop.

On a device whose cores are all busy with inference, the thread that answers health checks,
admits or refuses requests and moves their bytes must not wait behind the model: with equal
priority the kernel shares the cores evenly and a 2-core board answers `/v2/health/ready` in tens
of milliseconds under overload. Nice is per thread on Linux and new threads inherit it, so a
session created from a niced thread gets niced intra-op threads too. Raising nice needs no
privilege; lowering it again does, so a failure is ignored (the thread stays lower).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def set_thread_nice(nice: int) -> bool:
    """Set the calling thread's nice value; False if the OS refused."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (OSError, AttributeError):  # no permission to lower it, or not Linux
        return False
    return True


def thread_nice() -> int | None:
    with contextlib.suppress(OSError, AttributeError):
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    return None


def in_niced_thread(nice: int, fn: Callable[[], T]) -> T:
    """Run `fn` on a short-lived thread at `nice` (threads it starts inherit it); 0: inline."""
    if nice <= 0:
        return fn()
    box: dict[str, object] = {}

    def target() -> None:
        set_thread_nice(nice)
        try:
            box["result"] = fn()
        except BaseException as e:  # re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=target, name="edgeinfer-load")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]

"""Threads for llama.cpp that fit how busy the CPUs are.

llama.cpp's OpenMP threads meet at a barrier after every op and spin while they wait. On cores
nobody else wants, two threads decode ~1.6x faster than one; as soon as another process takes
a core, a spinning thread burns the time slice its partner needs and two threads collapse
(measured on a 2-core VM with neighbours at load ~12: 1 thread 16-19 tok/s, 2 threads 0.6-0.7;
with OMP_WAIT_POLICY=PASSIVE or GOMP_SPINCOUNT=0, 10-12, but passive waiting costs 3-4x on idle
cores). So the thread count follows the kernel's CPU pressure (PSI, /proc/pressure/cpu: the
share of time some runnable task waited for a CPU): all usable cores while it stays low, one
thread once it is high. Hysteresis and a 10-second average keep it from flapping; without PSI
(old kernels, some containers) the configured count stays.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from edgeinfer.hardware._read import read_text, under
from edgeinfer.hardware.cgroup import Root


def read_cpu_pressure(root: Root = "/") -> float | None:
    """`some avg10` of /proc/pressure/cpu in percent, or None when the kernel has no PSI."""
    text = read_text(under(root, "/proc/pressure/cpu"))
    for line in (text or "").splitlines():
        if line.startswith("some "):
            for field in line.split()[1:]:
                key, _, value = field.partition("=")
                if key == "avg10":
                    try:
                        return float(value)
                    except ValueError:
                        return None
    return None


class ThreadGovernor:
    """`threads()`: how many threads the next decode should use, re-decided at most every
    `interval` seconds from `read()` (CPU pressure in percent)."""

    def __init__(
        self,
        max_threads: int,
        read: Callable[[], float | None] = read_cpu_pressure,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 2.0,
        high: float = 25.0,
        low: float = 10.0,
    ) -> None:
        self.max_threads = max(1, max_threads)
        self._read, self._clock, self._interval = read, clock, interval
        self._high, self._low = high, low
        self._n = self.max_threads
        self._at = float("-inf")
        self.pressure: float | None = None  # the last reading

    def threads(self) -> int:
        now = self._clock()
        if self.max_threads == 1 or now - self._at < self._interval:
            return self._n
        self._at = now
        self.pressure = p = self._read()
        if p is None or p <= self._low:
            self._n = self.max_threads
        elif p >= self._high:
            self._n = 1
        return self._n

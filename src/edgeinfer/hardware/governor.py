"""Turns temperature and memory readings into a capacity factor the batcher and admission obey.

Full capacity below a soft limit, a linear back-off to `floor` at the hard limit, the lower of the
thermal and memory factors wins. Hysteresis keeps a reading that hovers at a boundary from making
the factor flap: the factor drops at once, but rises only after the reading has fallen
`hysteresis` below the level that set it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgeinfer.config import ConfigError
from edgeinfer.hardware.device import Readings, read_readings


@dataclass(frozen=True)
class GovernorConfig:
    temp_soft_c: float = 70.0
    temp_hard_c: float = 85.0
    floor: float = 0.25  # the factor at and past the hard limits
    memory_soft_frac: float = 0.85  # of the memory limit in use
    memory_hard_frac: float = 0.95
    hysteresis_c: float = 3.0
    hysteresis_frac: float = 0.03
    min_interval_s: float = 1.0  # capacity() re-reads the sensors at most this often

    def __post_init__(self) -> None:
        if not self.temp_soft_c < self.temp_hard_c:
            raise ConfigError(
                f"governor: temp_soft_c ({self.temp_soft_c}) must be below temp_hard_c "
                f"({self.temp_hard_c})"
            )
        if not 0.0 < self.memory_soft_frac < self.memory_hard_frac <= 1.0:
            raise ConfigError(
                "governor: need 0 < memory_soft_frac < memory_hard_frac <= 1, got "
                f"{self.memory_soft_frac} and {self.memory_hard_frac}"
            )
        if not 0.0 < self.floor <= 1.0:
            raise ConfigError(f"governor: floor must be in (0, 1], got {self.floor}")
        if self.hysteresis_c < 0 or self.hysteresis_frac < 0 or self.min_interval_s < 0:
            raise ConfigError("governor: hysteresis_c, hysteresis_frac, min_interval_s >= 0")


@dataclass(frozen=True)
class GovernorSnapshot:
    """The last readings and the decision, for metrics and the dashboard."""

    temp_c: float | None
    freq_cur_hz: float | None
    freq_max_hz: float | None
    memory_used_bytes: int | None
    memory_limit_bytes: int | None
    throttled: bool | None
    factor: float
    reason: str  # "thermal" | "memory" | "" (full capacity)
    read_at: float | None  # clock time of the reading; None before the first


class _BackOff:
    """One signal's factor with hysteresis."""

    def __init__(self, soft: float, hard: float, floor: float, hysteresis: float) -> None:
        self.soft, self.hard, self.floor, self.hysteresis = soft, hard, floor, hysteresis
        self.factor = 1.0
        self._anchor: float | None = None  # the reading (clamped to hard) that set the factor

    def target(self, value: float) -> float:
        if value <= self.soft:
            return 1.0
        if value >= self.hard:
            return self.floor
        return 1.0 - (value - self.soft) / (self.hard - self.soft) * (1.0 - self.floor)

    def update(self, value: float | None) -> float:
        if value is None or math.isnan(value):
            self.factor, self._anchor = 1.0, None  # unknown: do not hold capacity back
            return self.factor
        target = self.target(value)
        rising = target > self.factor
        if rising and self._anchor is not None and value > self._anchor - self.hysteresis:
            return self.factor  # not cooled enough below what set the factor: hold it
        self.factor = target
        self._anchor = None if target >= 1.0 else min(value, self.hard)
        return self.factor


class Governor:
    """`capacity()` is cheap: it reads the sensors at most every `min_interval_s` by `clock`.

    `reader` returns the latest `Readings` (by default the real sysfs under "/"); tests pass a
    function that returns the values they want. Safe to call from several threads.
    """

    def __init__(
        self,
        reader: Callable[[], Readings] = read_readings,
        clock: Callable[[], float] = time.monotonic,
        config: GovernorConfig | None = None,
    ) -> None:
        self.config = cfg = config or GovernorConfig()
        self._reader = reader
        self._clock = clock
        self._lock = threading.Lock()
        self._thermal = _BackOff(cfg.temp_soft_c, cfg.temp_hard_c, cfg.floor, cfg.hysteresis_c)
        self._memory = _BackOff(
            cfg.memory_soft_frac, cfg.memory_hard_frac, cfg.floor, cfg.hysteresis_frac
        )
        self._readings = Readings()
        self._factor, self._reason = 1.0, ""
        self._read_at: float | None = None

    def capacity(self) -> tuple[float, str]:
        """(factor in [floor, 1], reason: "thermal" | "memory" | "")."""
        self._refresh_if_due()
        with self._lock:
            return self._factor, self._reason

    def snapshot(self) -> GovernorSnapshot:
        self._refresh_if_due()
        with self._lock:
            r = self._readings
            return GovernorSnapshot(
                r.temp_c,
                r.freq_cur_hz,
                r.freq_max_hz,
                r.memory_used_bytes,
                r.memory_limit_bytes,
                r.throttled,
                self._factor,
                self._reason,
                self._read_at,
            )

    def refresh(self) -> tuple[float, str]:
        """Read the sensors now, whatever the interval (e.g. from a background ticker)."""
        now = self._clock()
        with self._lock:
            self._read_at = now
        self._apply(self._reader())
        return self.capacity()

    def _refresh_if_due(self) -> None:
        now = self._clock()
        with self._lock:
            due = self._read_at is None or now - self._read_at >= self.config.min_interval_s
            if not due:
                return
            self._read_at = now  # claim this read: other threads keep the cached factor
        self._apply(self._reader())  # sysfs I/O outside the lock

    def _apply(self, readings: Readings) -> None:
        used, limit = readings.memory_used_bytes, readings.memory_limit_bytes
        frac = used / limit if used is not None and limit else None
        with self._lock:
            self._readings = readings
            thermal = self._thermal.update(readings.temp_c)
            memory = self._memory.update(frac)
            factor = min(thermal, memory)
            if factor >= 1.0:
                self._factor, self._reason = 1.0, ""
            else:
                self._factor = factor
                self._reason = "thermal" if thermal <= memory else "memory"


def scaled_batch(max_batch: int, factor: float) -> int:
    """The largest batch to form at this capacity: floor(max_batch * factor), at least 1.
    A model without a batch axis (max_batch 0) runs one request at a time: 1."""
    return _scaled(max_batch, factor)


def scaled_concurrency(n: int, factor: float) -> int:
    """How many of `n` instances/slots to keep busy at this capacity, at least 1."""
    return _scaled(n, factor)


def _scaled(n: int, factor: float) -> int:
    if n <= 1:
        return 1
    factor = min(1.0, max(0.0, factor))
    return max(1, math.floor(n * factor + 1e-9))

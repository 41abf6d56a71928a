"""Per model-version statistics: Triton's /v2/models/{m}/stats shape, read by Prometheus at scrape.

Updated only from the event loop thread (the scheduler delivers results there), so plain integer
adds are safe; a scrape reads a consistent-enough snapshot without locks.
"""

from __future__ import annotations

import bisect
import time
from array import array
from dataclasses import dataclass, field

from edgeinfer.errors import BackendError, DeadlineExceeded, EdgeInferError, QueueFull, Unavailable

# Request latency histogram buckets, in seconds.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
RECENT = 4096  # outcomes kept for windowed p99 and error rates


def failure_reason(e: EdgeInferError) -> str:
    """Triton's nv_inference_request_failure reason for a domain error."""
    if isinstance(e, QueueFull | Unavailable | DeadlineExceeded):
        return "REJECTED"
    if isinstance(e, BackendError):
        return "BACKEND"
    return "OTHER"


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, n: int = 1) -> None:
        self.count += n
        self.ns += ns

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class VersionStats:
    name: str
    version: str
    inference_count: int = 0  # batch rows served
    execution_count: int = 0  # model runs
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_REASONS, 0))
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batch_sizes: dict[int, Duration] = field(default_factory=dict)
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum_s: float = 0.0
    # The last RECENT outcomes for health checks after a swap and the dashboard's percentiles, in
    # ring buffers of plain numbers: no objects allocated per request (a deque of tuples cost
    # ~1 % of a tiny model's request in cache misses and garbage-collector work).
    _at: array[float] = field(default_factory=lambda: array("d", bytes(8 * RECENT)))
    _seconds: array[float] = field(default_factory=lambda: array("d", bytes(8 * RECENT)))
    _ok: array[int] = field(default_factory=lambda: array("b", bytes(RECENT)))
    _n: int = 0  # outcomes recorded so far; the next goes to _n % RECENT
    enabled: bool = True  # off (--no-metrics): the record_* calls do nothing

    # The record_* methods run once per request: plain field updates, nothing allocated
    # (bench/serving.py measures their cost against --no-metrics).
    def record_execution(self, batch: int, infer_ns: int) -> None:
        if not self.enabled:
            return
        self.execution_count += 1
        self.inference_count += batch
        d = self.batch_sizes.get(batch)
        if d is None:  # not setdefault: that would build a Duration on every call
            d = self.batch_sizes[batch] = Duration()
        d.add(infer_ns)

    def record_success(
        self, total_ns: int, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        if not self.enabled:
            return
        self.success.add(total_ns)
        self.queue.add(queue_ns)
        self.compute_input.add(input_ns)
        self.compute_infer.add(infer_ns)
        self.compute_output.add(output_ns)
        self._observe(total_ns, True)

    def record_failure(self, total_ns: int, reason: str) -> None:
        if not self.enabled:
            return
        self.fail.add(total_ns)
        self.failures[reason] += 1
        self._observe(total_ns, reason != "BACKEND")  # client errors are not the model's

    def _observe(self, total_ns: int, ok: bool) -> None:
        seconds = total_ns / 1e9
        i = self._n % RECENT
        self._at[i], self._seconds[i], self._ok[i] = time.monotonic(), seconds, ok
        self._n += 1
        self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum_s += seconds

    @property
    def last_inference_ms(self) -> int:
        """Wall-clock ms of the last recorded outcome (0: none), as Triton reports it."""
        if not self._n:
            return 0
        last_at = self._at[(self._n - 1) % RECENT]
        return int((time.time() - (time.monotonic() - last_at)) * 1000)

    def recent(self) -> list[tuple[float, float, bool]]:
        """The last outcomes (up to RECENT) as (monotonic time, seconds, ok)."""
        n = min(self._n, RECENT)
        return [(self._at[i], self._seconds[i], bool(self._ok[i])) for i in range(n)]

    def window(self, since: float, until: float = float("inf")) -> tuple[int, int, float | None]:
        """(requests, errors, p99 seconds) of the outcomes recorded in [since, until).
        Only backend failures count as errors; rejections and bad input do not."""
        outcomes = [(s, ok) for t, s, ok in self.recent() if since <= t < until]
        lat = [s for s, _ in outcomes]
        errors = sum(1 for _, ok in outcomes if not ok)
        if not lat:
            return 0, 0, None
        lat.sort()
        return len(lat), errors, lat[min(len(lat) - 1, int(0.99 * len(lat)))]

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": self.compute_input.as_dict(),
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": self.compute_output.as_dict(),
                "cache_hit": {"count": 0, "ns": 0},
                "cache_miss": {"count": 0, "ns": 0},
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": {"count": d.count, "ns": 0},
                    "compute_infer": d.as_dict(),
                    "compute_output": {"count": d.count, "ns": 0},
                }
                for size, d in sorted(self.batch_sizes.items())
            ],
        }

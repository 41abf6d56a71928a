"""Per model-version statistics: Triton's /v2/models/{m}/stats shape, read by Prometheus at scrape.

Updated only from the event loop thread (the scheduler delivers results there), so plain integer
adds are safe; a scrape reads a consistent-enough snapshot without locks.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from dataclasses import dataclass, field

# Request latency histogram buckets, in seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)  # fmt: skip
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


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
    last_inference_ms: int = 0
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
    # Recent outcomes (monotonic time, seconds, ok) for health checks after a swap.
    recent: deque[tuple[float, float, bool]] = field(default_factory=lambda: deque(maxlen=4096))

    def record_execution(self, batch: int, infer_ns: int) -> None:
        self.execution_count += 1
        self.inference_count += batch
        self.batch_sizes.setdefault(batch, Duration()).add(infer_ns)

    def record_success(
        self, total_ns: int, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        self.last_inference_ms = time.time_ns() // 1_000_000
        self.success.add(total_ns)
        self.queue.add(queue_ns)
        self.compute_input.add(input_ns)
        self.compute_infer.add(infer_ns)
        self.compute_output.add(output_ns)
        self._observe(total_ns)

    def record_failure(self, total_ns: int, reason: str) -> None:
        self.fail.add(total_ns)
        self.failures[reason] += 1
        self._observe(total_ns, ok=reason != "BACKEND")  # client errors are not the model's

    def _observe(self, total_ns: int, ok: bool = True) -> None:
        seconds = total_ns / 1e9
        self.recent.append((time.monotonic(), seconds, ok))
        self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum_s += seconds

    def window(self, since: float, until: float = float("inf")) -> tuple[int, int, float | None]:
        """(requests, errors, p99 seconds) of the outcomes recorded in [since, until).
        Only backend failures count as errors; rejections and bad input do not."""
        lat = [s for t, s, _ in self.recent if since <= t < until]
        errors = sum(1 for t, _, ok in self.recent if since <= t < until and not ok)
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

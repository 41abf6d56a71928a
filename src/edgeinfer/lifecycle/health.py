"""Automatic rollback: is a newly promoted version worse than the one it replaced?"""

from __future__ import annotations

from dataclasses import dataclass

from edgeinfer.config import LifecycleOptions


@dataclass(frozen=True)
class WindowStats:
    requests: int
    errors: int
    p99_s: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def regression(
    baseline: WindowStats, candidate: WindowStats, policy: LifecycleOptions
) -> str | None:
    """Why `candidate` (the new live version, watched for `policy.window_s`) should be rolled
    back to the version it replaced, or None. Errors: rate above both `error_ratio` x the old
    rate and the old rate + `error_floor`. Latency: p99 above `latency_ratio` x the old p99."""
    if not policy.auto_rollback or candidate.requests < policy.min_requests:
        return None
    limit = max(baseline.error_rate * policy.error_ratio, baseline.error_rate + policy.error_floor)
    if candidate.error_rate > limit:
        return (
            f"error rate {candidate.error_rate:.1%} over {candidate.requests} requests vs "
            f"{baseline.error_rate:.1%} before"
        )
    if (
        baseline.p99_s
        and candidate.p99_s
        and candidate.p99_s > baseline.p99_s * policy.latency_ratio
    ):
        return f"p99 latency {candidate.p99_s * 1e3:.1f} ms vs {baseline.p99_s * 1e3:.1f} ms before"
    return None

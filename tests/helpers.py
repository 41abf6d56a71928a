"""Shared test helpers: wait for a condition, and read a server's /metrics with the
Prometheus text parser (not regexes)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def wait_until(
    cond: Callable[[], object],
    timeout: float = 30.0,
    what: str = "condition",
    interval: float = 0.02,
) -> None:
    """Poll `cond` until it is truthy; fail the test naming `what` after `timeout` seconds."""
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"{what} not reached in {timeout}s"
        time.sleep(interval)


async def until(
    cond: Callable[[], object | Awaitable[object]],
    timeout: float = 10.0,
    what: str = "condition",
    interval: float = 0.005,
) -> None:
    """`wait_until` for a running event loop; `cond` may be a coroutine function."""
    end = time.monotonic() + timeout
    while True:
        ok = cond()
        if inspect.isawaitable(ok):
            ok = await ok
        if ok:
            return
        assert time.monotonic() < end, f"{what} not reached in {timeout}s"
        await asyncio.sleep(interval)


@dataclass(frozen=True)
class Samples:
    """The samples of one /metrics scrape."""

    items: tuple[Sample, ...]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.items)

    def get(self, name: str, /, **labels: str) -> float | None:
        """The value of sample `name` with exactly these labels, or None if there is none."""
        for s in self.items:
            if s.name == name and s.labels == labels:
                return float(s.value)
        return None

    def value(self, name: str, /, **labels: str) -> float:
        """Like `get`, but the sample must be there."""
        got = self.get(name, **labels)
        assert got is not None, f"{name}{labels} not in /metrics: {sorted({s.name for s in self})}"
        return got


def parse_metrics(text: str, prefix: str = "") -> Samples:
    """The samples in a Prometheus text exposition whose name starts with `prefix`."""
    found = (s for f in text_string_to_metric_families(text) for s in f.samples)
    return Samples(tuple(s for s in found if s.name.startswith(prefix)))


def samples(url: str, prefix: str = "", headers: Mapping[str, str] | None = None) -> Samples:
    """Scrape `url`/metrics (url: a server's base URL) and keep the samples starting with `prefix`."""
    r = httpx.get(f"{url}/metrics", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return parse_metrics(r.text, prefix)


def metric(url: str, name: str, /, **labels: str) -> float | None:
    """The value of one sample (exact name and labels) on `url`/metrics, or None if absent."""
    return samples(url, name).get(name, **labels)

"""Prometheus exposition: Triton's metric names for tensor models, read from VersionStats at scrape.

Nothing is updated per request here: the collector turns the stats objects into metric families
when /metrics is scraped, so metrics cost nothing on the request path.

prometheus-client always writes counters with a `_total` suffix; Triton's counters have none
(`nv_inference_request_success`). To keep Triton's exact sample names, those families are exposed
untyped, which PromQL treats the same (rate() works).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest

from edgeinfer.telemetry.stats import LATENCY_BUCKETS, VersionStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class VersionSample:
    stats: VersionStats
    pending: int
    executing: int


@dataclass(frozen=True)
class LifecycleSample:
    live: dict[str, int]  # model -> live version
    canary: dict[tuple[str, int], float]  # (model, version) -> weight
    load_failures: dict[tuple[str, int, str], int]  # (model, version, reason) -> count
    rollbacks: dict[tuple[str, str], int]  # (model, manual|auto) -> count


@dataclass(frozen=True)
class DeviceSample:
    factor: float
    reason: str
    temp_c: float | None
    freq_hz: float | None
    rejections: dict[str, int]  # admission rejections by reason
    budget_limit: int | None
    budget_used: int | None


class DeviceCollector:
    def __init__(self, source: Callable[[], DeviceSample]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        s = self._source()
        factor = GaugeMetricFamily("edgeinfer_capacity_factor", "Share of full capacity the "
                                   "device governor allows (1 = full)", labels=["reason"])  # fmt: skip
        factor.add_metric([s.reason or "none"], s.factor)
        yield factor
        if s.temp_c is not None:
            yield GaugeMetricFamily("edgeinfer_cpu_temperature_celsius", "CPU temperature",
                                    value=s.temp_c)  # fmt: skip
        if s.freq_hz is not None:
            yield GaugeMetricFamily("edgeinfer_cpu_frequency_hertz", "Mean current CPU clock",
                                    value=s.freq_hz)  # fmt: skip
        rej = CounterMetricFamily("edgeinfer_admission_rejections", "Requests refused at "
                                  "admission", labels=["reason"])  # fmt: skip
        for reason in ("queue_full", "predicted_wait", "thermal", "memory"):
            rej.add_metric([reason], s.rejections.get(reason, 0))
        yield rej
        if s.budget_limit is not None:
            yield GaugeMetricFamily("edgeinfer_memory_budget_bytes", "Byte budget for resident "
                                    "models", value=s.budget_limit)  # fmt: skip
            yield GaugeMetricFamily("edgeinfer_memory_budget_used_bytes", "Bytes reserved by "
                                    "resident models (estimated)", value=s.budget_used or 0)  # fmt: skip


class CountersCollector:
    """One counter family with one label, read from a dict at scrape time."""

    def __init__(self, name: str, doc: str, label: str,
                 source: Callable[[], dict[str, int]]) -> None:  # fmt: skip
        self._name, self._doc, self._label, self._source = name, doc, label, source

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._doc, labels=[self._label])
        for key, n in self._source().items():
            family.add_metric([key], n)
        yield family


class LifecycleCollector:
    def __init__(self, source: Callable[[], LifecycleSample]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        s = self._source()
        live = GaugeMetricFamily("edgeinfer_model_live_version", "The version serving requests "
                                 "that name none", labels=["model"])  # fmt: skip
        for model, version in s.live.items():
            live.add_metric([model], version)
        yield live
        canary = GaugeMetricFamily("edgeinfer_model_canary_weight", "Share of traffic sent to a "
                                   "canary version", labels=["model", "version"])  # fmt: skip
        for (model, version), weight in s.canary.items():
            canary.add_metric([model, str(version)], weight)
        yield canary
        fails = CounterMetricFamily("edgeinfer_model_load_failures", "Versions that failed to "
                                    "load or verify", labels=["model", "version", "reason"])  # fmt: skip
        for (model, version, reason), n in s.load_failures.items():
            fails.add_metric([model, str(version), reason], n)
        yield fails
        rollbacks = CounterMetricFamily("edgeinfer_model_rollbacks", "Rollbacks performed",
                                        labels=["model", "kind"])  # fmt: skip
        for (model, kind), n in s.rollbacks.items():
            rollbacks.add_metric([model, kind], n)
        yield rollbacks


_TRITON_COUNTERS: tuple[tuple[str, str, Callable[[VersionStats], float]], ...] = (
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
     lambda s: s.success.count),
    ("nv_inference_count", "Number of inferences performed (a batch of N counts N)",
     lambda s: s.inference_count),
    ("nv_inference_exec_count", "Number of model executions performed",
     lambda s: s.execution_count),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds",
     lambda s: (s.success.ns + s.fail.ns) // 1000),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds",
     lambda s: s.queue.ns // 1000),
    ("nv_inference_compute_input_duration_us",
     "Cumulative compute input duration in microseconds", lambda s: s.compute_input.ns // 1000),
    ("nv_inference_compute_infer_duration_us",
     "Cumulative compute inference duration in microseconds", lambda s: s.compute_infer.ns // 1000),
    ("nv_inference_compute_output_duration_us",
     "Cumulative compute output duration in microseconds", lambda s: s.compute_output.ns // 1000),
)  # fmt: skip


def _untyped(name: str, doc: str) -> Metric:
    return Metric(name, doc, "unknown")


class TensorModelCollector:
    def __init__(self, source: Callable[[], Iterable[VersionSample]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        samples = list(self._source())
        for name, doc, value in _TRITON_COUNTERS:
            m = _untyped(name, doc)
            for v in samples:
                m.add_sample(
                    name, {"model": v.stats.name, "version": v.stats.version}, value(v.stats)
                )
            yield m
        fail = _untyped("nv_inference_request_failure", "Number of failed inference requests")
        for v in samples:
            for reason, n in v.stats.failures.items():
                fail_labels = {"model": v.stats.name, "version": v.stats.version, "reason": reason}
                fail.add_sample("nv_inference_request_failure", fail_labels, n)
        yield fail
        pending = GaugeMetricFamily("nv_inference_pending_request_count",
                                    "Instantaneous number of pending requests awaiting execution",
                                    labels=["model", "version"])  # fmt: skip
        executing = GaugeMetricFamily("edgeinfer_inference_executing",
                                      "Batches executing now (at most instance_count)",
                                      labels=["model", "version"])  # fmt: skip
        hist = HistogramMetricFamily("edgeinfer_request_duration_seconds",
                                     "End-to-end request latency in the server",
                                     labels=["model", "version"])  # fmt: skip
        for v in samples:
            labels = [v.stats.name, v.stats.version]
            pending.add_metric(labels, v.pending)
            executing.add_metric(labels, v.executing)
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), v.stats.latency_buckets,
                                    strict=True):  # fmt: skip
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            hist.add_metric(labels, buckets, v.stats.latency_sum_s)
        yield pending
        yield executing
        yield hist


def build_registry(
    versions: Callable[[], Iterable[VersionSample]],
    lifecycle: Callable[[], LifecycleSample],
    device: Callable[[], DeviceSample],
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(TensorModelCollector(versions))
    registry.register(LifecycleCollector(lifecycle))
    registry.register(DeviceCollector(device))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)

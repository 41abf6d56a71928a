"""Prometheus exposition: Triton's metric names for tensor models, read from VersionStats at scrape.

Nothing is updated per request here: the collector turns the stats objects into metric families
when /metrics is scraped, so metrics cost nothing on the request path.

prometheus-client always writes counters with a `_total` suffix; Triton's counters have none
(`nv_inference_request_success`). To keep Triton's exact sample names, those families are exposed
untyped, which PromQL treats the same (rate() works).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

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
    loads: dict[tuple[str, int], int]  # (model, version) -> successful loads
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
        factor = GaugeMetricFamily(
            "edgeinfer_capacity_factor",
            "Share of full capacity the device governor allows (1 = full)",
            labels=["reason"],
        )
        factor.add_metric([s.reason or "none"], s.factor)
        yield factor
        if s.temp_c is not None:
            yield GaugeMetricFamily(
                "edgeinfer_cpu_temperature_celsius", "CPU temperature", value=s.temp_c
            )
        if s.freq_hz is not None:
            yield GaugeMetricFamily(
                "edgeinfer_cpu_frequency_hertz", "Mean current CPU clock", value=s.freq_hz
            )
        rej = CounterMetricFamily(
            "edgeinfer_admission_rejections", "Requests refused at admission", labels=["reason"]
        )
        for reason in ("queue_full", "predicted_wait", "thermal", "memory"):
            rej.add_metric([reason], s.rejections.get(reason, 0))
        yield rej
        if s.budget_limit is not None:
            yield GaugeMetricFamily(
                "edgeinfer_memory_budget_bytes",
                "Byte budget for resident models",
                value=s.budget_limit,
            )
            yield GaugeMetricFamily(
                "edgeinfer_memory_budget_used_bytes",
                "Bytes reserved by resident models (estimated)",
                value=s.budget_used or 0,
            )


class CountersCollector:
    """One counter family with one label, read from a dict at scrape time."""

    def __init__(
        self, name: str, doc: str, label: str, source: Callable[[], dict[str, int]]
    ) -> None:
        self._name, self._doc, self._label, self._source = name, doc, label, source

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._doc, labels=[self._label])
        for key, n in self._source().items():
            family.add_metric([key], n)
        yield family


class RestartCounts:
    """Crashed worker tasks that were restarted, by model ("" for server-wide tasks) and task
    (scheduler, watcher, monitor, fleet): `edgeinfer_worker_restarts_total{model,task}`."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, model: str, task: str) -> None:
        self.counts[(model, task)] = self.counts.get((model, task), 0) + 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "edgeinfer_worker_restarts",
            "Worker tasks restarted after they crashed",
            labels=["model", "task"],
        )
        for (model, task), n in sorted(self.counts.items()):
            family.add_metric([model, task], n)
        yield family


class LifecycleCollector:
    def __init__(self, source: Callable[[], LifecycleSample]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        s = self._source()
        live = GaugeMetricFamily(
            "edgeinfer_model_live_version",
            "The version serving requests that name none",
            labels=["model"],
        )
        for model, version in s.live.items():
            live.add_metric([model], version)
        yield live
        canary = GaugeMetricFamily(
            "edgeinfer_model_canary_weight",
            "Share of traffic sent to a canary version",
            labels=["model", "version"],
        )
        for (model, version), weight in s.canary.items():
            canary.add_metric([model, str(version)], weight)
        yield canary
        loads = CounterMetricFamily(
            "edgeinfer_model_loads",
            "Versions loaded, verified and started",
            labels=["model", "version"],
        )
        for (model, version), n in s.loads.items():
            loads.add_metric([model, str(version)], n)
        yield loads
        fails = CounterMetricFamily(
            "edgeinfer_model_load_failures",
            "Versions that failed to load or verify",
            labels=["model", "version", "reason"],
        )
        for (model, version, reason), n in s.load_failures.items():
            fails.add_metric([model, str(version), reason], n)
        yield fails
        rollbacks = CounterMetricFamily(
            "edgeinfer_model_rollbacks", "Rollbacks performed", labels=["model", "kind"]
        )
        for (model, kind), n in s.rollbacks.items():
            rollbacks.add_metric([model, kind], n)
        yield rollbacks


_TRITON_COUNTERS: tuple[tuple[str, str, Callable[[VersionStats], float]], ...] = (
    (
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        lambda s: s.success.count,
    ),
    (
        "nv_inference_count",
        "Number of inferences performed (a batch of N counts N)",
        lambda s: s.inference_count,
    ),
    (
        "nv_inference_exec_count",
        "Number of model executions performed",
        lambda s: s.execution_count,
    ),
    (
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds",
        lambda s: (s.success.ns + s.fail.ns) // 1000,
    ),
    (
        "nv_inference_queue_duration_us",
        "Cumulative inference queuing duration in microseconds",
        lambda s: s.queue.ns // 1000,
    ),
    (
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds",
        lambda s: s.compute_input.ns // 1000,
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds",
        lambda s: s.compute_infer.ns // 1000,
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative compute output duration in microseconds",
        lambda s: s.compute_output.ns // 1000,
    ),
)


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
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution",
            labels=["model", "version"],
        )
        executing = GaugeMetricFamily(
            "edgeinfer_inference_executing",
            "Batches executing now (at most instance_count)",
            labels=["model", "version"],
        )
        hist = HistogramMetricFamily(
            "edgeinfer_request_duration_seconds",
            "End-to-end request latency in the server",
            labels=["model", "version"],
        )
        for v in samples:
            labels = [v.stats.name, v.stats.version]
            pending.add_metric(labels, v.pending)
            executing.add_metric(labels, v.executing)
            cumulative, buckets = 0, []
            for bound, count in zip(
                (*LATENCY_BUCKETS, float("inf")), v.stats.latency_buckets, strict=True
            ):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            hist.add_metric(labels, buckets, v.stats.latency_sum_s)
        yield pending
        yield executing
        yield hist


# vLLM's histogram buckets, with finer low ends: small models on small CPUs answer in ms.
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
ITL_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
)
E2E_BUCKETS = (
    0.01,
    0.05,
    0.1,
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
)


@dataclass
class Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # one per bound, then +Inf (not cumulative)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = self.counts or [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        cumulative = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        return out


FINISH_REASONS = ("stop", "length", "abort")


@dataclass
class LlmStats:
    """Counters the LLM loop keeps for one model version (event loop thread only)."""

    model_name: str
    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0  # of those, tokens found (their prefill was skipped)
    finished: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINISH_REASONS, 0))
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    itl: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(E2E_BUCKETS))
    engine_restarts: int = 0  # times a dead engine thread was restarted


@dataclass(frozen=True)
class LlmSample:
    stats: LlmStats
    running: int
    waiting: int
    kv_usage: float  # 0..1


_LLM_GAUGES: tuple[tuple[str, str, Callable[[LlmSample], float]], ...] = (
    ("vllm:num_requests_running", "Requests in the running batch", lambda s: s.running),
    ("vllm:num_requests_waiting", "Requests waiting for a slot", lambda s: s.waiting),
    (
        "vllm:kv_cache_usage_perc",
        "KV-cache usage; 1 means 100 percent",
        lambda s: s.kv_usage,
    ),
)
_LLM_COUNTERS: tuple[tuple[str, str, Callable[[LlmSample], float]], ...] = (
    ("vllm:prompt_tokens", "Prefill tokens processed", lambda s: s.stats.prompt_tokens),
    (
        "vllm:generation_tokens",
        "Generation tokens processed",
        lambda s: s.stats.generation_tokens,
    ),
    (
        "vllm:prefix_cache_queries",
        "Prompt tokens looked up in the prefix cache",
        lambda s: s.stats.prefix_cache_queries,
    ),
    (
        "vllm:prefix_cache_hits",
        "Prompt tokens found in the prefix cache",
        lambda s: s.stats.prefix_cache_hits,
    ),
    (
        "edgeinfer_llm_engine_restarts",
        "Engine threads restarted after they died",
        lambda s: s.stats.engine_restarts,
    ),
)
_LLM_HISTOGRAMS: tuple[tuple[str, str, Callable[[LlmSample], Histogram]], ...] = (
    ("vllm:time_to_first_token_seconds", "Time to first token", lambda s: s.stats.ttft),
    ("vllm:inter_token_latency_seconds", "Time between tokens", lambda s: s.stats.itl),
    (
        "vllm:e2e_request_latency_seconds",
        "End-to-end request latency",
        lambda s: s.stats.e2e,
    ),
)


class LlmCollector:
    """vLLM's metric names with a `model_name` label; versions of one model are summed."""

    def __init__(self, source: Callable[[], Iterable[LlmSample]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        by_model: dict[str, list[LlmSample]] = {}
        for s in self._source():
            by_model.setdefault(s.stats.model_name, []).append(s)
        label = ["model_name"]
        for name, doc, get in _LLM_GAUGES:
            g = GaugeMetricFamily(name, doc, labels=label)
            for model, samples in by_model.items():
                g.add_metric([model], sum(get(s) for s in samples))
            yield g
        for name, doc, get in _LLM_COUNTERS:
            c = CounterMetricFamily(name, doc, labels=label)  # exposed as name + "_total"
            for model, samples in by_model.items():
                c.add_metric([model], sum(get(s) for s in samples))
            yield c
        success = CounterMetricFamily(
            "vllm:request_success", "Finished requests", labels=["model_name", "finished_reason"]
        )
        for model, samples in by_model.items():
            for reason in FINISH_REASONS:
                success.add_metric(
                    [model, reason], sum(s.stats.finished.get(reason, 0) for s in samples)
                )
        yield success
        for name, doc, get_hist in _LLM_HISTOGRAMS:
            h = HistogramMetricFamily(name, doc, labels=label)
            for model, samples in by_model.items():
                merged = _merged([get_hist(s) for s in samples])
                h.add_metric([model], merged.buckets(), merged.total)
            yield h


def _merged(hists: list[Histogram]) -> Histogram:
    """One histogram with the counts and totals of several of the same bounds."""
    merged = Histogram(hists[0].bounds)
    for hist in hists:
        merged.counts = [a + b for a, b in zip(merged.counts, hist.counts, strict=True)]
        merged.total += hist.total
    return merged


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

"""Prometheus metrics of adapters and tenants.

`vllm:lora_requests_info` is vLLM's: a gauge whose value is the scrape time and whose labels
carry the state (`max_lora`, `running_lora_adapters`, `waiting_lora_adapters`, names joined by
commas, here as `model:adapter`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from edgeinfer.adapters.manager import AdapterManager


@dataclass(frozen=True)
class LoraLoopSample:
    max_lora: int
    running: list[str]
    waiting: list[str]


class AdapterCollector:
    def __init__(
        self, manager: AdapterManager, loops: Callable[[], Iterable[LoraLoopSample]]
    ) -> None:
        self._manager = manager
        self._loops = loops

    def collect(self) -> Iterator[Metric]:
        samples = list(self._loops())
        info = GaugeMetricFamily(
            "vllm:lora_requests_info",
            "Running stats on LoRA requests.",
            labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
        )
        running = sorted({n for s in samples for n in s.running})
        waiting = sorted({n for s in samples for n in s.waiting} - set(running))
        max_lora = max((s.max_lora for s in samples), default=0)
        info.add_metric([str(max_lora), ",".join(running), ",".join(waiting)], time.time())
        yield info
        st = self._manager.stats
        loads = CounterMetricFamily(
            "edgeinfer_adapter_loads",
            "Adapter loads (first use, reload after eviction, new model version)",
            labels=["model", "adapter"],
        )
        for (m, a), n in sorted(st.loads.items()):
            loads.add_metric([m, a], n)
        yield loads
        unloads = CounterMetricFamily(
            "edgeinfer_adapter_unloads",
            "Adapters freed, by reason (unload: by the API; evict: LRU within the budget)",
            labels=["model", "adapter", "reason"],
        )
        for (m, a, r), n in sorted(st.unloads.items()):
            unloads.add_metric([m, a, r], n)
        yield unloads
        secs = SummaryMetricFamily(
            "edgeinfer_adapter_load_seconds",
            "Time to load adapters (first request after registration or eviction)",
            count_value=st.load_count,
            sum_value=st.load_seconds_sum,
        )
        yield secs
        resident = GaugeMetricFamily("edgeinfer_adapter_resident", "Adapters resident in memory")
        resident.add_metric([], len(self._manager.resident()))
        yield resident
        reqs = CounterMetricFamily(
            "edgeinfer_tenant_requests",
            "Requests by tenant ('' = none, or a name neither a key nor --tenants gives)",
            labels=["tenant", "model"],
        )
        for (t, m), n in sorted(st.tenant_requests.items()):
            reqs.add_metric([t, m], n)
        yield reqs
        toks = CounterMetricFamily(
            "edgeinfer_tenant_tokens",
            "Tokens by tenant and kind",
            labels=["tenant", "model", "kind"],
        )
        for (t, m, k), n in sorted(st.tenant_tokens.items()):
            toks.add_metric([t, m, k], n)
        yield toks

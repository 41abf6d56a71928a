"""OpenTelemetry tracing of inference requests; off unless `--otlp-endpoint` is given.

The spans of one request:

    server             HTTP or gRPC handler; its parent is the caller's W3C `traceparent`, if any
    ├── queue          time in the model's batch queue
    ├── batch execute  one span per model run: a child of the FIRST request it served, and
    │                  LINKED to every request span it served (one run serves several traces)
    └── encode         writing the response

Handlers, the engine and the scheduler see only `Tracer | None` and `RequestTrace | None`: with
tracing off they hold None, so the cost is a None check, and nothing imports opentelemetry until
a Tracer is built. Timestamps passed in are `time.perf_counter_ns()` values (monotonic, and what
the scheduler already measures); they become wall-clock time through one offset shared by all
requests, refreshed now and then, so spans of requests in one batch line up exactly. Contexts
are passed explicitly (no contextvars), which keeps asyncio tasks and worker threads out of it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from edgeinfer.config import ConfigError

SERVICE_NAME = "edgeinfer"
_OFFSET_REFRESH_NS = 10_000_000_000  # re-read the wall clock every 10 s (NTP may slew it)


class RequestTrace:
    """The spans of one request. Created by `Tracer.start_request`; end it exactly once."""

    __slots__ = ("_offset_ns", "span", "tracer")

    def __init__(self, tracer: Tracer, span: Any, offset_ns: int) -> None:
        self.tracer = tracer
        self.span = span
        self._offset_ns = offset_ns  # wall clock minus perf_counter when the request started

    def wall_ns(self, perf_ns: int) -> int:
        return perf_ns + self._offset_ns

    def set(self, key: str, value: str | int | float | bool) -> None:
        self.span.set_attribute(key, value)

    def child(
        self, name: str, start_ns: int, end_ns: int, attributes: Mapping[str, Any] | None = None
    ) -> None:
        """A finished child span over [start_ns, end_ns] (perf_counter_ns)."""
        span = self.tracer.otel.start_span(
            name,
            context=self.tracer.context_of(self.span),
            start_time=self.wall_ns(start_ns),
            attributes=dict(attributes) if attributes else None,
        )
        span.end(end_time=self.wall_ns(end_ns))

    def end(self, status_code: int | None = None, error: BaseException | None = None) -> None:
        """End the server span. `status_code` is the HTTP status (None for gRPC): 5xx marks the
        span failed, as does `error` (with the exception's message)."""
        span = self.span
        if status_code is not None:
            span.set_attribute("http.response.status_code", status_code)
        if error is not None:
            span.set_attribute("error.type", type(error).__name__)
            span.set_status(self.tracer.error_status(str(error)))
        elif status_code is not None and status_code >= 500:
            span.set_status(self.tracer.error_status(f"HTTP {status_code}"))
        span.end(end_time=self.wall_ns(time.perf_counter_ns()))


class Tracer:
    """Makes request spans on an OpenTelemetry TracerProvider.

    `Tracer.otlp(url)` exports to an OTLP/HTTP collector; tests pass their own provider (for
    example one with an InMemorySpanExporter)."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.otel = provider.get_tracer("edgeinfer")
        self._propagator = TraceContextTextMapPropagator()
        self._trace = trace
        self._offset_ns = 0
        self._offset_at = -_OFFSET_REFRESH_NS  # perf_counter_ns of the last refresh

    @classmethod
    def otlp(cls, endpoint: str) -> Tracer:
        """Export spans in batches over OTLP/HTTP to `endpoint` (`http://host:4318`; a URL
        without a path gets the standard `/v1/traces`). The usual OTEL_* environment variables
        (OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, OTEL_BSP_*) apply."""
        from urllib.parse import urlsplit

        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if urlsplit(endpoint).path in ("", "/"):
            endpoint = endpoint.rstrip("/") + "/v1/traces"
        name = os.environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME
        provider = TracerProvider(resource=Resource.create({"service.name": name}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        return cls(provider)

    def context_of(self, span: Any) -> Any:
        return self._trace.set_span_in_context(span)

    def error_status(self, message: str) -> Any:
        return self._trace.Status(self._trace.StatusCode.ERROR, message)

    def _offset(self, perf_ns: int) -> int:
        if perf_ns - self._offset_at > _OFFSET_REFRESH_NS:
            self._offset_ns = time.time_ns() - time.perf_counter_ns()
            self._offset_at = perf_ns
        return self._offset_ns

    def start_request(
        self,
        name: str,
        carrier: Mapping[str, str] | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> RequestTrace:
        """Start a server span. `carrier` holds the transport headers/metadata; a valid W3C
        `traceparent` in it becomes the span's parent."""
        parent = self._propagator.extract(carrier) if carrier else None
        perf = time.perf_counter_ns()
        offset = self._offset(perf)
        span = self.otel.start_span(
            name,
            context=parent,
            kind=self._trace.SpanKind.SERVER,
            start_time=perf + offset,
            attributes=dict(attributes) if attributes else None,
        )
        return RequestTrace(self, span, offset)

    def batch(
        self,
        traces: Sequence[RequestTrace],
        start_ns: int,
        end_ns: int,
        attributes: Mapping[str, Any],
        error: BaseException | None = None,
    ) -> None:
        """One `batch execute` span for a model run that served `traces`: a child of the first
        request's span (so that trace shows the run) and linked to every request's span."""
        first = traces[0]
        links = [
            self._trace.Link(t.span.get_span_context(), {"edgeinfer.batch.index": i})
            for i, t in enumerate(traces)
        ]
        span = self.otel.start_span(
            "batch execute",
            context=self.context_of(first.span),
            links=links,
            start_time=first.wall_ns(start_ns),
            attributes={**attributes, "edgeinfer.batch.requests": len(traces)},
        )
        if error is not None:
            span.set_status(self.error_status(str(error)))
        span.end(end_time=first.wall_ns(end_ns))

    def shutdown(self) -> None:
        """Flush spans still buffered and stop the exporter."""
        self.provider.shutdown()


def record_batch(
    traces: Sequence[RequestTrace],
    queued_ns: Sequence[int],
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, Any],
    error: BaseException | None = None,
) -> None:
    """Called by the scheduler for a traced model run that started at `start_ns`: a `queue`
    span per request (it waited `queued_ns[i]` before the run started), then the batch span."""
    for trace, queued in zip(traces, queued_ns, strict=True):
        trace.child("queue", start_ns - queued, start_ns)
    traces[0].tracer.batch(traces, start_ns, end_ns, attributes, error)


def from_endpoint(endpoint: str) -> Tracer | None:
    """The process's tracer: None (tracing off) unless an OTLP endpoint is configured."""
    if not endpoint:
        return None
    try:
        return Tracer.otlp(endpoint)
    except ImportError as e:
        raise ConfigError(
            f"--otlp-endpoint needs the OpenTelemetry SDK and OTLP exporter ({e.name} is "
            "missing): pip install 'edgeinfer[tracing]'"
        ) from e


T = TypeVar("T")


async def traced(
    tracer: Tracer | None,
    name: str,
    carrier: Mapping[str, str] | None,
    attributes: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
    run: Callable[[RequestTrace | None], Awaitable[T]],
    status: Callable[[T], int | None] = lambda _: None,
) -> T:
    """Run one request's handler `run` inside a server span (none when tracing is off): the one
    wrapper every HTTP route and gRPC method uses. `attributes` may be a function, called only
    when there is a span (a hot route then builds nothing). `status` reads the HTTP status of
    the result; an exception (cancellation included) ends the span as failed and propagates."""
    if tracer is None:
        return await run(None)
    attrs = attributes() if callable(attributes) else attributes
    trace = tracer.start_request(name, carrier, attrs)
    try:
        result = await run(trace)
    except BaseException as e:
        trace.end(error=e)
        raise
    trace.end(status(result))
    return result

"""Builds the HTTP app and runs HTTP and gRPC in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from edgeinfer.auth import Authenticator, KeyStore
from edgeinfer.config import ConfigError, ServerSettings
from edgeinfer.lifecycle import Engine
from edgeinfer.repository import Repository
from edgeinfer.server import (
    dashboard,
    kserve_http,
    metrics_http,
    openai_http,
    openai_llm,
    openai_lora,
    openapi,
    repository_http,
)
from edgeinfer.server.auth_http import AuthMiddleware
from edgeinfer.server.http_common import ClientDisconnected, json_response
from edgeinfer.serving.supervisor import within
from edgeinfer.telemetry.metrics import CountersCollector

if TYPE_CHECKING:
    import grpc
    import uvicorn

    from edgeinfer.registry import FleetAgent
    from edgeinfer.telemetry.tracing import Tracer

log = logging.getLogger("edgeinfer.server")

Lifespan = Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]


def build_app(
    engine: Engine,
    settings: ServerSettings,
    lifespan: Lifespan | None = None,
    auth: Authenticator | None = None,
) -> Starlette:
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        detail = {
            404: f"no route {request.method} {request.url.path}",
            405: f"method {request.method} not allowed on {request.url.path}",
        }
        return json_response(
            {"error": detail.get(exc.status_code, exc.detail)},
            exc.status_code,
            dict(exc.headers or {}),
        )  # 405 carries Allow

    async def client_gone(request: Request, exc: Exception) -> Response:
        return Response(status_code=499)  # the client left mid-request: nobody reads this

    limit = settings.max_request_bytes
    json_limit = min(limit, settings.max_json_bytes)  # OpenAI bodies are all JSON
    return Starlette(
        routes=[
            *kserve_http.routes(engine, limit, settings.limits),
            *repository_http.routes(engine),
            *openai_http.routes(engine, json_limit),
            *openai_llm.routes(engine, json_limit),
            *openai_lora.routes(engine, json_limit),
            *(metrics_http.routes(engine) if settings.metrics else ()),
            *(dashboard.routes(engine) if settings.metrics else ()),
            *openapi.routes(auth is not None and auth.enabled, settings.open_metrics),
        ],
        exception_handlers={HTTPException: http_error, ClientDisconnected: client_gone},
        lifespan=lifespan,
        middleware=[
            Middleware(
                AuthMiddleware,
                auth=auth or Authenticator(None, tenants=settings.tenant_names),
                open_metrics=settings.open_metrics,
            )
        ],
    )


def build_metrics_app(engine: Engine, settings: ServerSettings, auth: Authenticator) -> Starlette:
    """The app on --metrics-port: /metrics alone, behind the same keys as the main port."""
    return Starlette(
        routes=metrics_http.routes(engine),
        middleware=[Middleware(AuthMiddleware, auth=auth, open_metrics=settings.open_metrics)],
    )


def connection_options(settings: ServerSettings) -> dict[str, Any]:
    """uvicorn settings for every HTTP listener: the guarded protocol (header deadline,
    connection cap, header size), the keep-alive idle timeout, and proxy headers only from
    --forwarded-allow-ips (uvicorn's default trusts X-Forwarded-For from 127.0.0.1, so any
    local process could pose as any address to the failure limiter)."""
    from edgeinfer.server.connections import guarded_protocol  # imports uvicorn

    proxies = settings.forwarded_networks
    return {
        "http": guarded_protocol(
            settings.header_timeout_s, settings.max_connections, settings.max_header_bytes
        ),
        "timeout_keep_alive": settings.keep_alive_s,
        "proxy_headers": bool(proxies),
        "forwarded_allow_ips": proxies or None,
    }


class _SideServer:
    """A second HTTP listener in the main server's event loop. The main uvicorn server owns the
    signals; this one is stopped from its lifespan."""

    def __init__(self, app: Starlette, settings: ServerSettings, port: int) -> None:
        import uvicorn

        class Quiet(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        try:  # bind first: a taken port is a one-line error before any model loads
            family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
            self._sock = socket.create_server((settings.host, port), family=family)
        except OSError as e:
            raise ConfigError(f"--metrics-port {port}: {e.strerror}") from None
        self._server = Quiet(
            uvicorn.Config(
                app,
                ssl_certfile=settings.tls_cert or None,
                ssl_keyfile=settings.tls_key or None,
                log_level=settings.log_level.lower(),
                access_log=False,
                lifespan="off",
                loop="none",
                **connection_options(settings),
            )
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
        self._sock.close()


async def serve(settings: ServerSettings, repository: Repository) -> None:
    from edgeinfer.telemetry.tracing import from_endpoint

    auth = _authenticator(settings)
    tracer = from_endpoint(settings.otlp_endpoint)  # None unless --otlp-endpoint is set
    engine = Engine(repository, settings, tracer)
    engine.register_collector(
        CountersCollector(
            "edgeinfer_auth_failures",
            "Rejected authentication attempts",
            "reason",
            lambda: auth.failures,
        )
    )
    if not settings.metrics:
        log.warning(
            "--no-metrics: no /metrics or /dashboard, and a newly swapped-in version is "
            "not watched for automatic rollback"
        )
    side = (
        _SideServer(build_metrics_app(engine, settings, auth), settings, settings.metrics_port)
        if settings.metrics_port
        else None
    )
    fleet = None
    if settings.registry:
        from edgeinfer.registry import FleetAgent

        fleet = FleetAgent.from_settings(engine, settings)
        fleet.prime()  # last known desired state, before the engine loads anything
    await engine.start()
    _freeze_startup_heap()
    if fleet is not None:
        fleet.start()
    grpc_server = None
    if settings.grpc_port:
        from edgeinfer.server.kserve_grpc import start_grpc

        grpc_server = await start_grpc(engine, settings, auth)
    if side is not None:
        side.start()
    lifespan = _lifespan(engine, tracer, side, fleet, grpc_server)
    server = _http_server(build_app(engine, settings, lifespan, auth), settings, engine)
    log.info(
        "edgeinfer serving %s on %s://%s:%d%s%s%s",
        repository.root,
        "https" if settings.tls_cert else "http",
        settings.host,
        settings.http_port,
        f" and grpc {settings.host}:{settings.grpc_port}" if grpc_server else "",
        f", metrics on port {settings.metrics_port}" if side else "",
        f"; traces to {settings.otlp_endpoint}" if tracer else "",
    )
    await server.serve()


def _authenticator(settings: ServerSettings) -> Authenticator:
    auth = Authenticator(
        KeyStore.load(Path(settings.api_keys)) if settings.api_keys else None,
        tenants=settings.tenant_names,
    )
    if not auth.enabled:
        log.warning(
            "no API keys configured: anyone who can reach %s may use every route (see --api-keys)",
            settings.host,
        )
    return auth


def _lifespan(
    engine: Engine,
    tracer: Tracer | None,
    side: _SideServer | None,
    fleet: FleetAgent | None,
    grpc_server: grpc.aio.Server | None,
) -> Lifespan:
    """Stops, in order, what serve() started; uvicorn runs it once HTTP has drained."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # uvicorn runs this exit after HTTP has drained and before it re-raises SIGTERM, so
        # gRPC gets its grace period and the engine is closed on every kind of shutdown.
        try:
            yield
        finally:
            # Every step has a deadline: a stuck one is left behind with a warning.
            if side is not None:
                await within(10.0, "stopping the metrics listener", side.stop())
            if fleet is not None:
                await fleet.close()  # revokes the status lease: the device leaves at once
            if grpc_server is not None:
                await within(10.0, "stopping gRPC", grpc_server.stop(grace=5))
            await engine.close()
            if tracer is not None:  # flushes buffered spans
                await within(10.0, "flushing traces", asyncio.to_thread(tracer.shutdown))

    return lifespan


def _http_server(app: Starlette, settings: ServerSettings, engine: Engine) -> uvicorn.Server:
    """The main uvicorn server; it owns the signals."""
    import uvicorn

    config = uvicorn.Config(
        app,
        ssl_certfile=settings.tls_cert or None,
        ssl_keyfile=settings.tls_key or None,
        host=settings.host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="on",
        loop="none",
        timeout_graceful_shutdown=10,
        **connection_options(settings),
    )
    loop = asyncio.get_running_loop()

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Open LLM streams would hold uvicorn's drain for timeout_graceful_shutdown. This
            # may run in a signal handler: the work is queued, never done here.
            loop.call_soon_threadsafe(engine.end_generations)
            super().handle_exit(sig, frame)

    return Server(config)


def _freeze_startup_heap() -> None:
    """Move what start-up built (modules, the app, the models loaded so far: ~60k objects) out of
    the garbage collector's reach, and let young objects pile up a little longer before a
    collection. Rescanning that heap cost ~10 % of the CPU of a tiny model's request; freezing
    it and collecting less often gave the MLP 8-12 % more req/s on 2 cores (paired runs). Only
    cyclic garbage among the frozen objects is never freed; reference counting still frees the
    rest."""
    start = time.perf_counter()
    gc.collect()
    gc.freeze()
    gc.set_threshold(2000, 10, 100)
    log.info(
        "froze %d start-up objects in %.0f ms",
        gc.get_freeze_count(),
        (time.perf_counter() - start) * 1e3,
    )


def run(settings: ServerSettings, repository: Repository) -> None:
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # uvloop is optional (not on Windows)
        factory = None
    # uvicorn turns SIGINT/SIGTERM into a graceful shutdown of both servers.
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(settings, repository))

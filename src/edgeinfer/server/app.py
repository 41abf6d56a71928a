"""Builds the HTTP app and runs HTTP and gRPC in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from edgeinfer.auth import Authenticator, KeyStore
from edgeinfer.config import ServerSettings
from edgeinfer.lifecycle import Engine
from edgeinfer.repository import Repository
from edgeinfer.server import kserve_http, metrics_http, openai_http
from edgeinfer.server.auth_http import AuthMiddleware
from edgeinfer.server.http_common import json_response
from edgeinfer.telemetry.metrics import CountersCollector

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
        detail = {404: f"no route {request.method} {request.url.path}",
                  405: f"method {request.method} not allowed on {request.url.path}"}  # fmt: skip
        return json_response({"error": detail.get(exc.status_code, exc.detail)}, exc.status_code)

    limit = settings.max_request_bytes
    return Starlette(
        routes=[
            *kserve_http.routes(engine, limit, settings.limits),
            *openai_http.routes(engine, limit),
            *metrics_http.routes(engine),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
        middleware=[
            Middleware(
                AuthMiddleware, auth=auth or Authenticator(None), open_metrics=settings.open_metrics
            )
        ],
    )


async def serve(settings: ServerSettings, repository: Repository) -> None:
    import uvicorn

    auth = Authenticator(KeyStore.load(Path(settings.api_keys)) if settings.api_keys else None)
    if not auth.enabled:
        log.warning("no API keys configured: anyone who can reach %s may use every route "
                    "(see --api-keys)", settings.host)  # fmt: skip
    engine = Engine(repository, settings)
    engine.register_collector(
        CountersCollector(
            "edgeinfer_auth_failures",
            "Rejected authentication attempts",
            "reason",
            lambda: auth.failures,
        )
    )
    await engine.start()
    grpc_server = None
    if settings.grpc_port:
        from edgeinfer.server.kserve_grpc import start_grpc

        grpc_server = await start_grpc(engine, settings, auth)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # uvicorn runs this exit after HTTP has drained and before it re-raises SIGTERM, so
        # gRPC gets its grace period and the engine is closed on every kind of shutdown.
        try:
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=5)
            await engine.close()

    config = uvicorn.Config(
        build_app(engine, settings, lifespan, auth),
        ssl_certfile=settings.tls_cert or None,
        ssl_keyfile=settings.tls_key or None,
        host=settings.host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="on",
        loop="none",
        http="httptools",
        timeout_graceful_shutdown=10,
    )
    log.info(
        "edgeinfer serving %s on %s://%s:%d%s",
        repository.root,
        "https" if settings.tls_cert else "http",
        settings.host,
        settings.http_port,
        f" and grpc {settings.host}:{settings.grpc_port}" if grpc_server else "",
    )
    await uvicorn.Server(config).serve()


def run(settings: ServerSettings, repository: Repository) -> None:
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # uvloop is optional (not on Windows)
        factory = None
    # uvicorn turns SIGINT/SIGTERM into a graceful shutdown of both servers.
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(settings, repository))

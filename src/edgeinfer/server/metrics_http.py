"""GET /metrics: Prometheus text exposition."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edgeinfer.lifecycle.interfaces import EngineClient
from edgeinfer.telemetry.metrics import CONTENT_TYPE


def routes(engine: EngineClient) -> list[Route]:
    async def metrics(request: Request) -> Response:
        return Response(engine.metrics(), media_type=CONTENT_TYPE)

    return [Route("/metrics", metrics)]

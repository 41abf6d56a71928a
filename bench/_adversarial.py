"""The soak's `--adversarial` phase: the adversarial test's reproductions
(`edgeinfer.testing.adversarial`: Unicode digits in numeric fields, oversized strings and JSON,
huge and negative shapes, over HTTP and gRPC) sent at random among the normal traffic.

Each must be refused with a 4xx and an error body (any 4xx: the soak's small
--max-request-bytes turns the big ones into 413s early) or a gRPC error other than INTERNAL /
UNKNOWN; a 5xx is counted as one, anything else as a broken reply.
"""

from __future__ import annotations

import random
from typing import Any

import httpx

from edgeinfer.testing.adversarial import (
    GrpcCase,
    HttpCase,
    Target,
    grpc_cases,
    header_bytes,
    http_cases,
)

GRPC_WRONG = ("INTERNAL", "UNKNOWN", "OK")


class Adversary:
    def __init__(self, target: Target, grpc_addr: str, big_share: float = 0.05) -> None:
        self.http = http_cases(target)
        self.grpc = grpc_cases(target)
        self.grpc_addr, self.big_share = grpc_addr, big_share
        self._stub: Any = None

    def _pick_http(self) -> HttpCase:
        big = random.random() < self.big_share
        pool = [c for c in self.http if c.big == big] or self.http
        return random.choice(pool)

    async def http_case(self, c: httpx.AsyncClient, broken: type[Exception]) -> str:
        case = self._pick_http()
        try:
            headers = header_bytes(case.headers)  # httpx would refuse '²' as str
            r = await c.request(case.method, case.path, content=case.body(), headers=headers)
        except httpx.TransportError:
            if not case.big:
                raise
            return "error:closed"  # a 413 closes the connection while a big body is going
        if r.status_code >= 500:
            return f"5xx:{r.status_code}|{case.name}: {r.text[:200]}"
        if r.status_code < 400:
            raise broken(f"{case.name}: answered {r.status_code}, want a 4xx")
        try:
            r.json()["error"]
        except (ValueError, KeyError, TypeError) as e:
            raise broken(f"{case.name}: {r.status_code} without an error body") from e
        return f"error:{r.status_code}"

    async def grpc_case(self, broken: type[Exception]) -> str:
        import grpc
        from tritonclient.grpc import service_pb2_grpc

        if self._stub is None:
            options = [("grpc.max_send_message_length", -1)]
            channel = grpc.aio.insecure_channel(self.grpc_addr, options=options)
            self._stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        case: GrpcCase = random.choice(self.grpc)
        try:
            await getattr(self._stub, case.rpc)(case.request(), timeout=30)
        except grpc.aio.AioRpcError as e:
            code = e.code().name
        else:
            code = "OK"
        if code in ("INTERNAL", "UNKNOWN"):
            return f"5xx:{code}|{case.name}"
        if code == "OK":
            raise broken(f"gRPC {case.name}: accepted, want an error")
        return f"error:{code}"

"""HTTP authentication: a pure ASGI middleware in front of every route."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from edgeinfer.auth import TENANT_IDENTITY, Authenticator, Principal, Unauthenticated, bearer
from edgeinfer.errors import EdgeInferError
from edgeinfer.server.http_common import error_response

_OPEN = {"/v2/health/live", "/v2/health/ready", "/openapi.json"}
_OBSERVE = ("/metrics", "/dashboard", "/v2/dashboard/data")
_ADMIN_V1 = {"/v1/load_lora_adapter", "/v1/unload_lora_adapter"}
TENANT_HEADER = b"tenant"
_IDENTITY = TENANT_IDENTITY.encode()


def required_role(method: str, path: str, open_metrics: bool) -> str | None:
    """None: open to anyone; else the role a key needs."""
    if path in _OPEN or (open_metrics and path.startswith(_OBSERVE)):
        return None
    if path.startswith("/v2/repository/models/") and method == "POST":
        return "admin"
    if path in _ADMIN_V1 or path.endswith("/profile"):
        return "admin"
    return "infer"


def with_tenant(
    headers: list[tuple[bytes, bytes]], auth: Authenticator, principal: Principal | None
) -> list[tuple[bytes, bytes]]:
    """The headers with the tenant identity the request acts as (and nothing a client sent
    under that name). A tenant-bound key also replaces the `tenant` header: the key decides."""
    bound = principal is not None and principal.tenant is not None
    if not bound and not any(k in (TENANT_HEADER, _IDENTITY) for k, _ in headers):
        return headers  # the common case: nothing to change, nothing to copy
    claimed = next((v.decode("latin-1") for k, v in headers if k == TENANT_HEADER), None)
    tenant = auth.tenant(principal, claimed)
    out = [(k, v) for k, v in headers if k != _IDENTITY and not (bound and k == TENANT_HEADER)]
    if tenant is not None:
        out.append((_IDENTITY, tenant.encode()))
        if bound:
            out.append((TENANT_HEADER, tenant.encode()))
    return out


class AuthMiddleware:
    def __init__(self, app: ASGIApp, auth: Authenticator, open_metrics: bool) -> None:
        self.app, self.auth, self.open_metrics = app, auth, open_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        principal = None
        if self.auth.enabled:
            token = bearer(
                next((v.decode("latin-1") for k, v in headers if k == b"authorization"), None)
            )
            client = (scope.get("client") or ("unknown", 0))[0]
            needed = required_role(scope["method"], scope["path"], self.open_metrics)
            try:
                principal = self.auth.check(token, needed, client)
            except EdgeInferError as e:
                response = error_response(e)
                if isinstance(e, Unauthenticated):
                    response.headers["WWW-Authenticate"] = 'Bearer realm="edgeinfer"'
                await response(scope, receive, send)
                return
        tenant_headers = with_tenant(headers, self.auth, principal)
        if tenant_headers is not headers:
            scope = dict(scope)
            scope["headers"] = tenant_headers
        await self.app(scope, receive, send)

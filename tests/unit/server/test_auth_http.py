"""The tenant identity the HTTP edge hands to the handlers."""

from __future__ import annotations

from edgeinfer.auth import Authenticator, Principal
from edgeinfer.server.auth_http import required_role, with_tenant

AUTH = Authenticator(None, tenants=frozenset({"acme"}))


def identity(headers: list[tuple[bytes, bytes]], principal: Principal | None = None) -> list:
    return [v for k, v in with_tenant(headers, AUTH, principal) if k == b"x-edgeinfer-tenant"]


def test_only_configured_tenants_or_keys_set_the_identity() -> None:
    assert identity([(b"tenant", b"acme")]) == [b"acme"]
    assert identity([(b"tenant", b"x" * 4096)]) == []
    assert identity([(b"tenant", b"globex")], Principal("k", "infer", "globex")) == [b"globex"]
    assert identity([(b"tenant", b"acme")], Principal("k", "infer", "globex")) == [b"globex"]


def test_a_client_sent_identity_header_is_dropped() -> None:
    assert identity([(b"x-edgeinfer-tenant", b"acme")]) == []
    headers = with_tenant([(b"x-edgeinfer-tenant", b"a"), (b"tenant", b"t7")], AUTH, None)
    assert headers == [(b"tenant", b"t7")]  # the routing key is left as sent


def test_a_tenant_bound_key_replaces_the_tenant_header() -> None:
    headers = with_tenant([(b"tenant", b"acme")], AUTH, Principal("k", "infer", "globex"))
    assert sorted(headers) == [(b"tenant", b"globex"), (b"x-edgeinfer-tenant", b"globex")]


def test_metrics_need_a_key_unless_open() -> None:
    assert required_role("GET", "/metrics", open_metrics=False) == "infer"
    assert required_role("GET", "/metrics", open_metrics=True) is None
    assert required_role("GET", "/v2/health/ready", open_metrics=False) is None

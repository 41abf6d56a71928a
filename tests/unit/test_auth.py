"""The failure limiter and the tenant policy, with a fake clock."""

from __future__ import annotations

import pytest

from edgeinfer.auth import (
    Authenticator,
    FailureLimiter,
    KeyStore,
    PermissionDenied,
    Principal,
    TooManyAttempts,
    Unauthenticated,
    address_bucket,
    hash_key,
)

ADMIN, INFER = "ei_admin_key_0123456789", "ei_infer_key_0123456789"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def authenticator(clock: Clock, tenants: frozenset[str] = frozenset()) -> Authenticator:
    store = KeyStore(
        [
            (hash_key(ADMIN), Principal("ops", "admin")),
            (hash_key(INFER), Principal("acme", "infer", "acme")),
        ]
    )
    return Authenticator(store, FailureLimiter(limit=10, window_s=60, clock=clock), tenants)


def fail(auth: Authenticator, token: str | None, client: str) -> type[Exception]:
    with pytest.raises((Unauthenticated, TooManyAttempts)) as e:
        auth.check(token, "infer", client)
    return e.type


def test_valid_keys_are_never_refused_by_the_failure_limiter() -> None:
    clock = Clock()
    auth = authenticator(clock)
    results = [fail(auth, f"guess{i}", "127.0.0.1") for i in range(15)]
    assert results[:10] == [Unauthenticated] * 10 and set(results[10:]) == {TooManyAttempts}
    assert auth.check(ADMIN, "admin", "127.0.0.1") == Principal("ops", "admin")
    assert auth.check(INFER, "infer", "127.0.0.1") is not None
    clock.now += 10
    with pytest.raises(TooManyAttempts) as e:  # wrong keys stay throttled
        auth.check(None, "infer", "127.0.0.1")
    assert e.value.retry_after == pytest.approx(50)  # until the first failure leaves the window
    assert auth.failures["limited"] == 6
    clock.now += 51
    assert fail(auth, "guess", "127.0.0.1") is Unauthenticated  # the window has passed


def test_failures_count_per_address_and_per_key_prefix() -> None:
    auth = authenticator(Clock())
    for i in range(10):
        fail(auth, f"wrong{i:02d}", "10.0.0.1")
    assert fail(auth, "other", "10.0.0.2") is Unauthenticated  # another address is not held up
    # One key prefix tried from many addresses is throttled as one.
    for i in range(10):
        fail(auth, "ei_samepfx_0" + str(i), f"10.1.0.{i}")
    assert fail(auth, "ei_samepfx_0x", "10.1.0.99") is TooManyAttempts
    assert fail(auth, "ei_otherpfx", "10.1.0.99") is Unauthenticated


def test_ipv6_addresses_count_per_64_network() -> None:
    auth = authenticator(Clock())
    for i in range(10):
        fail(auth, f"k{i}", f"2001:db8::{i + 1:x}")
    assert fail(auth, "k", "2001:db8::ffff") is TooManyAttempts
    assert fail(auth, "k", "2001:db8:0:1::1") is Unauthenticated
    assert address_bucket("::ffff:127.0.0.1") == "127.0.0.1"
    assert address_bucket("unknown") == "unknown"


def test_limiter_memory_is_bounded() -> None:
    limiter = FailureLimiter(limit=1, max_clients=100, clock=Clock())
    for i in range(1000):
        limiter.failed([f"a{i}"])
    assert len(limiter._failures) == 100


def test_role_is_checked_after_the_key() -> None:
    auth = authenticator(Clock())
    with pytest.raises(PermissionDenied):
        auth.check(INFER, "admin", "127.0.0.1")


def test_tenant_comes_from_the_key_or_the_configured_list() -> None:
    auth = authenticator(Clock(), tenants=frozenset({"globex"}))
    bound, unbound = Principal("k", "infer", "acme"), Principal("ops", "admin")
    assert auth.tenant(bound, "globex") == "acme"  # the key decides
    assert auth.tenant(unbound, "globex") == "globex"  # configured
    assert auth.tenant(unbound, "acme") is None  # another key's tenant: not claimable
    assert auth.tenant(None, "x" * 4096) is None
    assert auth.tenant(None, None) is None

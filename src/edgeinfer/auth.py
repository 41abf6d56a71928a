"""API keys with roles (and optional tenants), hashed at rest, compared in constant time.

Key file (TOML), written by `edgeinfer keys create`:

    [[keys]]
    name = "ops laptop"
    role = "admin"            # admin: everything; infer: inference, metadata, model lists
    sha256 = "9f86d08..."     # of the key; the key itself is shown once and never stored
    tenant = "acme"           # optional: requests are routed and isolated as this tenant
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
import tomllib
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from edgeinfer.config import ConfigError
from edgeinfer.errors import EdgeInferError

ROLES = ("infer", "admin")
KEY_PREFIX = "ei_"
# The tenant a request acts as, set by the server's edge (auth_http, kserve_grpc) after the
# policy in `Authenticator.tenant`; a client-sent copy is always dropped. The client's own
# `tenant` header stays as it was sent: it still keys sticky canary routing.
TENANT_IDENTITY = "x-edgeinfer-tenant"


class Unauthenticated(EdgeInferError):
    """No credentials, or credentials that match no key (HTTP 401)."""


class PermissionDenied(EdgeInferError):
    """A valid key whose role does not allow the call (HTTP 403)."""


class TooManyAttempts(EdgeInferError):
    """Too many failed attempts from this address (HTTP 429)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    tenant: str | None = None

    def allows(self, needed: str) -> bool:
        return self.role == "admin" or needed == self.role


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyStore:
    def __init__(self, entries: list[tuple[str, Principal]]) -> None:
        self._entries = entries  # (sha256 hex, principal)

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def load(cls, path: Path) -> KeyStore:
        try:
            doc = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"--api-keys {path}: no such file") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"--api-keys {path}: not valid TOML: {e}") from e
        entries = []
        for i, raw in enumerate(doc.get("keys", [])):
            digest, role = raw.get("sha256", ""), raw.get("role", "")
            if len(digest) != 64 or role not in ROLES:
                raise ConfigError(
                    f"--api-keys {path}: key #{i + 1} needs sha256 = <64 hex> and role = "
                    f"one of {ROLES}"
                )
            entries.append(
                (digest.lower(), Principal(raw.get("name", f"key{i + 1}"), role, raw.get("tenant")))
            )
        if not entries:
            raise ConfigError(f"--api-keys {path}: no [[keys]] entries")
        return cls(entries)

    def authenticate(self, key: str) -> Principal | None:
        """The principal for `key`; every entry is compared so timing reveals nothing."""
        digest = hash_key(key)
        found = None
        for stored, principal in self._entries:
            if hmac.compare_digest(stored, digest):
                found = principal
        return found


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


KEY_BUCKET_CHARS = 12  # failures are also counted per presented key's first characters


def address_bucket(client: str) -> str:
    """The bucket an address's failures count in: the address itself, or its /64 for IPv6 (one
    host usually holds a whole /64, so single IPv6 addresses are free to rotate)."""
    try:
        ip = ipaddress.ip_address(client)
    except ValueError:
        return client
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class FailureLimiter:
    """At most `limit` failed attempts per bucket (a client address, a presented key's prefix)
    per `window_s`; then further failures get 429 until the window has passed. Bounded memory:
    the least recently failing buckets are forgotten."""

    def __init__(
        self,
        limit: int = 10,
        window_s: float = 60.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit, self.window_s, self.max_clients = limit, window_s, max_clients
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self.count = 0

    def _recent(self, bucket: str) -> deque[float]:
        q = self._failures.get(bucket)
        if q is None:
            return deque()
        cutoff = self._clock() - self.window_s
        while q and q[0] < cutoff:
            q.popleft()
        return q

    def check(self, buckets: list[str], client: str) -> None:
        for bucket in buckets:
            q = self._recent(bucket)
            if len(q) >= self.limit:
                raise TooManyAttempts(
                    f"too many failed authentication attempts from {client}; retry later",
                    retry_after=max(1.0, q[0] + self.window_s - self._clock()),
                )

    def failed(self, buckets: list[str]) -> None:
        self.count += 1
        now = self._clock()
        for bucket in buckets:
            q = self._recent(bucket)
            q.append(now)
            self._failures[bucket] = q
            self._failures.move_to_end(bucket)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)


class Authenticator:
    """What both servers ask: who is this, and may they do this?

    The key is checked first: a valid key is never refused by the failure limiter, so a flood
    of wrong keys from a shared address (or a forged one) cannot lock out the real clients.
    Only failures are throttled, per address and per presented key prefix. `tenants`: the
    tenant names a request without a tenant-bound key may claim by header."""

    def __init__(
        self,
        store: KeyStore | None,
        limiter: FailureLimiter | None = None,
        tenants: frozenset[str] = frozenset(),
    ) -> None:
        self.store = store
        self.limiter = limiter or FailureLimiter()
        self.tenants = tenants
        self.failures: dict[str, int] = {"missing": 0, "invalid": 0, "forbidden": 0, "limited": 0}

    @property
    def enabled(self) -> bool:
        return self.store is not None

    def check(self, token: str | None, needed: str | None, client: str) -> Principal | None:
        """Raise Unauthenticated / PermissionDenied / TooManyAttempts, or return the principal
        (None when auth is off or the route is open)."""
        if self.store is None or needed is None:
            return None
        principal = self.store.authenticate(token) if token is not None else None
        if principal is None:
            self._refuse(token, client)
        if not principal.allows(needed):
            self.failures["forbidden"] += 1
            raise PermissionDenied(
                f"key '{principal.name}' has role '{principal.role}'; this call needs '{needed}'"
            )
        return principal

    def _refuse(self, token: str | None, client: str) -> NoReturn:
        buckets = [address_bucket(client)]
        if token is not None:
            buckets.append("key:" + token[:KEY_BUCKET_CHARS])
        try:
            self.limiter.check(buckets, client)
        except TooManyAttempts:
            self.failures["limited"] += 1
            raise
        self.limiter.failed(buckets)
        if token is None:
            self.failures["missing"] += 1
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        self.failures["invalid"] += 1
        raise Unauthenticated("invalid API key")

    def tenant(self, principal: Principal | None, claimed: str | None) -> str | None:
        """The tenant a request acts as: its key's, else a claimed one only if configured
        (`--tenants`). Anything else acts as no tenant, so a client cannot take another
        tenant's adapter grants, and metric labels stay bounded by configuration."""
        if principal is not None and principal.tenant is not None:
            return principal.tenant
        return claimed if claimed is not None and claimed in self.tenants else None

"""The server's settings (every field is a `serve` flag and an EDGEINFER_* variable) and the
request limits the decoders enforce."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path

from edgeinfer.config.model import ConfigError

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
GRPC_MAX_MESSAGE_BYTES = 2**31 - 1  # grpcio takes message limits as a C int
MAX_TIMEOUT_S = 86400.0


@dataclass(frozen=True)
class Limits:
    """Request limits enforced by the decoders before anything is allocated."""

    max_tensors: int = 64
    max_rank: int = 16
    max_elements: int = 1 << 28  # per tensor: 1 GiB of FP32
    max_string_bytes: int = 1 << 20  # per BYTES element
    max_image_bytes: int = 32 << 20  # per encoded image (a BYTES element of an [image] input)
    max_json_bytes: int = 1 << 20  # a JSON body or binary-extension header (parsed holding the GIL)

    @property
    def max_element_bytes(self) -> int:
        """The longest BYTES element a decoder accepts before it knows the model."""
        return max(self.max_string_bytes, self.max_image_bytes)


def edgeinfer_home() -> Path:
    """Where edgeinfer keeps caches: `$EDGEINFER_HOME`, else `~/.cache/edgeinfer`."""
    home = os.environ.get("EDGEINFER_HOME")
    return Path(home) if home else Path.home() / ".cache" / "edgeinfer"


def _env(name: str, default: str) -> str:
    return os.environ.get(f"EDGEINFER_{name.upper()}", default)


def _check_connection_limits(s: ServerSettings) -> None:
    # grpcio takes them in milliseconds as a C int: a day is far beyond any useful timeout
    if not 0 < s.header_timeout_s <= MAX_TIMEOUT_S or not 0 < s.keep_alive_s <= MAX_TIMEOUT_S:
        raise ConfigError(
            f"--header-timeout-s and --keep-alive-s must be > 0 and at most {MAX_TIMEOUT_S:g} seconds"
        )
    if s.max_connections < 1:
        raise ConfigError("--max-connections must be at least 1")
    if s.max_header_bytes < 1024:
        raise ConfigError("--max-header-bytes must be at least 1024")


@dataclass(frozen=True)
class ServerSettings:
    """Process-wide settings. Each field is a CLI flag (--http-port) and an env var
    (EDGEINFER_HTTP_PORT); the flag wins."""

    repository: Path | None = field(
        default=None,
        metadata={"help": "model repository folder (<model>/config.toml, <model>/<N>/)"},
    )
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind"})
    http_port: int = field(default=8000, metadata={"help": "HTTP port (KServe v2, OpenAI)"})
    grpc_port: int = field(default=8001, metadata={"help": "gRPC port (KServe v2); 0 disables"})
    metrics_port: int = field(
        default=0, metadata={"help": "also serve /metrics on this port; 0: only on --http-port"}
    )
    log_level: str = field(default="info", metadata={"help": "debug | info | warning | error"})
    max_request_bytes: int = field(
        default=64 * 1024 * 1024, metadata={"help": "largest request body accepted (413 above)"}
    )
    # grpcio receives a unary message into one bytes object on the event loop (~1.5-4 ms per MB
    # on a 2-core VM): this bound keeps that stall, which health checks wait out, under ~50 ms.
    max_grpc_message_bytes: int = field(
        default=16 * 1024 * 1024,
        metadata={
            "help": "largest gRPC message accepted (RESOURCE_EXHAUSTED above; at most "
            "--max-request-bytes); raise it for bigger tensors, or send them over HTTP"
        },
    )
    model_control: str = field(
        default="explicit",
        metadata={
            "help": "poll: reload when the repository changes (default with --demo); explicit: "
            "only the API/CLI loads; none: load at start, API disabled (like Triton)"
        },
    )
    load_models: tuple[str, ...] = field(
        default=("*",), metadata={"help": "models to load at start ('*' = all)"}
    )
    hardware_root: str = field(
        default="/", metadata={"help": "where to read sysfs/procfs (a fake tree in tests)"}
    )
    memory_budget_mb: int = field(
        default=0,
        metadata={
            "help": "bytes all models may use, in MB; 0: the cgroup limit or available "
            "memory minus a safety margin"
        },
    )
    adapter_budget_mb: int = field(
        default=0,
        metadata={
            "help": "bytes resident LoRA adapters may use, in MB (idle ones are evicted "
            "least recently used first); 0: share --memory-budget-mb with the models"
        },
    )
    temp_soft_c: float = field(
        default=70.0, metadata={"help": "CPU temperature where the server starts backing off"}
    )
    temp_hard_c: float = field(
        default=85.0, metadata={"help": "CPU temperature where capacity reaches its floor"}
    )
    api_keys: str = field(
        default="", metadata={"help": "TOML file of hashed API keys with roles (edgeinfer keys)"}
    )
    insecure: bool = field(
        default=False,
        metadata={"help": "allow binding a non-loopback address without API keys"},
    )
    open_metrics: bool = field(
        default=False,
        metadata={
            "help": "with --api-keys: serve /metrics and /dashboard without a key "
            "(they show tenant and adapter names)"
        },
    )
    tenants: str = field(
        default="",
        metadata={
            "help": "comma-separated tenants a request may name in its 'tenant' header "
            "when its key names none (or without keys); other names act as no tenant "
            'and count under tenant="" in /metrics'
        },
    )
    adapter_dirs: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "directories the LoRA load API may read adapters from (besides each "
            "model's adapters/ folder)"
        },
    )
    forwarded_allow_ips: str = field(
        default="",
        metadata={
            "help": "comma-separated proxy addresses or networks whose X-Forwarded-For/"
            "-Proto headers are trusted ('*': any); empty: never trusted"
        },
    )
    header_timeout_s: float = field(
        default=10.0,
        metadata={
            "help": "seconds a client has to send a request's line and headers (from "
            "connecting, or from the first byte on a kept-alive connection); then 408 "
            "and the connection is closed"
        },
    )
    keep_alive_s: float = field(
        default=5.0, metadata={"help": "seconds an idle kept-alive HTTP connection stays open"}
    )
    max_connections: int = field(
        default=512,
        metadata={"help": "most open HTTP connections; more are answered 503 and closed"},
    )
    max_header_bytes: int = field(
        default=64 * 1024,
        metadata={"help": "largest request line plus headers (431 and closed above)"},
    )
    metrics: bool = field(
        default=True,
        metadata={
            "help": "record per-request statistics, serve /metrics and /dashboard; off: "
            "neither page, /v2/models/{m}/stats stays at zero, no post-swap health watch"
        },
    )
    tls_cert: str = field(default="", metadata={"help": "PEM certificate: HTTPS and gRPC TLS"})
    tls_key: str = field(default="", metadata={"help": "PEM private key for --tls-cert"})
    max_tensors: int = field(default=64, metadata={"help": "most tensors in one request"})
    max_rank: int = field(default=16, metadata={"help": "highest tensor rank accepted"})
    max_elements: int = field(
        default=1 << 28,
        metadata={"help": "most elements in one tensor (checked before allocating)"},
    )
    max_string_bytes: int = field(
        default=1 << 20, metadata={"help": "longest BYTES element / string accepted"}
    )
    max_image_bytes: int = field(
        default=32 << 20,
        metadata={"help": "longest encoded image accepted by a model's [image] input"},
    )
    max_json_bytes: int = field(
        default=Limits.max_json_bytes,
        metadata={
            "help": "largest JSON body (or binary-extension JSON header); parsing holds "
            "the GIL, so this bounds the stall one request can cause (413 above); "
            "binary tensors may use all of --max-request-bytes"
        },
    )
    registry: str = field(
        default="",
        metadata={
            "help": "desired state for a fleet: etcd://HOST:2379/PREFIX[?ttl=10]; empty: "
            "the repository alone decides"
        },
    )
    device_id: str = field(
        default="", metadata={"help": "this device's name in the fleet (default: the hostname)"}
    )
    device_group: str = field(
        default="default", metadata={"help": "the fleet group whose desired state this follows"}
    )
    overrides: tuple[str, ...] = field(
        default=(),
        metadata={"help": "per-model config overrides MODEL.KEY=VALUE (env: space-separated)"},
    )
    otlp_endpoint: str = field(
        default="",
        metadata={
            "help": "send OpenTelemetry traces to this OTLP/HTTP collector, e.g. "
            "http://127.0.0.1:4318 (needs the 'tracing' extra); empty: tracing off"
        },
    )

    def __post_init__(self) -> None:
        for port_name in ("http_port", "grpc_port", "metrics_port"):
            port = getattr(self, port_name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"--{port_name.replace('_', '-')} must be in 0..65535")
        if self.metrics_port and not self.metrics:
            raise ConfigError("--metrics-port needs metrics on (drop --no-metrics)")
        if self.metrics_port and self.metrics_port in (self.http_port, self.grpc_port):
            raise ConfigError("--metrics-port must differ from --http-port and --grpc-port")
        if self.model_control not in ("none", "explicit", "poll"):
            raise ConfigError("--model-control must be 'none', 'explicit' or 'poll'")
        if not 1024 <= self.max_grpc_message_bytes <= GRPC_MAX_MESSAGE_BYTES:
            raise ConfigError(f"--max-grpc-message-bytes must be in 1024..{GRPC_MAX_MESSAGE_BYTES}")
        if min(self.max_request_bytes, self.max_json_bytes) < 1024:
            raise ConfigError("--max-request-bytes and --max-json-bytes must be at least 1024")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together")
        if not self.api_keys and not self.insecure and self.host not in _LOOPBACK:
            raise ConfigError(
                f"refusing to serve on {self.host} without API keys: give --api-keys FILE "
                "(see `edgeinfer keys create`), bind 127.0.0.1, or pass --insecure"
            )
        if self.memory_budget_mb < 0:
            raise ConfigError("--memory-budget-mb must be >= 0 (0 = automatic)")
        if self.adapter_budget_mb < 0:
            raise ConfigError("--adapter-budget-mb must be >= 0 (0 = share the model budget)")
        if not self.temp_soft_c < self.temp_hard_c:
            raise ConfigError("--temp-soft-c must be below --temp-hard-c")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("--log-level must be debug, info, warning or error")
        if self.registry and not self.registry.startswith("etcd://"):
            raise ConfigError("--registry must be etcd://HOST:PORT/PREFIX (or empty)")
        if self.registry and self.model_control == "none":
            raise ConfigError("--registry drives model changes: use --model-control explicit")
        if "/" in self.device_group or "/" in self.device_id or not self.device_group:
            raise ConfigError("--device-id and --device-group must be non-empty names without '/'")
        _check_connection_limits(self)
        _ = self.tenant_names, self.forwarded_networks  # both raise ConfigError when malformed
        if self.otlp_endpoint and not self.otlp_endpoint.startswith(("http://", "https://")):
            raise ConfigError(
                "--otlp-endpoint must be an http:// or https:// URL, e.g. http://127.0.0.1:4318"
            )

    @property
    def tenant_names(self) -> frozenset[str]:
        names = frozenset(t.strip() for t in self.tenants.split(",") if t.strip())
        bad = [t for t in names if len(t) > 128 or not t.isprintable()]
        if bad or len(names) > 10_000:
            raise ConfigError(
                "--tenants: at most 10000 comma-separated printable names of up "
                f"to 128 characters each (bad: {bad[:3]})"
            )
        return names

    @property
    def forwarded_networks(self) -> list[str]:
        """--forwarded-allow-ips as uvicorn takes it (empty: proxy headers off)."""
        out = [a.strip() for a in self.forwarded_allow_ips.split(",") if a.strip()]
        for a in out:
            if a == "*":
                continue
            try:
                ipaddress.ip_network(a, strict=False)
            except ValueError:
                raise ConfigError(
                    f"--forwarded-allow-ips: {a!r} is not an IP address or "
                    "network (e.g. 10.0.0.5 or 10.0.0.0/24), nor '*'"
                ) from None
        return out

    @cached_property
    def limits(self) -> Limits:
        """The request limits, built once (every tensor request reads them)."""
        return Limits(
            self.max_tensors,
            self.max_rank,
            self.max_elements,
            self.max_string_bytes,
            self.max_image_bytes,
            self.max_json_bytes,
        )

    @classmethod
    def env_defaults(cls) -> dict[str, str]:
        """Defaults overridden by EDGEINFER_* environment variables (as strings)."""
        return {
            f.name: _env(f.name, str(f.default))
            for f in fields(cls)
            if f.name not in ("repository", "load_models", "overrides", "adapter_dirs")
        }

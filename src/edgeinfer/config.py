"""Configuration: frozen dataclasses validated when built. Imports nothing from the package.

A model's `config.toml`:

    backend = "onnxruntime"        # the only backend so far
    max_batch_size = 64            # 0: the model has no batch axis
    [version_policy]               # one of: latest = N | specific = [1, 3] | all = true
    latest = 1
    [onnxruntime]
    intra_op_threads = 1
    inter_op_threads = 1
    execution_mode = "sequential"  # or "parallel"
    graph_optimization_level = "all"  # disable | basic | extended | all
    [text]                         # optional: a BYTES input tokenized in the server
    input = "text"
    tokenizer = "tokenizer.json"   # file in the version directory
    max_length = 256
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value is wrong; the message says how to fix it."""


_OPT_LEVELS = ("disable", "basic", "extended", "all")
_EXEC_MODES = ("sequential", "parallel")


@dataclass(frozen=True)
class VersionPolicy:
    kind: str = "latest"  # latest | specific | all
    latest: int = 1
    specific: tuple[int, ...] = ()

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str) -> VersionPolicy:
        keys = set(raw)
        if not keys:
            return cls()
        if len(keys) != 1 or not keys <= {"latest", "specific", "all"}:
            raise ConfigError(
                f"{where}: [version_policy] takes exactly one of latest = N, "
                f"specific = [..] or all = true; got {sorted(keys)}"
            )
        if "latest" in raw:
            n = raw["latest"]
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ConfigError(f"{where}: version_policy.latest must be an integer >= 1")
            return cls(kind="latest", latest=n)
        if "specific" in raw:
            vs = raw["specific"]
            if (
                not isinstance(vs, list)
                or not vs
                or not all(isinstance(v, int) and v > 0 for v in vs)
            ):
                raise ConfigError(
                    f"{where}: version_policy.specific must be a list of positive integers"
                )
            return cls(kind="specific", specific=tuple(sorted(set(vs))))
        if raw["all"] is not True:
            raise ConfigError(f"{where}: version_policy.all must be true")
        return cls(kind="all")

    def select(self, available: list[int]) -> list[int]:
        """The versions this policy serves out of those on disk (ascending)."""
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.specific]
        return ordered[-self.latest :]


@dataclass(frozen=True)
class OrtOptions:
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    execution_mode: str = "sequential"
    graph_optimization_level: str = "all"
    # Spinning threads inflate latency 1.5-1.8x when cores are shared (measured): off by default.
    allow_spinning: bool = False
    # The default arena never shrinks; off costs ~0-10% speed and saves ~30% RSS (measured).
    enable_cpu_mem_arena: bool = False

    def __post_init__(self) -> None:
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ConfigError("onnxruntime thread counts must be >= 0 (0 = runtime default)")
        if self.execution_mode not in _EXEC_MODES:
            raise ConfigError(f"onnxruntime.execution_mode must be one of {_EXEC_MODES}")
        if self.graph_optimization_level not in _OPT_LEVELS:
            raise ConfigError(f"onnxruntime.graph_optimization_level must be one of {_OPT_LEVELS}")


@dataclass(frozen=True)
class TextOptions:
    """A BYTES input that the server tokenizes into input_ids/attention_mask[/token_type_ids]."""

    input: str = "text"
    tokenizer: str = "tokenizer.json"
    max_length: int = 256

    def __post_init__(self) -> None:
        if self.max_length < 1:
            raise ConfigError("text.max_length must be >= 1")


@dataclass(frozen=True)
class ModelConfig:
    name: str
    backend: str = "onnxruntime"
    max_batch_size: int = 64
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    onnxruntime: OrtOptions = field(default_factory=OrtOptions)
    text: TextOptions | None = None
    warmup: bool = True

    def __post_init__(self) -> None:
        if self.backend not in ("onnxruntime",):
            raise ConfigError(f"model {self.name}: unknown backend {self.backend!r}")
        if self.max_batch_size < 0:
            raise ConfigError(f"model {self.name}: max_batch_size must be >= 0")

    @classmethod
    def from_toml(cls, path: Path, name: str) -> ModelConfig:
        try:
            raw = tomllib.loads(path.read_text()) if path.exists() else {}
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from e
        return cls.from_dict(raw, name, str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], name: str, where: str = "config") -> ModelConfig:
        raw = dict(raw)
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        if raw.pop("name", name) != name:
            raise ConfigError(f"{where}: name must match the directory name {name!r}")
        try:
            policy = VersionPolicy.from_dict(raw.pop("version_policy", {}), where)
            ort = OrtOptions(**raw.pop("onnxruntime", {}))
            text_raw = raw.pop("text", None)
            text = TextOptions(**text_raw) if text_raw is not None else None
            return cls(name=name, version_policy=policy, onnxruntime=ort, text=text, **raw)
        except TypeError as e:
            raise ConfigError(f"{where}: {e}") from e


def _env(name: str, default: str) -> str:
    return os.environ.get(f"EDGEINFER_{name.upper()}", default)


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
    log_level: str = field(default="info", metadata={"help": "debug | info | warning | error"})
    max_request_bytes: int = field(
        default=64 * 1024 * 1024, metadata={"help": "largest request body accepted (413 above)"}
    )
    model_control: str = field(
        default="explicit",
        metadata={"help": "explicit: load/unload API enabled; none: API disabled (like Triton)"},
    )
    load_models: tuple[str, ...] = field(
        default=("*",), metadata={"help": "models to load at start ('*' = all)"}
    )

    def __post_init__(self) -> None:
        for port_name in ("http_port", "grpc_port"):
            port = getattr(self, port_name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"--{port_name.replace('_', '-')} must be in 0..65535")
        if self.model_control not in ("none", "explicit"):
            raise ConfigError("--model-control must be 'none' or 'explicit'")
        if self.max_request_bytes < 1024:
            raise ConfigError("--max-request-bytes must be at least 1024")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("--log-level must be debug, info, warning or error")

    @classmethod
    def env_defaults(cls) -> dict[str, str]:
        """Defaults overridden by EDGEINFER_* environment variables (as strings)."""
        return {
            f.name: _env(f.name, str(f.default))
            for f in fields(cls)
            if f.name not in ("repository", "load_models")
        }

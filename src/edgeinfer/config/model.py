"""A model's config.toml as frozen dataclasses, validated when built (the keys and their
meaning: see the package docstring)."""

from __future__ import annotations

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
    # 0: the usable CPUs (cgroup quota, big cores, physical cores) divided among the model's
    # instances; a model alone on the device then uses every core (docs/tune.md).
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    execution_mode: str = "sequential"
    graph_optimization_level: str = "all"
    # Spinning threads inflate latency 1.5-1.8x when cores are shared (measured): off by default.
    allow_spinning: bool = False
    # The default arena never shrinks; off costs ~0-10% speed and saves ~30% RSS (measured).
    enable_cpu_mem_arena: bool = False
    # CPUs the model's threads run on ([] = any; on big.LITTLE the big cores are preferred).
    cpus: tuple[int, ...] = ()
    # Nice value of the model's inference threads (0-19; 0 = as the server). Above 0 the event
    # loop (health, admission, request I/O) runs ahead of inference when every core is busy.
    nice: int = 5

    def __post_init__(self) -> None:
        object.__setattr__(self, "cpus", tuple(self.cpus))
        if any(not isinstance(c, int) or c < 0 for c in self.cpus):
            raise ConfigError("onnxruntime.cpus must be a list of CPU numbers")
        if not isinstance(self.nice, int) or not 0 <= self.nice <= 19:
            raise ConfigError("onnxruntime.nice must be an integer in 0..19")
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
    # Checked before tokenizing (a 16 MB string takes ~40 s to tokenize, then gets truncated to
    # max_length tokens anyway). 0: 64 bytes per token of max_length, ample for any language.
    max_bytes: int = 0
    max_strings: int = 2048

    def __post_init__(self) -> None:
        if self.max_length < 1:
            raise ConfigError("text.max_length must be >= 1")
        if self.max_bytes < 0 or self.max_strings < 1:
            raise ConfigError(
                "text.max_bytes must be >= 0 (0: 64 x max_length) and text.max_strings >= 1"
            )

    @property
    def string_bytes(self) -> int:
        """The longest string accepted, in UTF-8 bytes."""
        return self.max_bytes or 64 * self.max_length


@dataclass(frozen=True)
class ImageOptions:
    """An image input that also takes encoded images (JPEG, PNG, WebP), decoded in the server
    as `[preprocess]` says. `draft`: decode large JPEGs at a reduced scale (DCT domain)."""

    input: str = ""
    max_pixels: int = 50_000_000
    draft: bool = True

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ConfigError("image.max_pixels must be >= 1")


@dataclass(frozen=True)
class OutputOptions:
    label_filename: str = ""  # one label per line, line i for class index i


@dataclass(frozen=True)
class DynamicBatching:
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "preferred_batch_sizes", tuple(self.preferred_batch_sizes))
        if any(not isinstance(b, int) or b < 1 for b in self.preferred_batch_sizes):
            raise ConfigError("dynamic_batching.preferred_batch_sizes must be positive integers")
        if self.max_queue_delay_us < 0:
            raise ConfigError("dynamic_batching.max_queue_delay_us must be >= 0")


@dataclass(frozen=True)
class QueueOptions:
    max_queue_size: int = 1024
    priority_levels: int = 1
    default_priority_level: int = 1
    default_timeout_us: int = 0
    timeout_action: str = "reject"

    def __post_init__(self) -> None:
        if self.max_queue_size < 0:
            raise ConfigError("queue.max_queue_size must be >= 0 (0 = unbounded)")
        if self.priority_levels < 1:
            raise ConfigError("queue.priority_levels must be >= 1")
        if not 1 <= self.default_priority_level <= self.priority_levels:
            raise ConfigError("queue.default_priority_level must be in 1..priority_levels")
        if self.default_timeout_us < 0:
            raise ConfigError("queue.default_timeout_us must be >= 0 (0 = no timeout)")
        if self.timeout_action not in ("reject", "delay"):
            raise ConfigError("queue.timeout_action must be 'reject' or 'delay'")


@dataclass(frozen=True)
class LifecycleOptions:
    keep_previous: int = 1
    golden_rtol: float = 1e-4
    golden_atol: float = 1e-5
    traffic_key: str = "tenant"
    auto_rollback: bool = True
    window_s: float = 30.0
    min_requests: int = 20
    error_ratio: float = 2.0
    error_floor: float = 0.05
    latency_ratio: float = 3.0

    def __post_init__(self) -> None:
        if self.keep_previous < 0:
            raise ConfigError("lifecycle.keep_previous must be >= 0")
        if self.window_s <= 0 or self.min_requests < 1:
            raise ConfigError("lifecycle.window_s must be > 0 and min_requests >= 1")
        if self.error_ratio < 1 or self.latency_ratio < 1:
            raise ConfigError("lifecycle.error_ratio and latency_ratio must be >= 1")


@dataclass(frozen=True)
class CanaryOptions:
    version: int
    weight: float

    def __post_init__(self) -> None:
        if self.version < 1 or not 0.0 <= self.weight <= 1.0:
            raise ConfigError("canary needs version >= 1 and 0 <= weight <= 1")


_OV_HINTS = ("latency", "throughput")
_OV_PRECISIONS = ("", "f32", "bf16", "f16")


@dataclass(frozen=True)
class OpenVinoOptions:
    """`[openvino]`: one compiled model per version; instances are its infer requests."""

    hint: str = "latency"
    num_streams: int = 0  # 0: what the hint chooses
    inference_precision: str = ""  # "": the device's default (bf16 on CPUs that have it)
    intra_op_threads: int = 0  # per stream; 0: the usable cores shared among the streams
    cache_dir: str = ""  # "": $EDGEINFER_HOME/openvino; "off": compile at every load

    def __post_init__(self) -> None:
        if self.hint not in _OV_HINTS:
            raise ConfigError(f"openvino.hint must be one of {_OV_HINTS}")
        if self.inference_precision not in _OV_PRECISIONS:
            raise ConfigError(f"openvino.inference_precision must be one of {_OV_PRECISIONS}")
        if self.num_streams < 0 or self.intra_op_threads < 0:
            raise ConfigError("openvino.num_streams and intra_op_threads must be >= 0 (0: auto)")


@dataclass(frozen=True)
class LiteRtOptions:
    """`[litert]`: a .tflite model, one Interpreter per instance."""

    intra_op_threads: int = 0  # per instance; 0: the usable cores shared among instances
    dequantize_outputs: bool = False  # int8/uint8 outputs returned as FP32
    signature: str = ""  # the signature to serve; "": the model's first

    def __post_init__(self) -> None:
        if self.intra_op_threads < 0:
            raise ConfigError("litert.intra_op_threads must be >= 0 (0: the usable cores)")


_KV_TYPES = ("f32", "f16", "q8_0")


@dataclass(frozen=True)
class LlmOptions:
    """`[llm]`: a GGUF model served by llama.cpp with edgeinfer's continuous batching."""

    context_length: int = 2048  # prompt + completion tokens one request may use
    slots: int = 4  # sequences decoded together in one batch
    kv_tokens: int = 0  # KV-cache cells shared by all slots; 0: slots * context_length
    # 0: the usable physical (big) cores (hardware.default_threads). With adaptive_threads,
    # llama.cpp drops to 1 thread while the kernel's CPU pressure says other processes want the
    # cores: 2 OpenMP threads collapse ~30x beside a busy neighbour (hardware/contention.py).
    n_threads: int = 0
    n_threads_batch: int = 0  # prompt batches (and multi-sequence steps); 0: as n_threads
    adaptive_threads: bool = True
    n_batch: int = 512  # most tokens in one llama_decode call
    prefill_chunk: int = 256  # prompt tokens per step, so long prompts do not stall streams
    kv_cache_type: str = "f16"  # f32 | f16 | q8_0 (q8_0 needs flash attention)
    # "auto": on, except with an f32 KV cache (the exact setting: llm-demo's greedy tokens are
    # the same alone, batched and from the prefix cache). Measured (bench/llm_kv_paired.py,
    # docs/llm.md): through the server flash attention with an f16 cache was 1.1-2.3x faster
    # in all but one case (0.99x), because plain attention spans every used cell of the shared
    # KV cache, other slots' and cached prefixes' too. q8_0 halves the cache's memory but
    # prefills long prompts at 0.5-0.8x of f16 here: opt in, not the default.
    flash_attn: str | bool = "auto"
    # "": the GGUF's tokenizer.chat_template (none: "plain"); "plain": a User:/Assistant:
    # transcript for base models (runtime/chat_format.py); else Jinja source
    chat_template: str = ""
    # llama.cpp's extra buffer types: AMX tiles and weights repacked for AVX2/AVX-512/NEON
    # (Q4_0 runs faster). "auto": on unless a one-time probe in a child process crashed on
    # this CPU (runtime/llm_probe.py); true/false: force.
    extra_buffer_types: str | bool = "auto"
    # LoRA: steps one adapter's sequences decode in a row while other adapters' wait (each
    # adapter change rebuilds llama.cpp's graph; serving/llm_loop.py). 8: 0.53x of one adapter's
    # tokens/s for 8 streams on 4 adapters, against 0.29x switching every decode.
    lora_steps_per_switch: int = 8
    # LoRA adapters (the base model counts as one) whose sequences run at once; 0: any number.
    # A request whose adapter would exceed it waits; after `max_lora_wait` seconds nothing
    # passes it any more (vLLM's max_loras).
    max_loras: int = 0
    max_lora_wait: float = 1.0
    # Keep each slot's KV cells after its request; a new request that starts with the same
    # tokens (the next turn of a chat, a shared system prompt) prefills only the rest.
    prefix_cache: bool = True

    def __post_init__(self) -> None:
        if self.max_loras < 0 or self.max_lora_wait < 0:
            raise ConfigError(
                "llm.max_loras must be >= 0 (0: no limit) and llm.max_lora_wait >= 0 seconds"
            )
        if self.context_length < 8 or self.slots < 1:
            raise ConfigError("llm.context_length must be >= 8 and llm.slots >= 1")
        if self.kv_tokens and self.kv_tokens < self.context_length:
            raise ConfigError(
                "llm.kv_tokens must be 0 (automatic) or >= llm.context_length, "
                "or no request of full length could ever start"
            )
        if (
            min(self.n_threads, self.n_threads_batch) < 0
            or self.n_batch < 1
            or self.prefill_chunk < 1
        ):
            raise ConfigError(
                "llm.n_threads and n_threads_batch must be >= 0 (0: the usable "
                "cores), n_batch and "
                "prefill_chunk >= 1"
            )
        if self.prefill_chunk + self.slots > self.n_batch:
            raise ConfigError(
                "llm.n_batch must hold a prefill chunk plus one token per slot "
                "(n_batch >= prefill_chunk + slots)"
            )
        if self.kv_cache_type not in _KV_TYPES:
            raise ConfigError(f"llm.kv_cache_type must be one of {_KV_TYPES}")
        if not isinstance(self.flash_attn, bool) and self.flash_attn != "auto":
            raise ConfigError(
                f'llm.flash_attn must be "auto", true or false; got {self.flash_attn!r}'
            )
        if self.kv_cache_type == "q8_0" and self.flash_attn is False:
            raise ConfigError(
                "llm.kv_cache_type = 'q8_0' needs flash attention: set llm.flash_attn "
                'to "auto" or true'
            )
        if not isinstance(self.extra_buffer_types, bool) and self.extra_buffer_types != "auto":
            raise ConfigError(
                'llm.extra_buffer_types must be "auto" (probe this CPU once), '
                f"true or false; got {self.extra_buffer_types!r}"
            )
        if not isinstance(self.prefix_cache, bool) or not isinstance(self.adaptive_threads, bool):
            raise ConfigError("llm.prefix_cache and llm.adaptive_threads must be true or false")
        if self.lora_steps_per_switch < 1:
            raise ConfigError(
                "llm.lora_steps_per_switch must be >= 1 (1: switch adapters every "
                "step; more: fewer switches, longer waits for other adapters)"
            )

    @property
    def flash(self) -> bool:
        """Whether llama.cpp runs flash attention (what `flash_attn` decides)."""
        if isinstance(self.flash_attn, bool):
            return self.flash_attn
        return self.kv_cache_type != "f32"

    @property
    def kv_cells(self) -> int:
        return self.kv_tokens or self.slots * self.context_length


@dataclass(frozen=True)
class ModelConfig:
    name: str
    backend: str = ""  # "": the version's model file decides (runtime.BACKENDS)
    max_batch_size: int = 64
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    onnxruntime: OrtOptions = field(default_factory=OrtOptions)
    text: TextOptions | None = None
    image: ImageOptions | None = None
    outputs: dict[str, OutputOptions] = field(default_factory=dict)
    llm: LlmOptions = field(default_factory=LlmOptions)
    openvino: OpenVinoOptions = field(default_factory=OpenVinoOptions)
    litert: LiteRtOptions = field(default_factory=LiteRtOptions)
    warmup: bool = True
    instance_count: int = 1
    dynamic_batching: DynamicBatching | None = None
    queue: QueueOptions = field(default_factory=QueueOptions)
    lifecycle: LifecycleOptions = field(default_factory=LifecycleOptions)
    canary: CanaryOptions | None = None
    # Image resize/normalize spec read by `edgeinfer quantize` for image-folder data.
    preprocess: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.backend, str):
            raise ConfigError(f"model {self.name}: backend must be a name such as 'onnxruntime'")
        if self.backend == "llama.cpp" and self.instance_count != 1:
            raise ConfigError(
                f"model {self.name}: llama.cpp models run one context; use "
                "[llm] slots for concurrency and leave instance_count at 1"
            )
        if self.max_batch_size < 0:
            raise ConfigError(f"model {self.name}: max_batch_size must be >= 0")
        if self.instance_count < 1:
            raise ConfigError(f"model {self.name}: instance_count must be >= 1")
        if self.dynamic_batching is not None and self.max_batch_size == 0:
            raise ConfigError(
                f"model {self.name}: dynamic_batching needs max_batch_size > 0 (a batch axis)"
            )

    @classmethod
    def from_toml(
        cls, path: Path, name: str, override: dict[str, Any] | None = None
    ) -> ModelConfig:
        try:
            raw = tomllib.loads(path.read_text()) if path.exists() else {}
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text, which TOML must be: {e}") from e
        where = f"{path} (with --set overrides)" if override else str(path)
        return cls.from_dict(merge(raw, override or {}), name, where)

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
            image_raw = raw.pop("image", None)
            image = ImageOptions(**image_raw) if image_raw is not None else None
            outputs_raw = raw.pop("outputs", {})
            if not isinstance(outputs_raw, dict):
                raise ConfigError("[outputs.NAME] tables expected, e.g. [outputs.logits]")
            outputs = {k: OutputOptions(**v) for k, v in outputs_raw.items()}
            db_raw = raw.pop("dynamic_batching", None)
            batching = DynamicBatching(**db_raw) if db_raw is not None else None
            queue = QueueOptions(**raw.pop("queue", {}))
            lifecycle = LifecycleOptions(**raw.pop("lifecycle", {}))
            canary_raw = raw.pop("canary", None)
            canary = CanaryOptions(**canary_raw) if canary_raw is not None else None
            llm = LlmOptions(**raw.pop("llm", {}))
            ov = OpenVinoOptions(**raw.pop("openvino", {}))
            litert = LiteRtOptions(**raw.pop("litert", {}))
            return cls(
                name=name,
                version_policy=policy,
                onnxruntime=ort,
                text=text,
                image=image,
                outputs=outputs,
                dynamic_batching=batching,
                queue=queue,
                lifecycle=lifecycle,
                canary=canary,
                llm=llm,
                openvino=ov,
                litert=litert,
                **raw,
            )
        except ConfigError as e:
            if str(e).startswith(where):
                raise
            raise ConfigError(f"{where}: {e}") from e
        except TypeError as e:
            raise ConfigError(f"{where}: {e}") from e


def parse_overrides(entries: tuple[str, ...] | list[str]) -> dict[str, dict[str, Any]]:
    """`MODEL.KEY[.SUBKEY]=VALUE` entries -> {model: nested dict}. VALUE is a TOML value
    (`8`, `true`, `[4, 8]`, `"reject"`); a bare word is taken as a string."""
    out: dict[str, dict[str, Any]] = {}
    for item in entries:
        path, sep, text = item.partition("=")
        parts = path.strip().split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise ConfigError(
                f"--set {item!r}: expected MODEL.KEY=VALUE, e.g. digits.max_batch_size=8"
            )
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        node = out.setdefault(parts[0], {})
        for depth, key in enumerate(parts[1:-1], 2):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(
                    f"--set {item!r}: {'.'.join(parts[:depth])} is already set "
                    "to a value, so it has no keys to set"
                )
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged

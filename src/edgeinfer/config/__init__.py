"""Configuration: frozen dataclasses validated when built. Imports nothing from the package.

A model's `config.toml`:

    backend = "onnxruntime"        # onnxruntime | openvino | litert | llama.cpp; omitted: the
                                   # version's file decides (model.onnx, .xml, .tflite, .gguf)
    max_batch_size = 64            # 0: the model has no batch axis
    [version_policy]               # one of: latest = N | specific = [1, 3] | all = true
    latest = 1
    [onnxruntime]
    intra_op_threads = 0           # 0 (default): usable CPUs / instance_count; see OrtOptions
    inter_op_threads = 1
    cpus = [4, 5, 6, 7]            # pin the model's threads (default: big cores on big.LITTLE)
    nice = 5                       # inference threads yield to the event loop (0 = off)
    execution_mode = "sequential"  # or "parallel"
    graph_optimization_level = "all"  # disable | basic | extended | all
    instance_count = 1             # separate sessions that run batches in parallel
    [dynamic_batching]             # present: combine queued requests into one run
    preferred_batch_sizes = [4, 8]
    max_queue_delay_us = 100
    [queue]                        # applies with or without dynamic batching
    max_queue_size = 1024          # 0: unbounded; full -> 429 with Retry-After
    priority_levels = 1            # 1 is the highest; requests say "priority" (0 = default)
    default_priority_level = 1
    default_timeout_us = 0         # 0: none; requests say "timeout" (µs)
    timeout_action = "reject"      # or "delay": move behind everything else once
    canary = { version = 3, weight = 0.1 }   # optional: a share of traffic to another version
    [lifecycle]
    keep_previous = 1              # previous live versions kept resident for instant rollback
    golden_rtol = 1e-4             # tolerance for golden/<case>.input.npz -> .output.npz checks
    golden_atol = 1e-5
    traffic_key = "tenant"         # request parameter/header that makes canary routing sticky
    auto_rollback = true           # watch a new live version and roll back on regression
    window_s = 30.0
    min_requests = 20
    error_ratio = 2.0
    error_floor = 0.05
    latency_ratio = 3.0
    [text]                         # optional: a BYTES input tokenized in the server
    input = "text"
    tokenizer = "tokenizer.json"   # file in the version directory
    max_length = 256
    max_bytes = 0                  # longest string in UTF-8 bytes (0: 64 x max_length); 400 above
    max_strings = 2048             # most strings in one request; 400 above
    [openvino]                     # backend = "openvino": model.xml + model.bin, or model.onnx
    hint = "latency"               # latency | throughput
    num_streams = 0                # 0: from the hint
    inference_precision = ""       # "": the CPU's default (bf16 where it has it) | f32 | bf16 | f16
    intra_op_threads = 0           # per stream; 0: usable cores / streams
    cache_dir = ""                 # compiled-model cache; "": $EDGEINFER_HOME/openvino; "off"
    [litert]                       # backend = "litert": model.tflite
    intra_op_threads = 0           # per instance; 0: usable cores / instances (LiteRT's own: 1)
    dequantize_outputs = false     # int8/uint8 outputs as FP32 (scale, zero point applied)
    signature = ""                 # which signature to serve ("": the first)
    [image]                        # optional: the image input also takes encoded images (BYTES)
    input = "image"                # default: the model's only 4-D input
    max_pixels = 50_000_000        # checked from the header, before decoding
    [preprocess]                   # size, resize, scale, mean, std, layout: runtime/images.py
    [outputs.logits]               # Triton's classification extension: labels of the classes
    label_filename = "labels.txt"  # in the version directory (or the model directory)
    [llm]                          # backend = "llama.cpp": model.gguf in the version directory
    context_length = 2048          # prompt + completion tokens per request (longer: 400)
    slots = 4                      # sequences decoded together (continuous batching)
    n_threads = 0                  # 0: the usable physical (big) cores
    n_threads_batch = 0            # threads for prompt batches; 0: as n_threads
    adaptive_threads = true        # 1 thread while other processes keep the CPUs busy (PSI)
    kv_cache_type = "f16"          # f32 (exact) | f16 | q8_0 (half the memory, slower decode)
    flash_attn = "auto"            # "auto": on unless kv_cache_type = "f32" | true | false
    extra_buffer_types = "auto"    # AMX/repacked weights: "auto" (probed once per CPU) | true | false
    lora_steps_per_switch = 8      # steps one LoRA adapter's streams decode before the next's turn
    max_loras = 0                  # adapters whose sequences run at once (0: any)
    prefix_cache = true            # reuse a slot's KV cells for a prompt with the same prefix
    chat_template = ""             # "": the GGUF's; "plain": User:/Assistant: for base models
"""

from __future__ import annotations

from edgeinfer.config.model import (
    CanaryOptions,
    ConfigError,
    DynamicBatching,
    ImageOptions,
    LifecycleOptions,
    LiteRtOptions,
    LlmOptions,
    ModelConfig,
    OpenVinoOptions,
    OrtOptions,
    OutputOptions,
    QueueOptions,
    TextOptions,
    VersionPolicy,
    merge,
    parse_overrides,
)
from edgeinfer.config.server import (
    Limits,
    ServerSettings,
    edgeinfer_home,
)

__all__ = [
    "CanaryOptions",
    "ConfigError",
    "DynamicBatching",
    "ImageOptions",
    "LifecycleOptions",
    "Limits",
    "LiteRtOptions",
    "LlmOptions",
    "ModelConfig",
    "OpenVinoOptions",
    "OrtOptions",
    "OutputOptions",
    "QueueOptions",
    "ServerSettings",
    "TextOptions",
    "VersionPolicy",
    "edgeinfer_home",
    "merge",
    "parse_overrides",
]

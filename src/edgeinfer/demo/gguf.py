"""The demo repository's `llm-demo`: a tiny random-weight Llama GGUF and its LoRA adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeinfer.runtime.gguf_writer import build_gguf

LLM_DEMO_CONFIG = """\
# A tiny random-weight Llama (GGUF, f32) built by edgeinfer.runtime.gguf_writer: it shows the LLM API,
# streaming and continuous batching, not language. Replies are gibberish of max_tokens tokens.
backend = "llama.cpp"

[llm]
context_length = 1024  # its trained context; tool prompts need room
slots = 4
n_threads = 1
n_batch = 256
prefill_chunk = 128
kv_cache_type = "f32"   # exact: a request gives the same tokens alone or batched
"""


def build_llm_demo(model_dir: Path, scratch: Path) -> dict[str, Any]:
    """The demo repository's `llm-demo`: the tiny GGUF published as version 1."""
    from edgeinfer.repository.manifest import add_version

    path = scratch / "llm-demo.gguf"
    summary = build_gguf(path, "tiny", "f32", seed=0)
    model_dir.mkdir(parents=True)
    (model_dir / "config.toml").write_text(LLM_DEMO_CONFIG)
    add_version(model_dir, {"model.gguf": path}, version=1)
    from edgeinfer.demo.lora import build_demo_adapter

    summary["adapter"] = build_demo_adapter(model_dir, scratch)  # llm-demo:demo-adapter
    return summary

"""Tiny LoRA adapters built locally with numpy: the demo's `llm-demo:demo-adapter`, and the
pieces tests use to check served outputs against merged weights.

A GGUF LoRA holds `blk.N.<tensor>.weight.lora_a` [r, in] and `.lora_b` [out, r] (numpy order)
with `adapter.lora.alpha`; llama.cpp adds (alpha / r) * B @ A to each weight. The demo adapter
is large enough that greedy replies visibly differ from the base model's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeinfer.runtime.gguf_writer import SHAPES, LlamaShape

DEMO_ADAPTER = "demo-adapter"
TARGETS = ("attn_q", "attn_v", "ffn_up", "ffn_down")


def _dims(shape: LlamaShape, target: str) -> tuple[int, int]:
    """(in, out) of a layer's weight."""
    kv = shape.n_kv_heads * (shape.dim // shape.n_heads)
    return {
        "attn_q": (shape.dim, shape.dim),
        "attn_k": (shape.dim, kv),
        "attn_v": (shape.dim, kv),
        "attn_output": (shape.dim, shape.dim),
        "ffn_up": (shape.dim, shape.ff),
        "ffn_gate": (shape.dim, shape.ff),
        "ffn_down": (shape.ff, shape.dim),
    }[target]


def lora_pairs(
    shape: LlamaShape,
    seed: int,
    rank: int = 8,
    gain: float = 1.0,
    targets: tuple[str, ...] = TARGETS,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """GGUF tensor name -> (A [r, in], B [out, r]), float32."""
    rng = np.random.default_rng(seed)
    out = {}
    for layer in range(shape.n_layers):
        for t in targets:
            d_in, d_out = _dims(shape, t)
            a = rng.standard_normal((rank, d_in), dtype=np.float32) / np.float32(np.sqrt(d_in))
            b = rng.standard_normal((d_out, rank), dtype=np.float32) * np.float32(gain)
            out[f"blk.{layer}.{t}.weight"] = (a, b)
    return out


def write_gguf_lora(
    path: Path, pairs: dict[str, tuple[np.ndarray, np.ndarray]], alpha: float
) -> Path:
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(alpha))
    for name, (a, b) in pairs.items():
        w.add_tensor(name + ".lora_a", np.ascontiguousarray(a, np.float32))
        w.add_tensor(name + ".lora_b", np.ascontiguousarray(b, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def build_demo_adapter(model_dir: Path, scratch: Path, seed: int = 7) -> dict[str, object]:
    """Publish `demo-adapter` for the tiny llm-demo under `model_dir/adapters/`."""
    from edgeinfer.adapters.store import add_adapter

    rank = 8
    path = write_gguf_lora(
        scratch / "demo-adapter.gguf", lora_pairs(SHAPES["tiny"], seed, rank), alpha=rank
    )
    add_adapter(model_dir, DEMO_ADAPTER, path, version=1)
    return {"name": DEMO_ADAPTER, "rank": rank, "bytes": path.stat().st_size}

"""Build small Llama-architecture GGUF files locally: seeded random weights, a real BPE tokenizer.

    python -m edgeinfer.runtime.gguf_writer OUT.gguf [--size tiny|bench] [--type f32|f16|q8_0|q4_0]

The tokenizer is a GPT-2 style byte-level BPE trained here with `tokenizers` on text that ships
with the package, written into the GGUF tokenizer fields (`tokenizer.ggml.model = "gpt2"`,
`tokenizer.ggml.pre = "gpt-2"`) so llama.cpp tokenizes exactly as the trained tokenizer does. A
ChatML `tokenizer.chat_template` is included. Weights are random (seeded); special, padding
and partial-character tokens get zero output rows, so greedy replies are printable text and never
end on their own: every reply runs to `max_tokens` or a stop string, which keeps tests
deterministic.

Needs `gguf` and `tokenizers` (the `llm` extra); imported inside functions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

BOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (BOS, IM_START, IM_END)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# More text for the BPE merges beside the sentences the demo already ships.
_CORPUS = """\
Edge inference runs a model next to the sensor, the camera or the user, not in a data centre.
A small language model answers questions, summarises notes and extracts fields from forms.
The server keeps the weights mapped from disk and shares them between requests.
Continuous batching lets new requests join the running batch at every decoding step.
Each request has a slot, a sequence in the key-value cache, and its own sampling settings.
Tokens stream back to the client as soon as they are sampled, one event per token.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
Temperature, top-p, top-k and min-p shape the distribution; a seed makes sampling repeatable.
Memory bandwidth limits decoding: every token reads every weight once.
Hello! How are you today? I am fine, thank you. What is the weather like in Paris?
The capital of France is Paris. The capital of Italy is Rome. Water boils at 100 degrees.
Once upon a time there was a little robot who wanted to learn how to write stories.
1 2 3 4 5 6 7 8 9 10 11 12 100 1000 2024 3.14 -7 +42 50% $5 #1 @home a_b c-d e/f (x) [y] {z}
"""


@dataclass(frozen=True)
class LlamaShape:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ff: int
    context: int
    vocab: int  # tokens in the GGUF; the trained vocabulary is padded with unused tokens

    @property
    def params(self) -> int:
        head = self.dim // self.n_heads
        attn = self.dim * self.dim * 2 + 2 * self.dim * self.n_kv_heads * head
        return 2 * self.vocab * self.dim + self.n_layers * (attn + 3 * self.dim * self.ff)


SHAPES = {
    # ~0.2M parameters: loads in milliseconds, decodes in well under a millisecond per token.
    "tiny": LlamaShape(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ff=192, context=1024, vocab=512
    ),
    # ~25M parameters (100 MB as f32): milliseconds per token, for tests whose generations
    # must last long enough to be interrupted.
    "small": LlamaShape(
        dim=512, n_layers=8, n_heads=8, n_kv_heads=4, ff=1536, context=4096, vocab=512
    ),
    # ~336M parameters with a 32k vocabulary, shaped like small real Llamas (GQA 4:1).
    "bench": LlamaShape(
        dim=1024, n_layers=24, n_heads=16, n_kv_heads=4, ff=2816, context=4096, vocab=32000
    ),
}
TYPES = ("f32", "f16", "q8_0", "q4_0")


def corpus() -> list[str]:
    text = resources.files("edgeinfer.demo").joinpath("sentences.txt").read_text("utf-8")
    lines = [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]
    return lines + _CORPUS.splitlines()


def train_tokenizer(vocab_size: int, specials: tuple[str, ...] = SPECIAL_TOKENS) -> Any:
    """A byte-level BPE (GPT-2 pre-tokenization, no prefix space) trained on `corpus()`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus() * 4, trainer)
    return tok


def _vocab(
    tok: Any, size: int, specials: tuple[str, ...]
) -> tuple[list[str], list[int], list[str]]:
    """Tokens (padded to `size` with unused ones), token types and merges of a trained BPE."""
    import gguf

    model = json.loads(tok.to_str())["model"]
    by_id = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in by_id]
    if len(tokens) > size:
        raise ValueError(f"trained vocabulary has {len(tokens)} tokens, more than {size}")
    types = [gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in tokens]
    for i in range(len(tokens), size):
        tokens.append(f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, [int(t) for t in types], merges


def _silent(tokens: list[str], types: list[int]) -> list[int]:
    """Tokens a model should never pick: special and padding tokens, and byte tokens that are
    not whole printable characters (a random model would otherwise emit broken UTF-8)."""
    from tokenizers import decoders

    decode = decoders.ByteLevel().decode
    out = []
    for i, (tok, kind) in enumerate(zip(tokens, types, strict=True)):
        text = decode([tok]) if kind == 1 else ""
        if (
            not text
            or "\ufffd" in text
            or any(not c.isprintable() and c not in "\n " for c in text)
        ):
            out.append(i)
    return out


def _weights(shape: LlamaShape, rng: np.random.Generator, silent: list[int]) -> Any:
    """(name, float32 array) for every tensor, generated one at a time (the bench model is ~1.3 GB
    as float32). Scales keep activations O(1) and make logits peaked (std ~4), so greedy choices
    have clear margins and do not flip on rounding differences between batch shapes."""
    d, head = shape.dim, shape.dim // shape.n_heads
    kv = shape.n_kv_heads * head

    def mat(rows: int, cols: int, gain: float = 1.0) -> np.ndarray:
        return (
            rng.standard_normal((rows, cols), dtype=np.float32) * (gain / np.sqrt(cols))
        ).astype(np.float32)

    yield "token_embd.weight", rng.standard_normal((shape.vocab, d), dtype=np.float32)
    for i in range(shape.n_layers):
        p = f"blk.{i}."
        yield p + "attn_norm.weight", np.ones(d, dtype=np.float32)
        yield p + "attn_q.weight", mat(d, d, 2.0)
        yield p + "attn_k.weight", mat(kv, d, 2.0)
        yield p + "attn_v.weight", mat(kv, d)
        yield p + "attn_output.weight", mat(d, d, 0.5)
        yield p + "ffn_norm.weight", np.ones(d, dtype=np.float32)
        yield p + "ffn_gate.weight", mat(shape.ff, d)
        yield p + "ffn_up.weight", mat(shape.ff, d)
        yield p + "ffn_down.weight", mat(d, shape.ff, 0.5)
    yield "output_norm.weight", np.ones(d, dtype=np.float32)
    out = mat(shape.vocab, d, 4.0)
    out[silent] = 0.0  # never chosen greedily: replies end on max_tokens or stop strings
    yield "output.weight", out


def _add_metadata(
    writer: Any,
    name: str,
    shape: LlamaShape,
    file_type: Any,
    tokens: list[str],
    types: list[int],
    merges: list[str],
    chat_template: str,
) -> None:
    """Llama hyperparameters, the GPT-2 style tokenizer and the chat template."""
    writer.add_name(name)
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.dim)
    writer.add_block_count(shape.n_layers)
    writer.add_feed_forward_length(shape.ff)
    writer.add_head_count(shape.n_heads)
    writer.add_head_count_kv(shape.n_kv_heads)
    writer.add_rope_dimension_count(shape.dim // shape.n_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(shape.vocab)
    writer.add_file_type(file_type)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index(BOS))
    writer.add_eos_token_id(tokens.index(BOS))
    writer.add_eot_token_id(tokens.index(IM_END))
    writer.add_add_bos_token(False)
    writer.add_chat_template(chat_template)


def _add_weights(writer: Any, weights: Any, ggml_type: Any) -> int:
    """Add every tensor, matrices quantized to `ggml_type`; returns the bytes of weight data."""
    import gguf
    from gguf.quants import quantize

    weight_bytes = 0
    for name, w in weights:
        if w.ndim == 2 and ggml_type not in (gguf.GGMLQuantizationType.F32,):
            data = quantize(w, ggml_type)
            writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=ggml_type)
        else:
            data = w
            writer.add_tensor(name, w)
        weight_bytes += data.nbytes
    return weight_bytes


def build_gguf(
    path: Path,
    size: str = "tiny",
    qtype: str = "f32",
    seed: int = 0,
    chat_template: str = CHAT_TEMPLATE,
    specials: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Write a Llama GGUF to `path` and return a summary (shape, parameters, bytes, seconds).
    `chat_template`: the Jinja source stored as `tokenizer.chat_template`; `specials`: control
    tokens beside ChatML's that it writes (another family's turn markers)."""
    import gguf

    if size not in SHAPES or qtype not in TYPES:
        raise ValueError(f"size must be one of {sorted(SHAPES)} and type one of {TYPES}")
    started = time.perf_counter()
    shape = SHAPES[size]
    specials = tuple(dict.fromkeys(SPECIAL_TOKENS + specials))
    tok = train_tokenizer(shape.vocab, specials)
    tokens, types, merges = _vocab(tok, shape.vocab, specials)
    ggml_type = {
        "f32": gguf.GGMLQuantizationType.F32,
        "f16": gguf.GGMLQuantizationType.F16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
        "q4_0": gguf.GGMLQuantizationType.Q4_0,
    }[qtype]
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    }[qtype]

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama", use_temp_file=True)
    name = f"edgeinfer-{size}-random"
    _add_metadata(writer, name, shape, file_type, tokens, types, merges, chat_template)
    rng = np.random.default_rng(seed)
    weight_bytes = _add_weights(writer, _weights(shape, rng, _silent(tokens, types)), ggml_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return {
        "size": size,
        "type": qtype,
        "seed": seed,
        "shape": asdict(shape),
        "trained_vocab": tok.get_vocab_size(),
        "params": shape.params,
        "weight_bytes": weight_bytes,
        "file_bytes": path.stat().st_size,
        "build_seconds": round(time.perf_counter() - started, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgeinfer.runtime.gguf_writer", description=__doc__
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--type", choices=TYPES, default="f32", dest="qtype")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(build_gguf(args.out, args.size, args.qtype, args.seed), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

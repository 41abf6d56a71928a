"""Model files for bench/backends.py beyond the MLP and the ResNet-18-shaped CNN: the
MobileNetV2-shaped CNN (random weights, built with onnx.helper in bench/quantize.py) and the
demo's MiniLM sentence embedder, FP32 and INT8 (static QDQ for the CNN, dynamic for MiniLM)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from _proc import Request

# One sentence of typical length (16 tokens with [CLS]/[SEP]): every MiniLM request and batch row.
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
TEXT_CONFIG = """[text]
input = "text"
tokenizer = "tokenizer.json"
max_length = 256
"""


def mobilenetv2(b: Path, calib: list[dict[str, np.ndarray]]) -> tuple[Path, Path]:
    """The FP32 MobileNetV2-shaped ONNX and its static QDQ INT8 (quantized like the ResNet's)."""
    from quantize import mobilenetv2_like

    from edgeinfer.testing import models

    fp32 = mobilenetv2_like(b / "mnv2.onnx")
    return fp32, models.qdq_int8(fp32, b / "mnv2_int8.onnx", calib)


def minilm(b: Path) -> tuple[Path, Path, Path]:
    """The demo MiniLM (FP32 ONNX), its dynamic INT8 (what `edgeinfer quantize --mode dynamic`
    writes, per-channel S8 weights) and its tokenizer."""
    from edgeinfer.demo import ensure_demo_repository
    from edgeinfer.optimize.quantize import QuantSettings, quantize

    version = ensure_demo_repository() / "minilm" / "1"
    int8 = b / "minilm_int8.onnx"
    quantize(version / "model.onnx", int8, QuantSettings(mode="dynamic"))
    return version / "model.onnx", int8, version / "tokenizer.json"


def text_feeds(tokenizer: Path, rows: int) -> dict[str, np.ndarray]:
    """Token ids as the server makes them from `rows` copies of SENTENCE (runtime/text.py)."""
    from edgeinfer.runtime.text import encode, load_tokenizer

    tok = load_tokenizer(tokenizer, 256)
    return encode(tok, [SENTENCE] * rows, ["input_ids", "attention_mask", "token_type_ids"])


def text_request(model: str) -> Request:
    body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                   "data": [SENTENCE]}]}).encode()  # fmt: skip
    return Request(model, body, {"Content-Type": "application/json"})

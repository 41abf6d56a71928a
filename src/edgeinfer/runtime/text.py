"""Text models: a BYTES input tokenized in the server, then the model runs on token ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.config import TextOptions
from edgeinfer.errors import InvalidInput, LoadError
from edgeinfer.types import TensorSpec

_TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def load_tokenizer(path: Path, max_length: int) -> Any:
    """The tokenizer as the server uses it: truncate at `max_length`, pad to the longest. The
    optimizer calls this too, so calibration data is tokenized exactly like served requests."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:
        raise LoadError(f"{path}: cannot load tokenizer: {e}") from e
    tok.enable_truncation(max_length)
    tok.enable_padding()
    return tok


def encode(tok: Any, texts: list[str], names: list[str]) -> dict[str, np.ndarray]:
    """Token-id feeds (int64) for the model inputs in `names`."""
    enc = tok.encode_batch(texts)
    feeds = {
        "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
    }
    return {n: feeds[n] for n in names}


class TextModel:
    def __init__(self, inner: Any, version_dir: Path, options: TextOptions) -> None:
        names = {i.name for i in inner.inputs}
        if not {"input_ids", "attention_mask"} <= names or not names <= set(_TOKEN_INPUTS):
            raise LoadError(
                f"{version_dir}: a [text] model needs inputs input_ids and attention_mask "
                f"(and optionally token_type_ids); it has {sorted(names)}"
            )
        self._tok = load_tokenizer(version_dir / options.tokenizer, options.max_length)
        self._inner = inner
        self._feed_names = [n for n in _TOKEN_INPUTS if n in names]
        self.platform = inner.platform
        self.inputs: tuple[TensorSpec, ...] = (
            TensorSpec(options.input, "BYTES", (-1,), options.max_strings, options.string_bytes),
        )
        self.outputs = inner.outputs
        self.input_name = options.input

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        return encode(self._tok, texts, self._feed_names)

    def run(
        self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        raw = feeds[self.input_name].reshape(-1)
        try:
            texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in raw]
        except UnicodeDecodeError as e:
            raise InvalidInput(f"input '{self.input_name}' holds invalid UTF-8: {e}") from e
        if not texts:  # ONNX Runtime refuses a [0, 0] batch of token ids (a BackendError, 500)
            raise InvalidInput(f"input '{self.input_name}' holds no strings")
        return self._inner.run(self.tokenize(texts), output_names)

    def warmup(self) -> None:
        self.run({self.input_name: np.array([b"warm up"], dtype=object)})

    def close(self) -> None:
        self._inner.close()

"""What the generation loop (serving/llm_loop.py) and an LLM backend exchange: the batch item
and the backend protocol. The concrete backend (llm_llamacpp.py) and the unit tests' fakes
implement it; the loop imports only this module."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np


class BatchItem(NamedTuple):
    """Tokens of one sequence in a decode step, at positions pos, pos+1, ...; with `logits`,
    the row of the last token is returned."""

    seq: int
    tokens: Sequence[int]
    pos: int
    logits: bool


class LlmBackend(Protocol):
    """The math the loop needs: decode a batch of sequences, manage their KV cells and LoRA
    adapters, turn tokens into bytes."""

    n_vocab: int
    eog: frozenset[int]

    def decode(self, items: Sequence[BatchItem]) -> np.ndarray:
        """One llama_decode over `items`; the logits rows of the items that asked for them."""
        ...

    def free(self, seq: int) -> None: ...

    def keep(self, seq: int, n: int) -> int:
        """Keep the KV cells of positions [0, n) of `seq`, drop the rest; returns how many
        positions are really kept."""
        ...

    def copy(self, src: int, dst: int, p0: int, p1: int) -> bool:
        """Give `dst` the KV cells of positions [p0, p1) of `src` (dst holds [0, p0));
        False, copying nothing, when `src` does not hold them all any more."""
        ...

    def piece(self, token: int) -> bytes: ...

    def load_adapter(self, path: Path) -> Any:
        """A LoRA adapter's opaque handle."""
        ...

    def set_adapter(self, handle: Any, scale: float = 1.0) -> None:
        """Apply `handle` (None: the base model) to every following decode."""
        ...

    def free_adapter(self, handle: Any) -> None: ...

    def close(self) -> None: ...

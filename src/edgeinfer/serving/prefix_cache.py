"""Prefix caching: a slot keeps the KV cells of its last request, and the next request that
starts with the same tokens prefills only the rest (llama-server's `cache_prompt`).

Every slot remembers the tokens whose KV cells it still holds, from position 0, and the LoRA
adapter they were computed under. A new request takes the idle slot whose tokens share the
longest prefix with its prompt (same adapter only: KV computed under one adapter is never
reused under another), drops the slot's cells past the match (`llama_memory_seq_rm` from the
match on) and starts its prefill there. With no match it takes an empty slot, else the least
recently used one, and drops all of that slot's cells. At least the prompt's last token is
always prefilled again: its logits give the first generated token.

Cached cells of idle slots count against the KV budget: when a new request's reservation and
the idle slots' cells do not fit the cache any more, the least recently used idle slots forget
their tokens (and their cells) until they do. All of this runs on the engine thread between
two decodes and costs one vectorised comparison per idle slot plus a few `seq_rm` calls: it
never runs during a decode.

A chat turn's prompt is the previous turn's prompt, the answer and the new message, so the
whole conversation so far is found in the slot that served the previous turn (the answer's
last token is not: it was sampled but never decoded).

Correctness: reused cells hold exactly what a fresh prefill of the same tokens at the same
positions would compute (up to the floating-point order of a batch; see docs/llm.md); a slot
whose cells llama.cpp dropped (sliding-window layers overwrite cells outside their window)
is detected with `seq_pos_min`/`seq_pos_max` by the backend and reused only as far as intact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class CacheBackend(Protocol):
    def free(self, seq: int) -> None: ...

    def keep(self, seq: int, n: int) -> int:
        """Keep the KV cells of positions [0, n) of `seq`, drop the rest; returns how many
        positions are really kept (0 when the cells before n are not all there any more)."""
        ...


_EMPTY = np.zeros(0, np.int32)


@dataclass(eq=False)
class _Slot:
    seq: int
    tokens: np.ndarray = field(default_factory=lambda: _EMPTY)  # KV held for [0, len)
    adapter: object | None = None  # the adapter the cells were computed under
    used: int = 0  # LRU clock


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two token arrays."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


class SlotCache:
    """The idle slots of one context and the token prefixes their KV cells hold.

    `take` gives an idle slot to a new request (with how many of its prompt tokens are already
    in the cells), `give_back` returns a retired request's slot with the tokens it leaves
    behind, `fit` evicts idle prefixes to make room. Engine thread only."""

    def __init__(self, backend: CacheBackend, slots: int, enabled: bool) -> None:
        self.backend = backend
        self.enabled = enabled
        self._idle = [_Slot(seq) for seq in range(slots)]
        self._clock = 0

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def cached_cells(self) -> int:
        """KV cells held by idle slots (a running request's cells are in its reservation)."""
        return sum(len(s.tokens) for s in self._idle)

    def take(
        self, prompt: Sequence[int], adapter: object | None = None, reuse: bool = True
    ) -> tuple[int, int]:
        """An idle slot for `prompt`: (sequence id, prompt tokens already in its cells)."""
        want = np.asarray(prompt, np.int32)
        best, match = None, 0
        if self.enabled and reuse:
            for slot in self._idle:
                if slot.adapter is adapter and len(slot.tokens):
                    n = common_prefix(slot.tokens, want)
                    if n > match:
                        best, match = slot, n
        if best is None or match == 0:
            # Nothing to reuse: an empty slot, else the least recently used one.
            best, match = min(self._idle, key=lambda s: (len(s.tokens) > 0, s.used)), 0
        self._idle.remove(best)
        keep = min(match, len(want) - 1)
        if keep > 0:
            keep = self.backend.keep(best.seq, keep)
        elif len(best.tokens):
            self.backend.free(best.seq)
        return best.seq, max(0, keep)

    def give_back(
        self, seq: int, tokens: Sequence[int] | None, adapter: object | None = None
    ) -> None:
        """A retired request's slot is idle again; its cells hold `tokens` (None: unknown,
        e.g. after a failed decode, so they are dropped)."""
        self._clock += 1
        slot = _Slot(seq, used=self._clock)
        if self.enabled and tokens:
            slot.tokens, slot.adapter = np.asarray(tokens, np.int32), adapter
        else:
            self.backend.free(seq)
        self._idle.append(slot)

    def fit(self, cells: int) -> int:
        """Evict least recently used idle prefixes until they hold at most `cells` cells;
        returns how many cells were freed."""
        freed = 0
        held = self.cached_cells
        for slot in sorted(self._idle, key=lambda s: s.used):
            if held <= cells:
                break
            n = len(slot.tokens)
            if n:
                self.backend.free(slot.seq)
                slot.tokens, slot.adapter = _EMPTY, None
                held -= n
                freed += n
        return freed

    def forget(self) -> None:
        """Drop every idle slot's prefix (the backend's cells were reset)."""
        for slot in self._idle:
            slot.tokens, slot.adapter = _EMPTY, None

"""Prefix caching: a slot keeps the KV cells of its last request, and the next request that
starts with the same tokens prefills only the rest (llama-server's `cache_prompt`).

Every slot remembers the tokens whose KV cells it still holds, from position 0, and the LoRA
adapter they were computed under (KV computed under one adapter is never reused under another).
A new request takes an idle slot: first one it can take without losing any cached cell (an
empty slot, or one whose every cell matches its prompt), else the one holding the longest
prefix of its prompt, else the least recently used; the slot's cells past the match are dropped
(`llama_memory_seq_rm`). When another sequence holds a longer prefix (an idle slot left alone
above, or a running request: a shared system prompt, the siblings of an `n` > 1 request), the
missing cells are copied from it with `llama_memory_seq_cp`: in the unified KV cache that adds
the new sequence to the same cells, no data moves, and only the rest of the prompt is
prefilled. A running source still prefilling that prefix is waited for (the loop parks the new
request until the cells exist: the prompt is prefilled once, not once per request). At least
the prompt's last token is always prefilled again: its logits give the first generated token.

Cached cells of idle slots count against the KV budget: when a new request's reservation and
the idle slots' cells do not fit the cache any more, the least recently used idle slots forget
their tokens (and their cells) until they do. All of this runs on the engine thread between
two decodes and costs one vectorised comparison per slot plus a few `seq_rm`/`seq_cp` calls
(a pass over the cells' metadata in C): it never runs during a decode.

A chat turn's prompt is the previous turn's prompt, the answer and the new message, so the
whole conversation so far is found in the slot that served the previous turn (the answer's
last token is not: it was sampled but never decoded).

Correctness: reused cells hold exactly what a fresh prefill of the same tokens at the same
positions would compute (up to the floating-point order of a batch; see docs/llm.md); a slot
whose cells llama.cpp dropped (sliding-window layers overwrite cells outside their window)
is detected with `seq_pos_min`/`seq_pos_max` by the backend and reused only as far as intact;
a copy from a source that lost cells is refused and the tokens are prefilled instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np


class CacheBackend(Protocol):
    def free(self, seq: int) -> None: ...

    def keep(self, seq: int, n: int) -> int:
        """Keep the KV cells of positions [0, n) of `seq`, drop the rest; returns how many
        positions are really kept (0 when the cells before n are not all there any more)."""
        ...

    def copy(self, src: int, dst: int, p0: int, p1: int) -> bool:
        """Give `dst` the KV cells of positions [p0, p1) of `src` (dst holds [0, p0) already);
        False, copying nothing, when `src` does not hold them all any more."""
        ...


_EMPTY = np.zeros(0, np.int32)


@dataclass(eq=False)
class _Slot:
    seq: int
    tokens: np.ndarray = field(default_factory=lambda: _EMPTY)  # KV held for [0, len)
    adapter: object | None = None  # the adapter the cells were computed under
    used: int = 0  # LRU clock


class Source(NamedTuple):
    """A running sequence a new request may copy prompt cells from: `ready` positions of its
    `tokens` hold computed cells now, the rest are still being prefilled."""

    seq: int
    tokens: np.ndarray
    adapter: object | None
    ready: int
    owner: Any  # the loop's request, handed back in Take


class Take(NamedTuple):
    """A slot for a new request: its cells hold the prompt's first `cached` tokens; with a
    `source`, cells [cached, want) are to be copied from that running sequence once its
    prefill has computed them (`SlotCache.copy`)."""

    seq: int
    cached: int
    source: Source | None = None
    want: int = 0


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
        self,
        prompt: Sequence[int],
        adapter: object | None = None,
        reuse: bool = True,
        running: Sequence[Source] = (),
    ) -> Take:
        """An idle slot for `prompt`, holding as much of it as the cache has (see the module
        doc): in place, copied now from another idle slot, or (`Take.source`) to be copied
        from a running sequence."""
        want = np.asarray(prompt, np.int32)
        limit = len(want) - 1  # the last prompt token is prefilled again: its logits
        use = self.enabled and reuse and limit > 0

        def match(tokens: np.ndarray, of: object | None) -> int:
            same = use and of is adapter and len(tokens) > 0
            return min(common_prefix(tokens, want), limit) if same else 0

        own = [match(s.tokens, s.adapter) for s in self._idle]
        # Lossless first (an empty slot, or one whose every cell matches), then the longest
        # match in place, then the least recently used.
        i = min(
            range(len(own)),
            key=lambda i: (len(self._idle[i].tokens) > own[i], -own[i], self._idle[i].used),
        )
        dest = self._idle.pop(i)
        cached = self.backend.keep(dest.seq, own[i]) if own[i] else 0
        if not own[i] and len(dest.tokens):
            self.backend.free(dest.seq)
        del own[i]
        best, n = max(
            [(s, own[j]) for j, s in enumerate(self._idle)]
            + [(r, match(r.tokens, r.adapter)) for r in running],
            # Equal matches: an idle slot (its cells are ready), else the furthest prefilled.
            key=lambda c: (c[1], c[0].ready if isinstance(c[0], Source) else len(want)),
            default=(None, 0),
        )
        if best is None or n <= cached:
            return Take(dest.seq, cached)
        if isinstance(best, _Slot) or best.ready >= n:
            return Take(dest.seq, self.copy(best.seq, dest.seq, cached, n))
        return Take(dest.seq, cached, best, n)

    def copy(self, src: int, dst: int, cached: int, n: int) -> int:
        """Copy the cells of positions [cached, n) from `src` to `dst`; the prompt tokens
        `dst` holds after it (`cached` when `src` lost some of them)."""
        return n if self.backend.copy(src, dst, cached, n) else cached

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

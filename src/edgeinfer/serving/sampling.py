"""Sampling in numpy on one logits row: penalties, temperature, top-k, min-p, top-p, seed,
logprobs; and the stop-string matcher that holds back text which may be the start of a stop.

Order (as vLLM and llama.cpp): repetition penalty (prompt + output), presence and frequency
penalties (output only), then greedy when the temperature is below `GREEDY_BELOW`, else
temperature, top-k, min-p, top-p, and a draw from the seeded generator of the request. Logprobs
are those of the model's raw distribution (vLLM's default `raw_logprobs`), so they do not depend
on sampling settings.

Safe for every value the API accepts and every logits row: the math is float64 (a float32 row
divided by a temperature of 1e-5 or a penalty cannot overflow), NaN logits are never chosen,
+inf logits tie at the top, and there is always at least one candidate (a row with no finite
logit gives its first non-NaN token). A row that makes numpy warn is still a valid draw.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from edgeinfer.errors import InvalidParameter

# Tokens further than this below the best (after temperature) have probability < e^-30
# relative to it; dropping them before sorting makes top-p O(candidates) instead of O(vocab).
_CUTOFF = 30.0
# Below this temperature sampling is greedy (as llama.cpp's temp <= 0): 1/T would amplify
# float noise between near-equal logits, and 1e-50 overflowed float32 to inf/NaN.
GREEDY_BELOW = 1e-5
_TOP = float(np.finfo(np.float64).max)  # +inf logits become this: they tie at the top
MIN_LOGPROB = -9999.0  # what -inf log-probabilities are reported as (JSON has no -inf; vLLM)
MAX_LOGPROBS = 20
MAX_LOGIT_BIAS = 1024
MAX_STOPS = 16
MAX_STOP_CHARS = 256  # a stop string longer than this would make every token's check slow
_SEEDS = 2**64


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int | None = None  # None: up to the context length
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None  # None or -1: random (as llama.cpp)
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: no logprobs; N: the chosen token's and the top N
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, -100..100) added to its logit

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        object.__setattr__(self, "logit_bias", tuple(self.logit_bias))
        if self.seed == -1:
            object.__setattr__(self, "seed", None)
        # Every check is evaluated before the first failure is raised.
        for param, ok, message in (*self._number_checks(), *self._list_checks()):
            if not ok:
                raise InvalidParameter(param, message)

    def _number_checks(self) -> tuple[tuple[str, bool, str], ...]:
        # NaN fails every comparison below, so it is refused with the range.
        return (
            (
                "max_tokens",
                self.max_tokens is None or self.max_tokens >= 1,
                "max_tokens must be >= 1",
            ),
            (
                "temperature",
                0.0 <= self.temperature <= 100.0,
                "temperature must be between 0 and 100",
            ),
            ("top_p", 0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            ("top_k", self.top_k >= -1, "top_k must be -1, 0 (off) or a positive integer"),
            ("min_p", 0.0 <= self.min_p <= 1.0, "min_p must be in [0, 1]"),
            (
                "repetition_penalty",
                0.0 < self.repetition_penalty <= 10.0,
                "repetition_penalty must be in (0, 10]",
            ),
            (
                "presence_penalty",
                -2.0 <= self.presence_penalty <= 2.0,
                "presence_penalty must be in [-2, 2]",
            ),
            (
                "frequency_penalty",
                -2.0 <= self.frequency_penalty <= 2.0,
                "frequency_penalty must be in [-2, 2]",
            ),
            (
                "seed",
                self.seed is None or 0 <= self.seed < _SEEDS,
                "seed must be -1 (random) or an integer in [0, 2^64)",
            ),
        )

    def _list_checks(self) -> tuple[tuple[str, bool, str], ...]:
        return (
            (
                "stop",
                all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in self.stop),
                f"stop strings must be non-empty and at most {MAX_STOP_CHARS} characters",
            ),
            ("stop", len(self.stop) <= MAX_STOPS, f"at most {MAX_STOPS} stop strings"),
            (
                "logprobs",
                self.logprobs is None or 0 <= self.logprobs <= MAX_LOGPROBS,
                f"logprobs must be between 0 and {MAX_LOGPROBS}",
            ),
            (
                "logit_bias",
                len(self.logit_bias) <= MAX_LOGIT_BIAS,
                f"logit_bias may hold at most {MAX_LOGIT_BIAS} tokens",
            ),
            (
                "logit_bias",
                all(-100.0 <= b <= 100.0 for _, b in self.logit_bias),
                "logit_bias values must be between -100 and 100",
            ),
        )

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW or self.top_k == 1


@dataclass(slots=True)
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # most likely first
    piece: bytes = b""  # the token's bytes (filled in by the loop, which has the vocabulary)
    top_pieces: list[bytes] = field(default_factory=list)


class Sampler:
    """Per-request sampling state: the seeded generator and the token counts for penalties."""

    def __init__(self, params: SamplingParams, prompt: Iterable[int], n_vocab: int) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self._seen = np.zeros(n_vocab, bool)  # prompt + output, for the repetition penalty
        self._counts = np.zeros(n_vocab, np.int32)  # output only
        prompt_ids = np.fromiter(prompt, np.int64)
        self._seen[prompt_ids[(prompt_ids >= 0) & (prompt_ids < n_vocab)]] = True
        if any(not 0 <= t < n_vocab for t, _ in params.logit_bias):
            raise InvalidParameter("logit_bias", f"logit_bias token ids must be in [0, {n_vocab})")
        self._bias = (
            np.array([t for t, _ in params.logit_bias], np.int64),
            np.array([b for _, b in params.logit_bias], np.float32),
        )

    def accept(self, token: int) -> None:
        if 0 <= token < len(self._counts):
            self._counts[token] += 1
            self._seen[token] = True

    @property
    def _penalizes(self) -> bool:
        p = self.params
        return (
            p.repetition_penalty != 1.0
            or bool(p.presence_penalty or p.frequency_penalty)
            or bool(p.logit_bias)
        )

    def penalized(self, logits: np.ndarray) -> np.ndarray:
        """The row after penalties and logit_bias, as float64 with NaN -> -inf and +inf -> the
        largest float."""
        p = self.params
        out = np.array(logits, np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            if p.repetition_penalty != 1.0:
                seen = out[self._seen]
                out[self._seen] = np.where(
                    seen > 0, seen / p.repetition_penalty, seen * p.repetition_penalty
                )
            if p.presence_penalty or p.frequency_penalty:
                out -= p.presence_penalty * (self._counts > 0) + p.frequency_penalty * self._counts
            if p.logit_bias:
                ids, bias = self._bias
                out[ids] += bias
        return _clean(out)

    def sample(self, logits: np.ndarray) -> tuple[int, TokenLogprob | None]:
        """Choose the next token from one logits row; records it for the penalties."""
        p = self.params
        if p.greedy:
            token = int(np.argmax(logits))  # the first NaN if there is one, else the answer
            if self._penalizes or np.isnan(logits[token]):
                token = int(np.argmax(self.penalized(logits)))
        else:
            scores = self.penalized(logits)
            candidates, probs = distribution(scores, p.temperature, p.top_k, p.min_p, p.top_p)
            # One uniform draw per token: the same seed gives the same tokens in any batch.
            cum = np.cumsum(probs)
            i = int(np.searchsorted(cum, self.rng.random() * cum[-1], side="right"))
            token = int(candidates[min(i, len(candidates) - 1)])
        self.accept(token)
        return token, (logprobs(logits, token, p.logprobs) if p.logprobs is not None else None)


def _clean(z: np.ndarray) -> np.ndarray:
    """In place on a float64 row: NaN -> -inf (never chosen), +inf -> the largest float."""
    z[np.isnan(z)] = -np.inf
    np.minimum(z, _TOP, out=z)
    return z


def distribution(
    scores: np.ndarray, temperature: float, top_k: int, min_p: float, top_p: float
) -> tuple[np.ndarray, np.ndarray]:
    """(candidate token ids, their probabilities summing to 1), most likely first; never empty."""
    with np.errstate(over="ignore", invalid="ignore"):
        z = _clean(np.asarray(scores, np.float64) / temperature)
    best = float(z.max())
    if best == -np.inf:  # no finite logit: nothing to weigh, take the first token
        return np.array([int(np.argmax(z))]), np.ones(1)
    candidates = np.flatnonzero(z >= best - _CUTOFF)
    if 0 < top_k < len(candidates):
        keep = np.argpartition(-z[candidates], top_k - 1)[:top_k]
        candidates = candidates[keep]
    order = np.argsort(-z[candidates], kind="stable")
    candidates = candidates[order]
    probs = np.exp(z[candidates] - best)  # in [e^-30, 1]; the best is 1, so the sum is >= 1
    probs /= probs.sum()
    if min_p > 0.0:
        n = max(1, int(np.count_nonzero(probs >= min_p * probs[0])))
        candidates, probs = candidates[:n], probs[:n] / probs[:n].sum()
    if top_p < 1.0:
        # The smallest prefix whose mass reaches top_p (at least one token).
        n = int(np.searchsorted(np.cumsum(probs), top_p, side="left")) + 1
        n = min(n, len(probs))
        candidates, probs = candidates[:n], probs[:n] / probs[:n].sum()
    return candidates, probs


def logprobs(logits: np.ndarray, token: int, top_n: int) -> TokenLogprob:
    """Log-softmax of the raw row; -inf (and NaN logits) are reported as MIN_LOGPROB."""
    z = _clean(np.array(logits, np.float64))
    m = float(z.max())
    with np.errstate(over="ignore", invalid="ignore"):
        lse = m + math.log(float(np.exp(z - m).sum())) if m > -np.inf else np.inf
        lp = np.maximum(z - lse, MIN_LOGPROB)
    lp[np.isnan(lp)] = MIN_LOGPROB
    top: list[tuple[int, float]] = []
    top_n = min(top_n, len(z))
    if top_n:
        idx = np.argpartition(-z, top_n - 1)[:top_n]
        idx = idx[np.argsort(-z[idx], kind="stable")]
        top = [(int(i), float(lp[i])) for i in idx]
    return TokenLogprob(token, float(lp[token]), top)


class TextStream:
    """Token bytes in, text out: incomplete UTF-8 is held until its last byte arrives, and text
    that could be the start of a stop string is held until it cannot be."""

    def __init__(self, stop: tuple[str, ...]) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = stop
        self._hold = max((len(s) for s in stop), default=1) - 1
        self._pending = ""  # decoded but not yet released
        self.text = ""  # everything released so far

    def push(self, data: bytes) -> tuple[str, bool]:
        """(text that is safe to send now, whether a stop string was found). After a stop,
        the text before it is returned and the stream is finished."""
        self._pending += self._utf8.decode(data)
        if self._stop:
            cut = min((i for s in self._stop if (i := self._pending.find(s)) >= 0), default=-1)
            if cut >= 0:
                return self._release(cut), True
            return self._release(self._safe_length()), False
        return self._release(len(self._pending)), False

    def _safe_length(self) -> int:
        """How much of the pending text cannot be part of a stop string: all of it but the
        longest tail that is the start of one."""
        text = self._pending
        for k in range(min(self._hold, len(text)), 0, -1):
            if any(s.startswith(text[-k:]) for s in self._stop):
                return len(text) - k
        return len(text)

    def flush(self) -> str:
        """The rest (on finishing for another reason): held text and incomplete bytes."""
        self._pending += self._utf8.decode(b"", final=True)
        return self._release(len(self._pending))

    def _release(self, n: int) -> str:
        out, self._pending = self._pending[:n], self._pending[n:]
        self.text += out
        return out

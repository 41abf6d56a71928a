"""Which version serves a request that names none: the live one, or the canary for a share of
traffic. With a routing key (a request parameter or header, e.g. `tenant`) the choice is sticky:
the same key always lands on the same side for a given weight."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    live: int
    canary: int | None = None
    weight: float = 0.0  # share of traffic for the canary
    key: str = "tenant"  # request parameter / header holding the sticky routing key

    def pick(self, key_value: str | None, rng: random.Random) -> int:
        if self.canary is None or self.weight <= 0:
            return self.live
        draw = _unit_hash(key_value) if key_value is not None else rng.random()
        return self.canary if draw < self.weight else self.live


def _unit_hash(value: str) -> float:
    digest = hashlib.blake2b(value.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64

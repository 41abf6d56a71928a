"""Which waiting requests the LLM loop starts, and which running ones decode each step.

LoRA adapters (measurements in docs/lora.md): llama.cpp rebuilds its compute graph whenever the
context's adapter changes, so running sequences are grouped by adapter (the base model is a
group too) and the groups time-slice the context: a step decodes one group, never a mix; the
group whose adapter is set keeps the context for up to `steps_per_switch` (K) steps in a row,
then the group that has waited longest gets it, so none waits more than (groups - 1) * K steps;
with one group every running sequence decodes every step. Admission stays in arrival order;
with `max_loras` a request whose adapter would be one group too many lets later requests of
running adapters pass, for at most `max_lora_wait` seconds.

Engine thread only (the caller holds the lock guarding `waiting`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from edgeinfer.serving.llm_request import LoopAdapter, LoopLimits, Request


def admit(
    waiting: deque[Request],
    running: Sequence[Request],
    free_slots: int,
    reserved: int,
    limits: LoopLimits,
    now: float,
) -> list[Request]:
    """Remove from `waiting` and return the requests to start now: in arrival order while a
    slot is free and the KV budget (`reserved` cells promised already) holds their prompt
    plus max_tokens."""
    admitted: list[Request] = []
    max_loras = limits.max_loras
    active = {r.adapter_key for r in running}
    i = 0
    while (
        i < len(waiting)
        and len(admitted) < free_slots
        and reserved + waiting[i].need <= limits.kv_cells
    ):
        req = waiting[i]
        if max_loras and req.adapter_key not in active and len(active) >= max_loras:
            if now - req.arrival > limits.max_lora_wait:
                break  # it waited long enough: nothing passes it any more
            i += 1
            continue
        del waiting[i]
        active.add(req.adapter_key)
        admitted.append(req)
        reserved += req.need
    return admitted


class AdapterTurns:
    """The adapter group that has the context, and since when each group waits."""

    def __init__(self, steps_per_switch: int) -> None:
        self.steps_per_switch = steps_per_switch
        self._holder: LoopAdapter | None = None  # the group with the context (its adapter)
        self._held = 0  # steps in a row the holder has decoded
        self._since: dict[LoopAdapter | None, int] = {}  # group -> step it began waiting

    def turn(self, running: Sequence[Request], step: int) -> list[Request]:
        """The running requests that decode at `step`: all of them when they share an
        adapter, else one adapter group's, time-sliced (see the module doc)."""
        groups: dict[LoopAdapter | None, list[Request]] = {}
        for req in running:
            groups.setdefault(req.adapter, []).append(req)
        self._since = {g: self._since.get(g, step) for g in groups}
        if not groups:
            return []  # idle: the holder keeps the context (its adapter stays set)
        holder = self._holder
        if holder not in groups or (len(groups) > 1 and self._held >= self.steps_per_switch):
            if holder in groups:
                self._since[holder] = step  # it gives up the context: it waits from now
            # The longest waiting goes next; min() keeps running order among equals.
            self._holder = min((g for g in groups if g is not holder), key=self._since.__getitem__)
            self._held = 0
        self._held += 1
        return groups.get(self._holder, [])

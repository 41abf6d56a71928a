"""Adapter groups in the LLM loop (serving/llm_loop.py) against a fake llama.cpp backend.

llama.cpp applies a LoRA per context and rebuilds its graph after every adapter change, so the
adapter groups time-slice the context: a step decodes one group, which keeps the context for up
to K steps before the next group with work gets it. The fake's next token depends on the
sequence's history AND on the adapter set at decode time, and it checks that a sequence is
always decoded under the adapter it was prefilled with: a scheduling bug shows as a wrong token
or a failed assertion.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import numpy as np
import pytest

from edgeinfer.runtime.llm_types import BatchItem
from edgeinfer.serving.llm_loop import GenerationStream, LlmLoop, LoopAdapter, LoopLimits
from edgeinfer.serving.sampling import SamplingParams
from edgeinfer.telemetry.metrics import LlmStats
from tests.helpers import until

VOCAB = 40
ADAPTERS = {name: LoopAdapter(name, handle=name) for name in "ABCD"}


def next_token(history: Sequence[int], adapter: str | None) -> int:
    salt = ord(adapter) if adapter else 0
    return 1 + (sum(history) * 7 + len(history) * 3 + salt * 11) % (VOCAB - 1)


def reference(prompt: list[int], n: int, adapter: str | None) -> list[int]:
    history, out = list(prompt), []
    for _ in range(n):
        out.append(next_token(history, adapter))
        history.append(out[-1])
    return out


class FakeLoraBackend:
    n_vocab = VOCAB
    eog = frozenset({0})

    def __init__(self) -> None:
        self.kv: dict[int, list[int]] = {}
        self.adapter_of: dict[int, str | None] = {}  # seq -> the adapter it was prefilled with
        self.current: str | None = None
        self.switches = 0  # set_adapter calls that changed the adapter
        self.log: list[tuple[int, str | None, list[int]]] = []  # (step, adapter, seqs)
        # per decode: the adapters of running requests, the slots of those past their prefill
        self.running: list[tuple[set[str | None], list[int]]] = []
        self.loop: LlmLoop | None = None
        self.hold = False  # when set, every decode waits for a permit (tests step by hand)
        self.permits = threading.Semaphore(0)
        self.entered = 0  # decodes started

    def set_adapter(self, handle: str | None, scale: float = 1.0) -> None:
        self.switches += handle != self.current
        self.current = handle

    def decode(self, items: Sequence[BatchItem]) -> np.ndarray:
        assert self.loop is not None
        self.log.append((self.loop.steps, self.current, [it.seq for it in items]))
        running = self.loop.running
        self.running.append(({r.adapter_key for r in running},
                             sorted(r.seq for r in running if r.decoding)))  # fmt: skip
        self.entered += 1
        if self.hold:
            assert self.permits.acquire(timeout=10), "the test never let this decode finish"
        rows = []
        for seq, tokens, pos, want in items:
            cells = self.kv.setdefault(seq, [])
            assert pos == len(cells), f"seq {seq}: position {pos}, cache holds {len(cells)}"
            if pos == 0:
                self.adapter_of[seq] = self.current
            assert self.adapter_of[seq] == self.current, (
                f"seq {seq} prefilled with {self.adapter_of[seq]}, decoded with {self.current}"
            )
            cells.extend(tokens)
            if want:
                row = np.linspace(-1.0, 0.0, VOCAB, dtype=np.float32)
                row[next_token(cells, self.current)] = 5.0
                rows.append(row)
        return np.array(rows, np.float32).reshape(len(rows), VOCAB)

    def free(self, seq: int) -> None:
        self.kv.pop(seq, None)

    def piece(self, token: int) -> bytes:
        return bytes([ord("a") + token % 26])

    def close(self) -> None:
        pass

    def runs(self) -> list[tuple[str | None, int]]:
        """(adapter, decodes in a row with it), in order."""
        out: list[tuple[str | None, int]] = []
        for _, adapter, _ in self.log:
            if out and out[-1][0] == adapter:
                out[-1] = (adapter, out[-1][1] + 1)
            else:
                out.append((adapter, 1))
        return out

    def steps(self) -> dict[int, list[str | None]]:
        """step -> the adapter of each decode in it, in order."""
        out: dict[int, list[str | None]] = {}
        for step, adapter, _ in self.log:
            out.setdefault(step, []).append(adapter)
        return out


def make(max_loras: int = 0, max_lora_wait: float = 60.0, slots: int = 8, k: int = 3,
         clock: Callable[[], float] | None = None) -> tuple[LlmLoop, FakeLoraBackend]:  # fmt: skip
    backend = FakeLoraBackend()
    limits = LoopLimits(slots, 64, 64 * slots, 8, max_loras=max_loras,
                        max_lora_wait=max_lora_wait, steps_per_switch=k)  # fmt: skip
    kw = {"clock": clock} if clock else {}
    loop = LlmLoop(backend, limits, LlmStats("m"), **kw)
    backend.loop = loop
    return loop, backend


def submit(loop: LlmLoop, prompt: list[int], adapter: str | None, n: int) -> GenerationStream:
    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
    return loop.submit(prompt, params, ADAPTERS[adapter] if adapter else None)


async def tokens(stream: GenerationStream) -> list[int]:
    return [t async for chunk in stream for t in chunk.token_ids]


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


# Two requests per adapter and two on the base model, with different prompts and lengths.
WORKLOAD = [(a, [i + 1, 2 * i + 3], 6 + i % 3) for i, a in enumerate("AABBCCDD")]
WORKLOAD += [(None, [9, 9], 5), (None, [8], 7)]


async def serve(loop: LlmLoop, backend: FakeLoraBackend,
                workload: list[tuple[str | None, list[int], int]] = WORKLOAD) -> list[list[int]]:  # fmt: skip
    """Run `workload`; the first decode is held until every request is queued, so they all meet
    the scheduler together however the engine thread is scheduled."""
    backend.hold = True
    first, *rest = workload
    entered = backend.entered
    streams = [submit(loop, first[1], first[0], first[2])]
    await until(lambda: backend.entered == entered + 1)
    streams += [submit(loop, prompt, a, n) for a, prompt, n in rest]
    backend.hold = False
    backend.permits.release()
    return await asyncio.gather(*(tokens(s) for s in streams))


def check_outputs(outs: list[list[int]], workload: list[tuple[str | None, list[int], int]]) -> None:
    for (adapter, prompt, n), out in zip(workload, outs, strict=True):
        assert out == reference(prompt, n, adapter), adapter


@pytest.mark.parametrize("k", [1, 3])
def test_a_group_keeps_the_context_for_k_steps_then_the_next_group_gets_it(k: int) -> None:
    loop, backend = make(slots=10, k=k)
    outs = run(serve(loop, backend))
    check_outputs(outs, WORKLOAD)
    steps = backend.steps()
    assert all(len(a) == 1 for a in steps.values())  # one adapter state, one decode, per step
    assert loop.decodes == len(backend.log) == loop.steps
    runs = backend.runs()
    last = {adapter: i for i, (adapter, _) in enumerate(runs)}
    for i, (adapter, n) in enumerate(runs):
        if last[adapter] != i:  # a turn cut short only by the group running out of work
            assert n == k, runs
        others = backend.running[sum(m for _, m in runs[:i]) + n - 1][0] - {adapter}
        assert n <= k or not others, runs  # longer only while no other group has work
    assert {a for a, _ in runs} == {None, "A", "B", "C", "D"}
    # The first group holds the context first; each switch is one set_adapter call (the
    # base model's first turn needs none: nothing is set yet).
    assert runs[0][0] == "A"
    assert backend.switches == len(runs)
    assert len(runs) <= sum(len(reference(p, n, a)) for a, p, n in WORKLOAD) // k + 5


def test_a_step_starts_with_the_adapter_already_set() -> None:
    async def main() -> None:
        loop, backend = make(k=4)
        assert await tokens(submit(loop, [1], "A", 2)) == reference([1], 2, "A")
        assert backend.current == "A" and backend.switches == 1
        gate = threading.Event()  # holds the engine thread until both requests are queued
        loop.call_later(lambda: gate.wait(10))
        await until(lambda: not loop._calls)
        b, a = submit(loop, [2], "B", 10), submit(loop, [3], "A", 10)
        gate.set()
        check_outputs([await tokens(b), await tokens(a)], [("B", [2], 10), ("A", [3], 10)])
        # B came first, but A is set: A's group goes on (2 steps in a row so far, K = 4).
        assert backend.runs() == [("A", 4), ("B", 4), ("A", 4), ("B", 4), ("A", 4), ("B", 2)]
        assert backend.switches == 1 + 5

    run(main())

    run(main())


def waits(backend: FakeLoraBackend) -> list[tuple[str | None, int, int]]:
    """(group, steps it had work but not the context in a row, most groups running meanwhile)."""
    out: list[tuple[str | None, int, int]] = []
    waiting: dict[str | None, tuple[int, int]] = {}
    for (_, adapter, _), (groups, _) in zip(backend.log, backend.running, strict=True):
        for g in groups - {adapter}:
            n, most = waiting.get(g, (0, 0))
            waiting[g] = (n + 1, max(most, len(groups)))
        for g in set(waiting) - (groups - {adapter}):
            out.append((g, *waiting.pop(g)))
    return out + [(g, n, most) for g, (n, most) in waiting.items()]


@pytest.mark.parametrize("k", [1, 2, 5])
def test_no_group_waits_more_than_the_other_groups_turns(k: int) -> None:
    loop, backend = make(slots=10, k=k)
    check_outputs(run(serve(loop, backend)), WORKLOAD)
    seen = waits(backend)
    assert seen and max(n for _, n, _ in seen) > 0
    for group, n, most in seen:
        assert n <= (most - 1) * k, (group, n, most, backend.runs())


def test_a_busy_group_cannot_starve_a_new_adapter() -> None:
    async def main() -> None:
        loop, backend = make(slots=4, k=3)
        backend.hold = True
        long = [submit(loop, [1], "A", 40)]
        await until(lambda: backend.entered == 1)
        long += [submit(loop, [i + 2], "A", 40) for i in range(2)]
        for _ in range(5):  # A alone: its group keeps the context past K steps
            backend.permits.release()
        await until(lambda: backend.entered == 6)
        late = submit(loop, [7], "B", 4)
        backend.hold = False
        backend.permits.release()
        outs = await asyncio.gather(*(tokens(s) for s in [*long, late]))
        check_outputs(outs, [("A", [1], 40), ("A", [2], 40), ("A", [3], 40), ("B", [7], 4)])
        runs = backend.runs()
        # A had had its K steps when B came: B's turn is the next step, then they alternate
        # until B is done and A has the context to itself again.
        assert runs == [("A", 6), ("B", 3), ("A", 3), ("B", 1), ("A", 41 - 6 - 3)]

    run(main())


@pytest.mark.parametrize("adapter", [None, "C"])
def test_one_group_decodes_every_sequence_every_step(adapter: str | None) -> None:
    workload = [(adapter, prompt, n) for _, prompt, n in WORKLOAD]
    loop, backend = make(slots=10, k=2)
    check_outputs(run(serve(loop, backend, workload)), workload)
    assert all(len(a) == 1 for a in backend.steps().values())
    for (_, _, seqs), (groups, decoding) in zip(backend.log, backend.running, strict=True):
        assert groups == {adapter}
        assert set(decoding) <= set(seqs)  # every sequence past its prefill, every step
    assert backend.switches == (adapter is not None)  # set once, never switched


def test_max_loras_bounds_the_adapter_groups_running_at_once() -> None:
    unbounded, backend = make(max_loras=0)
    run(serve(unbounded, backend))
    assert max(len(groups) for groups, _ in backend.running) > 2  # the workload needs the bound

    loop, backend = make(max_loras=2)
    check_outputs(run(serve(loop, backend)), WORKLOAD)
    assert max(len(groups) for groups, _ in backend.running) == 2
    assert {a for _, a, _ in backend.log} == {None, "A", "B", "C", "D"}  # all were served
    for group, n, most in waits(backend):
        assert n <= (most - 1) * 3, (group, n)


def test_a_request_passed_over_for_max_lora_wait_stops_later_ones_passing_it() -> None:
    now = [0.0]

    async def main() -> None:
        loop, backend = make(max_loras=1, max_lora_wait=1.0, slots=4, clock=lambda: now[0])
        backend.hold = True
        a1 = asyncio.ensure_future(tokens(submit(loop, [1], "A", 12)))
        await until(lambda: backend.entered == 1)  # A1's prefill, held

        c1 = submit(loop, [2], "C", 3)
        a2 = submit(loop, [3], "A", 3)
        backend.permits.release()
        await until(lambda: backend.entered == 2)
        # C would be a second adapter group: A2 (of the running group) goes ahead of it.
        assert [r.adapter_key for r in loop.running] == ["A", "A"]
        assert [r.adapter_key for r in loop.waiting] == ["C"]
        assert loop.adapters() == (["A"], ["C"])  # what vllm:lora_requests_info reports

        now[0] = 2.0  # C1 has now waited longer than max_lora_wait
        a3 = submit(loop, [4], "A", 3)
        backend.permits.release()
        await until(lambda: backend.entered == 3)
        assert [r.adapter_key for r in loop.waiting] == ["C", "A"]  # nothing passes C1 now

        backend.hold = False
        backend.permits.release()
        outs = await asyncio.gather(a1, tokens(c1), tokens(a2), tokens(a3))
        assert outs == [reference([1], 12, "A"), reference([2], 3, "C"), reference([3], 3, "A"),
                        reference([4], 3, "A")]  # fmt: skip
        # One group at a time (max_loras = 1), and A3 ran only after C1: A1 and A2, then C1,
        # then A3. Had A3 passed C1, C1 would have come last.
        assert max(len(set(a)) for a in backend.steps().values()) == 1
        runs = [
            a for i, (_, a, _) in enumerate(backend.log) if i == 0 or backend.log[i - 1][1] != a
        ]
        assert runs == ["A", "C", "A"]

    run(main())

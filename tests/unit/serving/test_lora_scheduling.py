"""Adapter groups in the LLM loop (serving/llm_loop.py) against a fake llama.cpp backend.

llama.cpp applies a LoRA per context, so each step must run one decode per adapter group with
that group's adapter set. The fake's next token depends on the sequence's history AND on the
adapter set at decode time, and it checks that a sequence is always decoded under the adapter
it was prefilled with: a scheduling bug shows as a wrong token or a failed assertion.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import numpy as np

from edgeinfer.runtime.llm_llamacpp import BatchItem
from edgeinfer.serving.llm_loop import GenerationStream, LlmLoop, LoopAdapter, LoopLimits
from edgeinfer.serving.sampling import SamplingParams
from edgeinfer.telemetry.metrics import LlmStats

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
        self.log: list[tuple[int, str | None, list[int]]] = []  # (step, adapter, seqs)
        self.loop: LlmLoop | None = None
        self.hold = False  # when set, every decode waits for a permit (tests step by hand)
        self.permits = threading.Semaphore(0)
        self.entered = 0  # decodes started

    def set_adapter(self, handle: str | None, scale: float = 1.0) -> None:
        self.current = handle

    def decode(self, items: Sequence[BatchItem]) -> np.ndarray:
        assert self.loop is not None
        self.log.append((self.loop.steps, self.current, [it.seq for it in items]))
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

    def steps(self) -> dict[int, list[str | None]]:
        """step -> the adapter of each decode in it, in order."""
        out: dict[int, list[str | None]] = {}
        for step, adapter, _ in self.log:
            out.setdefault(step, []).append(adapter)
        return out


def make(max_loras: int = 0, max_lora_wait: float = 60.0, slots: int = 8,
         clock: Callable[[], float] | None = None) -> tuple[LlmLoop, FakeLoraBackend]:  # fmt: skip
    backend = FakeLoraBackend()
    limits = LoopLimits(slots, 64, 64 * slots, 8, max_loras=max_loras, max_lora_wait=max_lora_wait)
    kw = {"clock": clock} if clock else {}
    loop = LlmLoop(backend, limits, LlmStats("m"), **kw)
    backend.loop = loop
    return loop, backend


def submit(loop: LlmLoop, prompt: list[int], adapter: str | None, n: int) -> GenerationStream:
    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
    return loop.submit(prompt, params, ADAPTERS[adapter] if adapter else None)


async def tokens(stream: GenerationStream) -> list[int]:
    return [t async for chunk in stream for t in chunk.token_ids]


async def until(check: Callable[[], bool]) -> None:
    for _ in range(5000):
        if check():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("timed out")


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


# Two requests per adapter and two on the base model, with different prompts and lengths.
WORKLOAD = [(a, [i + 1, 2 * i + 3], 6 + i % 3) for i, a in enumerate("AABBCCDD")]
WORKLOAD += [(None, [9, 9], 5), (None, [8], 7)]


async def serve(loop: LlmLoop, backend: FakeLoraBackend) -> list[list[int]]:
    """Run WORKLOAD; the first decode is held until every request is queued, so they all meet
    the scheduler together however the engine thread is scheduled."""
    backend.hold = True
    first, *rest = WORKLOAD
    streams = [submit(loop, first[1], first[0], first[2])]
    await until(lambda: backend.entered == 1)
    streams += [submit(loop, prompt, a, n) for a, prompt, n in rest]
    backend.hold = False
    backend.permits.release()
    return await asyncio.gather(*(tokens(s) for s in streams))


def test_every_step_decodes_each_adapter_group_once_with_its_adapter_in_rotating_order() -> None:
    loop, backend = make(slots=10)
    outs = run(serve(loop, backend))
    for (adapter, prompt, n), out in zip(WORKLOAD, outs, strict=True):
        assert out == reference(prompt, n, adapter), adapter
    steps = backend.steps()
    for step, adapters in steps.items():
        assert len(adapters) == len(set(adapters)), f"step {step} decoded a group twice"
    busy = [a for a in steps.values() if len(a) == 5]  # base model + A..D together
    assert len(busy) >= 3
    assert len({a[0] for a in busy}) > 1  # who goes first rotates: no group always waits
    assert loop.decodes == len(backend.log)


def test_max_loras_bounds_the_adapter_groups_of_every_step() -> None:
    unbounded, backend = make(max_loras=0)
    run(serve(unbounded, backend))
    assert max(len(a) for a in backend.steps().values()) > 2  # the workload needs the bound

    loop, backend = make(max_loras=2)
    outs = run(serve(loop, backend))
    for (adapter, prompt, n), out in zip(WORKLOAD, outs, strict=True):
        assert out == reference(prompt, n, adapter), adapter
    assert max(len(a) for a in backend.steps().values()) == 2
    assert {a for _, a, _ in backend.log} == {None, "A", "B", "C", "D"}  # all were served


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

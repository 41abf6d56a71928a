"""Requested outputs reach the backend: a run computes only the outputs its requests asked for,
and requests asking for different outputs never share a run (each gets what it asked for)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from edgeinfer.config import ModelConfig
from edgeinfer.runtime import load
from edgeinfer.serving.batcher import BatchPolicy
from edgeinfer.serving.runner import Runner
from edgeinfer.serving.scheduler import Scheduler
from edgeinfer.telemetry.stats import VersionStats
from edgeinfer.testing import models


class Recording:
    """A real ONNX Runtime model that records the output names each run was asked for."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.asked: list[list[str] | None] = []

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None):  # type: ignore[no-untyped-def]
        self.asked.append(output_names)
        return self.inner.run(feeds, output_names)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.inner.close()  # type: ignore[attr-defined]


def test_each_request_gets_the_outputs_it_asked_for_and_the_backend_computes_only_those(
    tmp_path: Path,
) -> None:
    path = models.identity_multi(tmp_path / "m.onnx")
    (tmp_path / "1").mkdir()
    path.rename(tmp_path / "1" / "model.onnx")
    model = Recording(load(tmp_path / "1", ModelConfig(name="m")))
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    b = np.ones((2, 2))
    s = np.array(["x", "y"], dtype=object)
    feeds = {"a": a, "b": b, "s": s}

    async def main() -> list[dict[str, np.ndarray]]:
        runner = Runner(workers=1)
        sched = Scheduler(
            [model],
            BatchPolicy(max_batch_size=8, max_queue_delay_us=50_000),
            runner,
            VersionStats("m", "1"),
            dynamic=True,
            batch_axis=True,
        )  # type: ignore[list-item]
        try:
            got = await asyncio.gather(
                sched.submit(feeds, outputs=("a_out",)),
                sched.submit(feeds, outputs=("b_out", "s_out")),
                sched.submit(feeds, outputs=("a_out",)),
            )
            return [r for r, _ in got]
        finally:
            await sched.close()
            runner.shutdown()

    first, second, third = asyncio.run(main())
    assert set(first) == {"a_out"} and set(third) == {"a_out"}
    np.testing.assert_array_equal(first["a_out"], a)
    assert set(second) == {"b_out", "s_out"}
    np.testing.assert_array_equal(second["b_out"], b)
    # Two runs: the two a_out requests shared one, and no run computed what nobody asked for.
    assert sorted(map(tuple, model.asked)) == [("a_out",), ("b_out", "s_out")]

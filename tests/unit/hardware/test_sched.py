"""Inference threads run niced so the event loop stays ahead of them on busy cores."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest

from edgeinfer.config import ConfigError, ModelConfig
from edgeinfer.hardware.sched import in_niced_thread, thread_nice
from edgeinfer.runtime.onnx import OnnxModel
from edgeinfer.testing import models


def thread_nices() -> dict[int, int]:
    """tid -> nice for every thread of this process, from /proc (field 19 of stat)."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:
            continue
        out[int(tid)] = int(stat.rsplit(")", 1)[1].split()[16])
    return out


def config(nice: int) -> ModelConfig:
    return ModelConfig.from_dict(
        {"max_batch_size": 4, "onnxruntime": {"intra_op_threads": 2, "nice": nice}}, "m"
    )


def test_session_threads_inherit_the_nice_and_the_caller_keeps_its_own(tmp_path: Path) -> None:
    version = tmp_path / "1"
    models.mlp(version / "model.onnx")
    OnnxModel.load(version, config(0))  # ORT's one-time threads start with the first session
    own = thread_nice()
    before = thread_nices()
    model = OnnxModel.load(version, config(7))
    started = {t: n for t, n in thread_nices().items() if t not in before}
    assert started and set(started.values()) == {7}  # ORT's intra-op pool thread(s)
    assert thread_nice() == own
    assert model.inputs  # (kept alive until here: its threads end with it)


def test_runs_on_a_worker_are_niced_but_never_the_event_loop(tmp_path: Path) -> None:
    version = tmp_path / "1"
    models.mlp(version / "model.onnx")
    model = OnnxModel.load(version, config(6))
    x = {"x": np.ones((1, 16), np.float32)}
    assert in_niced_thread(1, lambda: (model.run(x), thread_nice())[1]) == 6

    async def inline() -> int | None:
        model.run(x)  # as a tiny model runs inline on the event loop thread
        return thread_nice()

    assert asyncio.run(inline()) == thread_nice()


def test_nice_out_of_range_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="nice"):
        config(25)

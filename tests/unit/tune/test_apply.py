"""Applying a tuning result: config.toml keeps its comments; INT8 becomes a new version."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from edgeinfer.config import ModelConfig
from edgeinfer.repository import Repository
from edgeinfer.testing import models
from edgeinfer.tune.apply import apply, config_text
from edgeinfer.tune.space import Candidate

CONFIG = """# my model
max_batch_size = 16  # what the clients send at most

[dynamic_batching]
max_queue_delay_us = 100

[queue]
max_queue_size = 64  # keep
"""


def test_settings_are_written_and_comments_kept() -> None:
    text = config_text(CONFIG, Candidate(threads=2, instances=1).overrides(16))
    assert "# my model" in text and "# keep" in text
    raw = tomllib.loads(text)
    assert "dynamic_batching" not in raw  # the winner runs requests alone
    config = ModelConfig.from_dict(raw, "m")
    assert config.onnxruntime.intra_op_threads == 2 and config.queue.max_queue_size == 64


def test_batching_settings_are_written() -> None:
    c = Candidate(threads=1, instances=2, max_batch_size=8, max_queue_delay_us=2000)
    config = ModelConfig.from_dict(tomllib.loads(config_text(CONFIG, c.overrides(16))), "m")
    assert config.instance_count == 2 and config.max_batch_size == 8
    assert config.dynamic_batching is not None
    assert config.dynamic_batching.max_queue_delay_us == 2000


def test_a_new_model_is_published_as_the_next_version(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    models.publish(repo, "m", models.mlp(tmp_path / "a.onnx"), CONFIG)
    variant = tmp_path / "int8"
    variant.mkdir()
    models.mlp(variant / "model.onnx", seed=3)
    published = apply(repo / "m", Candidate(threads=2).overrides(16), variant)
    entry = Repository(repo).model("m")
    assert published == repo / "m" / "2" and [v.version for v in entry.versions] == [1, 2]
    assert entry.config.onnxruntime.intra_op_threads == 2
    assert not list((repo / "m").glob(".config.toml.*"))  # no temp file left behind


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "litert"])
def test_the_threads_go_to_the_backend_that_runs_the_model(backend: str) -> None:
    c = Candidate(backend=backend, threads=2, instances=1)
    config = ModelConfig.from_dict(tomllib.loads(config_text(CONFIG, c.overrides(16))), "m")
    assert config.backend == backend
    assert getattr(config, backend.replace(".", "")).intra_op_threads == 2

"""Shared fixtures: tiny model repositories and real servers on them (tests.helpers.serve)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgeinfer.testing import models
from tests.helpers import ServerProcess, serve


def infer_body(x: np.ndarray, **params: object) -> dict[str, object]:
    """A KServe v2 JSON request for input `x` (FP32), with request `parameters` if given."""
    tensor = {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    doc: dict[str, object] = {"inputs": [tensor]}
    if params:
        doc["parameters"] = params
    return doc


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with small models built by onnx.helper: mlp (2 versions), ids (dtypes)."""
    root = tmp_path_factory.mktemp("repo")
    build = tmp_path_factory.mktemp("build")
    models.publish(
        root,
        "mlp",
        models.mlp(build / "mlp1.onnx", seed=1),
        "max_batch_size = 8\n[version_policy]\nall = true\n",
    )
    models.publish(root, "mlp", models.mlp(build / "mlp2.onnx", seed=2))
    models.publish(root, "ids", models.identity_multi(build / "ids.onnx"))
    return root


@pytest.fixture(scope="session")
def tiny_server(
    tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with serve(tiny_repo, tmp_path_factory.mktemp("logs") / "server.log") as server:
        yield server


@pytest.fixture(scope="session")
def demo_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in demo repository, built once per test session."""
    from edgeinfer.demo import ensure_demo_repository

    return ensure_demo_repository(tmp_path_factory.mktemp("edgeinfer-home") / "demo")


@pytest.fixture(scope="session")
def demo_server(
    demo_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with serve(demo_repo, tmp_path_factory.mktemp("demo-logs") / "server.log") as server:
        yield server

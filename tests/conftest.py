"""Shared fixtures: tiny model repositories and a real server process on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgeinfer.testing import models


def infer_body(x: np.ndarray, **params: object) -> dict[str, object]:
    """A KServe v2 JSON request for input `x` (FP32), with request `parameters` if given."""
    tensor = {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    doc: dict[str, object] = {"inputs": [tensor]}
    if params:
        doc["parameters"] = params
    return doc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def http_addr(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(repo: Path, log_path: Path, *extra: str, timeout: float = 120.0,
                 wait_ready: bool = True) -> ServerProcess:  # fmt: skip
    http_port, grpc_port = free_port(), free_port()
    log = log_path.open("wb")
    cmd = [sys.executable, "-m", "edgeinfer.cli", "serve", "--repository", str(repo),
           "--host", "127.0.0.1", "--http-port", str(http_port), "--grpc-port", str(grpc_port),
           *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    server = ServerProcess(proc, http_port, grpc_port, log_path)
    deadline = time.monotonic() + timeout
    path = "/v2/health/ready" if wait_ready else "/v2/health/live"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + path, timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server not ready after {timeout}s:\n{server.log()}")


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
    server = start_server(tiny_repo, tmp_path_factory.mktemp("logs") / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def demo_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in demo repository, built once per test session."""
    from edgeinfer.demo import ensure_demo_repository

    return ensure_demo_repository(tmp_path_factory.mktemp("edgeinfer-home") / "demo")


@pytest.fixture(scope="session")
def demo_server(
    demo_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    server = start_server(demo_repo, tmp_path_factory.mktemp("demo-logs") / "server.log")
    yield server
    server.stop()

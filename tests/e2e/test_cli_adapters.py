"""`edgeinfer adapters list | add | load | unload` as a user runs them: a real process against a
repository and a running server; each command's success and one bad input (a non-zero exit code
and one readable line, never a traceback)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgeinfer.adapters.convert import convert_graph
from edgeinfer.runtime.lora_onnx import export_onnx_adapter
from edgeinfer.testing import models
from tests.helpers import ServerProcess, free_port, serve

EDGEINFER = [sys.executable, "-m", "edgeinfer.cli", "adapters"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGEINFER, *args], capture_output=True, text=True, timeout=120)


def ok(*args: str) -> str:
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def refused(*args: str) -> str:
    """The one line a failing command prints; it must exit non-zero without a traceback."""
    proc = cli(*args)
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeinfer: error: "), proc.stderr
    return lines[0]


def adapter_file(path: Path, seed: int) -> Path:
    """A per_run adapter for the MLP's w1 [16, 32] and w2 [32, 4]."""
    rng = np.random.default_rng(seed)

    def pair(d_in: int, d_out: int) -> tuple[np.ndarray, np.ndarray]:
        return (rng.standard_normal((d_in, 4)).astype(np.float32),
                rng.standard_normal((4, d_out)).astype(np.float32))  # fmt: skip

    return export_onnx_adapter(path, {"w1": pair(16, 32), "w2": pair(32, 4)})


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Adapter files x and y, ready to add or load."""
    out = tmp_path_factory.mktemp("cli-build")
    for name, seed in (("x", 1), ("y", 2)):
        adapter_file(out / f"{name}.onnx_adapter", seed)
    return out


@pytest.fixture(scope="module")
def repo(build: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-repo")
    graph = convert_graph(models.mlp(build / "mlp.onnx", seed=1), build / "lora", ["w1", "w2"],
                          stacked=False, rank=8)  # fmt: skip
    models.publish(root, "m", graph / "model.onnx", "max_batch_size = 8\n",
                   extra={"lora.json": graph / "lora.json"})  # fmt: skip
    return root


@pytest.fixture(scope="module")
def server(
    repo: Path, build: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with serve(repo, tmp_path_factory.mktemp("cli-logs") / "server.log",
               "--adapter-dir", str(build)) as srv:  # fmt: skip
        yield srv


def infer(server: ServerProcess, adapter: str | None) -> httpx.Response:
    body: dict = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                              "data": np.linspace(-1, 1, 16).tolist()}]}  # fmt: skip
    if adapter:
        body["parameters"] = {"adapter": adapter}
    return httpx.post(f"{server.url}/v2/models/m/infer", json=body, timeout=30)


def model_ids(server: ServerProcess) -> set[str]:
    return {m["id"] for m in httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"]}


def test_add_then_list(repo: Path, build: Path, tmp_path: Path) -> None:
    out = ok("add", "--repository", str(repo), "m", "x", str(build / "x.onnx_adapter"),
             "--tenant", "acme")  # fmt: skip
    assert Path(out.strip()) == repo / "m" / "adapters" / "x" / "1"
    ok("add", "--repository", str(repo), "m", "x", str(build / "y.onnx_adapter"))
    listing = ok("list", "--repository", str(repo)).splitlines()
    assert listing == ["m:x\tv2\tonnx\ttenants=*"]  # the newest version, granted to everyone

    line = refused("add", "--repository", str(repo), "mm", "z", str(build / "x.onnx_adapter"))
    assert "'mm' is not in the repository" in line
    assert not (repo / "mm").exists()  # a typo publishes nothing
    line = refused("list", "--repository", str(tmp_path / "nope"))
    assert "does not exist" in line


def test_load_and_unload_on_a_running_server(server: ServerProcess, build: Path) -> None:
    url = ["--url", server.url]
    base = infer(server, None).json()["outputs"][0]["data"]
    out = ok("load", *url, "m:y", str(build / "y.onnx_adapter"))
    assert "m:y" in out and "Success" in out
    assert "m:y" in model_ids(server)
    r = infer(server, "y")
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] != base

    line = refused("load", *url, "m:z", str(build / "missing.onnx_adapter"))
    assert "missing.onnx_adapter" in line and "server answered 400" in line
    line = refused("load", *url, "m:y", str(build / "y.onnx_adapter"))  # loaded already
    assert "already been loaded" in line

    out = ok("unload", *url, "m:y")
    assert "m:y" in out and "Success" in out
    assert "m:y" not in model_ids(server)
    assert infer(server, "y").status_code == 404
    line = refused("unload", *url, "m:y")
    assert "cannot be found" in line and "server answered 404" in line


def test_load_without_a_server_is_one_line(build: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    line = refused("load", "--url", url, "m:y", str(build / "y.onnx_adapter"))
    assert f"cannot reach the server at {url}" in line

"""Repository extension over HTTP: load/unload/index, and broken versions never replace good ones."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import httpx
import pytest

from edgeinfer.repository import add_version
from edgeinfer.testing import models
from tests.helpers import ServerProcess, serve

X = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}]}


@pytest.fixture
def server(tiny_repo: Path, tmp_path: Path) -> ServerProcess:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    (repo / "mlp" / "config.toml").write_text("max_batch_size = 8\n")  # latest 1 -> v2
    with serve(repo, tmp_path / "server.log") as s:
        yield s


def _infer_version(server: ServerProcess) -> str:
    r = httpx.post(f"{server.url}/v2/models/mlp/infer", json=X)
    assert r.status_code == 200, r.text
    return r.json()["model_version"]


@pytest.mark.parametrize("breakage", ["garbage onnx", "checksum mismatch"])
def test_broken_version_keeps_old_one_serving(
    server: ServerProcess, tmp_path: Path, breakage: str
) -> None:
    repo = Path(server.log_path).parent / "repo"
    assert _infer_version(server) == "2"
    model_dir = repo / "mlp"
    if breakage == "garbage onnx":
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"this is not an onnx model")
        add_version(model_dir, {"model.onnx": bad})
        needle = "could not load"
    else:
        v3 = add_version(model_dir, {"model.onnx": models.mlp(tmp_path / "m3.onnx", seed=3)})
        with (v3 / "model.onnx").open("ab") as f:
            f.write(b"\0")
        needle = "checksum mismatch"
    r = httpx.post(f"{server.url}/v2/repository/models/mlp/load")
    assert r.status_code == 400
    assert needle in r.json()["error"]
    assert _infer_version(server) == "2"
    rows = httpx.post(f"{server.url}/v2/repository/index", json={}).json()
    failed = [row for row in rows if row["name"] == "mlp" and row["version"] == "3"]
    assert failed and failed[0]["state"] == "UNAVAILABLE" and needle in failed[0]["reason"]
    ready = httpx.post(f"{server.url}/v2/repository/index", json={"ready": True}).json()
    assert all(row["state"] == "READY" for row in ready)


def test_half_written_version_is_invisible(server: ServerProcess) -> None:
    model_dir = Path(server.log_path).parent / "repo" / "mlp"
    (model_dir / "3").mkdir()
    shutil.copy(model_dir / "2" / "model.onnx", model_dir / "3" / "model.onnx")  # no manifest yet
    assert httpx.post(f"{server.url}/v2/repository/models/mlp/load").status_code == 200
    assert _infer_version(server) == "2"
    rows = httpx.post(f"{server.url}/v2/repository/index", json={}).json()
    assert {r["version"] for r in rows if r["name"] == "mlp"} == {"2"}


def test_good_new_version_is_swapped_in(server: ServerProcess, tmp_path: Path) -> None:
    repo = Path(server.log_path).parent / "repo"
    add_version(repo / "mlp", {"model.onnx": models.mlp(tmp_path / "m3.onnx", seed=3)})
    assert _infer_version(server) == "2"
    assert httpx.post(f"{server.url}/v2/repository/models/mlp/load").status_code == 200
    assert _infer_version(server) == "3"


def test_unload_unknown_model(server: ServerProcess) -> None:
    r = httpx.post(f"{server.url}/v2/repository/models/nope/unload")
    assert r.status_code == 404


def test_model_control_none_refuses_load(tiny_repo: Path, tmp_path: Path) -> None:
    with serve(tiny_repo, tmp_path / "log", "--model-control", "none") as s:
        r = httpx.post(f"{s.url}/v2/repository/models/mlp/unload")
        assert r.status_code == 503 and "model control" in r.json()["error"]
        assert httpx.post(f"{s.url}/v2/models/mlp/infer", json=X).status_code == 200


def test_sigterm_shuts_down_cleanly(server: ServerProcess) -> None:
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(15)
    log = server.log()
    assert "Traceback" not in log
    assert "Shutting down" in log or "Finished server process" in log

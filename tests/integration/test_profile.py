"""GET /v2/models/{m}/profile and `edgeinfer profile` on the demo digits CNN, on a real server."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers import ServerProcess


def _infer_digits(url: str) -> int:
    image = np.zeros((1, 1, 8, 8), np.float32)
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8],
                        "data": image.ravel().tolist()}]}  # fmt: skip
    return httpx.post(f"{url}/v2/models/digits/infer", json=body, timeout=30).status_code


def _exec_count(url: str) -> int:
    stats = httpx.get(f"{url}/v2/models/digits/stats", timeout=10).json()
    return int(stats["model_stats"][0]["execution_count"])


def test_profile_of_digits_over_http(demo_server: ServerProcess) -> None:
    url = demo_server.url
    before = _exec_count(url)
    # Serving goes on while a profile runs, and the profile never uses the live session.
    served: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set() and len(served) < 200:
            served.append(_infer_digits(url))

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        r = httpx.get(f"{url}/v2/models/digits/profile", params={"runs": 20, "batch": 8},
                      timeout=120)  # fmt: skip
    finally:
        stop.set()
        thread.join()
    assert r.status_code == 200, r.text
    assert served and set(served) == {200}
    assert _exec_count(url) == before + len(served)  # no run of the live session was ours

    doc = r.json()
    assert (doc["model"], doc["version"], doc["batch"], doc["runs"]) == ("digits", "1", 8, 20)
    assert doc["inputs"] == {"image": [8, 1, 8, 8]}
    layers = [n["layer"] for n in doc["nodes"]]
    assert any("layers/layers.0/Conv" in layer for layer in layers), layers
    assert any("layers/layers.2/Conv" in layer for layer in layers), layers
    assert "layers/layers.7/Gemm" in layers
    assert doc["op_types"][0]["op_type"].endswith("Conv"), doc["op_types"]  # Conv or FusedConv
    assert sum(o["share"] for o in doc["op_types"]) == pytest.approx(1.0, abs=0.01)
    assert 0 < doc["kernel_us"] <= doc["run_us"]["mean"] * 1.05


def test_profile_of_a_version(demo_server: ServerProcess) -> None:
    r = httpx.get(f"{demo_server.url}/v2/models/digits/versions/1/profile", params={"runs": 2},
                  timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    assert (r.json()["version"], r.json()["batch"]) == ("1", 1)


@pytest.mark.parametrize(("path", "params", "status", "needle"), [
    ("/v2/models/digits/profile", {"runs": "0"}, 400, "'runs' must be a positive integer, got 0"),
    ("/v2/models/digits/profile", {"runs": "1001"}, 400, "runs must be between 1 and 1000"),
    ("/v2/models/digits/profile", {"batch": "²"}, 400, "'batch' must be a positive integer"),
    ("/v2/models/digits/profile", {"runs": "ten"}, 400, "'runs' must be a positive integer"),
    ("/v2/models/digits/profile", {"batch": "65"}, 400, "batch must be between 1 and 64"),
    ("/v2/models/nope/profile", {}, 404, "not in the repository"),
    ("/v2/models/digits/versions/9/profile", {}, 404, "version 9 is not loaded"),
])  # fmt: skip
def test_profile_errors(demo_server: ServerProcess, path: str, params: dict[str, str],
                        status: int, needle: str) -> None:  # fmt: skip
    r = httpx.get(demo_server.url + path, params=params, timeout=30)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeinfer.cli", "profile", *args],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip


def test_cli_profile_asks_the_server(demo_server: ServerProcess) -> None:
    out = _cli("digits", "--url", demo_server.url, "--runs", "5", "--batch", "4")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("digits v1: batch 4, 5 runs")
    assert any("layers/layers.7/Gemm" in line and "Gemm" in line for line in lines)
    assert any(line.startswith("op type") for line in lines)
    md = _cli("digits", "--url", demo_server.url, "--runs", "2", "--markdown")
    assert md.returncode == 0, md.stderr
    assert "| layer | op | mean µs | p50 µs | share |" in md.stdout


def test_cli_profile_of_a_repository(demo_repo: Path) -> None:
    out = _cli("digits", "--repository", str(demo_repo), "--runs", "3", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert (doc["model"], doc["version"], doc["runs"]) == ("digits", "1", 3)
    bad = _cli("digits", "--repository", str(demo_repo), "--runs", "0")
    assert bad.returncode == 2 and "runs must be between 1 and 1000" in bad.stderr

"""--metrics-port (a second listener with /metrics alone) and --no-metrics (no per-request
statistics, no /metrics or /dashboard), against the real server."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers import free_port, samples, serve


def infer(url: str) -> httpx.Response:
    x = np.ones((1, 16), np.float32)
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16],
                       "data": x.reshape(-1).tolist()}]}  # fmt: skip
    return httpx.post(f"{url}/v2/models/mlp/versions/1/infer", json=doc, timeout=10)


def successes(url: str) -> float:
    name = "nv_inference_request_success"
    return samples(url, name).value(name, model="mlp", version="1")


def test_metrics_port_serves_the_same_counters_and_nothing_else(
    tiny_repo: Path, tmp_path: Path
) -> None:
    port = free_port()
    with serve(tiny_repo, tmp_path / "server.log", "--metrics-port", str(port)) as server:
        side = f"http://127.0.0.1:{port}"
        before = successes(side)
        for _ in range(3):
            assert infer(server.url).status_code == 200
        assert successes(side) == before + 3
        assert successes(server.url) == before + 3
        assert httpx.get(f"{side}/v2/health/ready").status_code == 404
        assert httpx.post(f"{side}/v2/models/mlp/infer", json={}).status_code == 404
    # Both listeners stop on SIGTERM (uvicorn re-raises it after a graceful shutdown).
    assert server.proc.returncode == -15, server.log()
    assert "Traceback" not in server.log()


def test_no_metrics_serves_inference_and_records_nothing(tiny_repo: Path, tmp_path: Path) -> None:
    with serve(tiny_repo, tmp_path / "server.log", "--no-metrics") as server:
        for _ in range(3):
            assert infer(server.url).status_code == 200
        assert httpx.get(f"{server.url}/v2/models/mlp/versions/1/infer").status_code == 405
        assert httpx.get(f"{server.url}/metrics").status_code == 404
        assert httpx.get(f"{server.url}/dashboard").status_code == 404
        stats = httpx.get(f"{server.url}/v2/models/mlp/versions/1/stats").json()
        assert stats["model_stats"][0]["inference_count"] == 0
        assert "--no-metrics" in server.log()  # the trade-off is logged at start


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--no-metrics", "--metrics-port", "9555"],
            "--metrics-port needs metrics on (drop --no-metrics)",
        ),
        (["--metrics-port", "70000"], "--metrics-port must be in 0..65535"),
    ],
)
def test_bad_metrics_flags_are_one_line_errors(
    tiny_repo: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    with serve(tiny_repo, tmp_path / "log", *args, wait="exit", timeout=60) as s:
        assert s.proc.returncode == 2
        assert s.log().strip().splitlines() == [f"edgeinfer: error: {message}"]


def test_a_taken_metrics_port_is_a_one_line_error(tiny_repo: Path, tmp_path: Path) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        flags = ("--grpc-port", "0", "--metrics-port", str(port))
        with serve(tiny_repo, tmp_path / "log", *flags, wait="exit", timeout=60) as s:
            assert s.proc.returncode == 2
    lines = s.log().strip().splitlines()
    assert lines[-1].startswith(f"edgeinfer: error: --metrics-port {port}: "), s.log()
    assert "Traceback" not in s.log()

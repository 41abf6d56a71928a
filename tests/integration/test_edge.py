"""The server on a fake Raspberry Pi sysfs tree that the test heats and cools mid-run, and the
memory budget refusing a model that does not fit."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from edgeinfer.testing import models
from tests.helpers import ServerProcess, metric, serve, wait_until
from tests.unit.hardware.trees import raspberry_pi

SLOW = """max_batch_size = 8
instance_count = 2
[dynamic_batching]
max_queue_delay_us = 20000
[queue]
max_queue_size = 32
"""
TEMP = "sys/class/thermal/thermal_zone0/temp"


@pytest.fixture
def pi(tmp_path: Path) -> Path:
    return raspberry_pi(tmp_path / "pi", temp_millideg=45_000)


@pytest.fixture
def server(pi: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    repo = tmp_path / "repo"
    models.publish(repo, "slow", models.slow(tmp_path / "slow.onnx", depth=40), SLOW)
    with serve(repo, tmp_path / "log", "--hardware-root", str(pi), "--temp-soft-c", "60",
               "--temp-hard-c", "80") as s:  # fmt: skip
        yield s


def burst(server: ServerProcess, n: int = 24) -> list[httpx.Response]:
    body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.1] * 16}]}
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: httpx.post(f"{server.url}/v2/models/slow/infer",
                                                  json=body, timeout=60), range(n)))  # fmt: skip


def batch_sizes(server: ServerProcess) -> dict[int, int]:
    stats = httpx.get(f"{server.url}/v2/models/slow/stats").json()["model_stats"][0]
    return {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}


def test_heat_shrinks_batches_rejects_with_thermal_and_recovers(server: ServerProcess,
                                                                pi: Path) -> None:  # fmt: skip
    assert metric(server.url, "edgeinfer_cpu_temperature_celsius") == 45.0
    assert metric(server.url, "edgeinfer_capacity_factor", reason="none") == 1.0
    cool = burst(server)
    assert all(r.status_code == 200 for r in cool)
    cool_sizes = batch_sizes(server)
    assert max(cool_sizes) > 2  # requests shared runs

    (pi / TEMP).write_text("80000\n")  # at the hard limit: capacity at its floor (0.25)
    wait_until(lambda: metric(server.url, "edgeinfer_capacity_factor", reason="thermal") == 0.25)
    hot = burst(server)
    codes = [r.status_code for r in hot]
    assert codes.count(200) >= 1
    rejected = [r for r in hot if r.status_code == 503]
    assert rejected, codes
    for r in rejected:
        assert "thermal" in r.json()["error"] and int(r.headers["Retry-After"]) >= 1
    hot_sizes = {b: n - cool_sizes.get(b, 0) for b, n in batch_sizes(server).items()}
    assert all(b <= 2 for b, n in hot_sizes.items() if n > 0), hot_sizes  # 8 x 0.25
    assert metric(server.url, "edgeinfer_admission_rejections_total", reason="thermal") == len(
        rejected
    )

    (pi / TEMP).write_text("50000\n")  # cooled: full capacity again
    wait_until(lambda: metric(server.url, "edgeinfer_capacity_factor", reason="none") == 1.0)
    assert all(r.status_code == 200 for r in burst(server, 12))


def test_memory_budget_refuses_what_does_not_fit(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    models.publish(repo, "small", models.mlp(tmp_path / "small.onnx"))
    models.publish(repo, "big", models.resnet18_like(tmp_path / "big.onnx", image=32))
    with serve(repo, tmp_path / "log", "--memory-budget-mb", "40", wait="live") as s:
        wait_until(lambda: httpx.get(f"{s.url}/v2/models/small/ready").status_code == 200)
        body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [1] * 16}]}
        assert httpx.post(f"{s.url}/v2/models/small/infer", json=body).status_code == 200
        r = httpx.post(f"{s.url}/v2/repository/models/big/load")
        assert r.status_code == 400  # a failed load, as Triton answers it
        msg = r.json()["error"]
        assert "big:v1" in msg and "memory budget" in msg and "short by" in msg
        assert httpx.post(f"{s.url}/v2/models/small/infer", json=body).status_code == 200
        st = httpx.get(f"{s.url}/v2/models/small/stats").json()["lifecycle"]["memory"]["1"]
        assert st["estimated_bytes"] > 0

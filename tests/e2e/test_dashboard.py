"""The dashboard in headless Chromium: open /dashboard, send traffic, watch the numbers move,
and check the request count on the page equals nv_inference_request_success in /metrics.

Needs Debian's `chromium` and `chromium-driver` (scripts/install-browser; .ci/run installs them).
If they are missing the test runs the install script once, and fails if that fails.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgeinfer.testing import models
from tests.helpers import ServerProcess, samples, serve, wait_until

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = ROOT / "test-artifacts"
README_SHOT = ROOT / "docs" / "dashboard.png"


def _need_browser() -> None:
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    out = subprocess.run(["bash", str(ROOT / "scripts" / "install-browser")],
                         capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    pytest.fail(
        "chromium/chromedriver missing and scripts/install-browser (needs root) failed: "
        + out.stderr.strip()
    )


@pytest.fixture(scope="module")
def server(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The demo models plus an MLP whose v2 is live and v1 a 25% canary (A/B)."""
    root = tmp_path_factory.mktemp("dash-repo")
    for name in ("digits", "minilm"):
        shutil.copytree(demo_repo / name, root / name)
    build = tmp_path_factory.mktemp("dash-build")
    models.publish(root, "mlp", models.mlp(build / "mlp1.onnx", seed=1),
                   "max_batch_size = 8\ncanary = { version = 1, weight = 0.25 }\n"
                   "[version_policy]\nall = true\n[dynamic_batching]\nmax_queue_delay_us = 500\n")  # fmt: skip
    models.publish(root, "mlp", models.mlp(build / "mlp2.onnx", seed=2))
    with serve(root, tmp_path_factory.mktemp("dash-logs") / "server.log") as proc:
        yield proc


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Any]:
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1280,1000",
                 f"--user-data-dir={tmp_path / 'chromium'}"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    drv.set_page_load_timeout(30)
    yield drv
    drv.quit()


# ---- traffic ----------------------------------------------------------------------------------
def _digits_body(rng: np.random.Generator) -> dict[str, Any]:
    image = rng.integers(0, 17, (1, 1, 8, 8)).astype(np.float32)
    return {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8],
                        "data": image.ravel().tolist()}]}  # fmt: skip


def _mlp_body(rng: np.random.Generator) -> dict[str, Any]:
    x = rng.standard_normal((2, 16)).astype(np.float32)
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 16],
                        "data": x.ravel().tolist()}]}  # fmt: skip


class Traffic:
    """A few client threads sending requests until stopped (bounded in count and time)."""

    def __init__(self, url: str, per_thread: int = 5000, seconds: float = 60.0) -> None:
        self._stop = threading.Event()
        self._end = time.monotonic() + seconds
        self.statuses: list[int] = []
        plan: list[tuple[str, Callable[[np.random.Generator], dict[str, Any]]]] = [
            ("digits", _digits_body), ("digits", _digits_body), ("mlp", _mlp_body),
        ]  # fmt: skip
        self._threads = [threading.Thread(target=self._run, args=(url, m, body, per_thread, i))
                         for i, (m, body) in enumerate(plan)]  # fmt: skip

    def _run(self, url: str, model: str, body: Callable[[np.random.Generator], dict[str, Any]],
             count: int, seed: int) -> None:  # fmt: skip
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=url, timeout=30) as client:
            for i in range(count):
                if self._stop.is_set() or time.monotonic() > self._end:
                    return
                r = client.post(f"/v2/models/{model}/infer", json=body(rng))
                self.statuses.append(r.status_code)
                if model == "mlp" and i % 50 == 0:  # a few failures for the errors column
                    bad = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3],
                                       "data": [0.0] * 3}]}  # fmt: skip
                    client.post(f"/v2/models/{model}/infer", json=bad)
                time.sleep(0.01)

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


# ---- the test ---------------------------------------------------------------------------------
def _metric_success(url: str, model: str, version: str) -> int:
    name = "nv_inference_request_success"
    return int(samples(url, name).value(name, model=model, version=version))


def test_dashboard_data(server: ServerProcess) -> None:
    """The JSON the page polls (no browser needed)."""
    doc = httpx.get(f"{server.url}/v2/dashboard/data", timeout=10).json()
    assert {"server", "t", "window_s", "models", "host", "llm"} <= set(doc)
    assert doc["llm"] is None and doc["server"]["ready"] is True
    by_name = {m["name"]: m for m in doc["models"]}
    assert set(by_name) == {"digits", "minilm", "mlp"}
    mlp = by_name["mlp"]
    assert (mlp["live"], mlp["canary"]) == ("2", {"version": "1", "weight": 0.25})
    roles = {v["version"]: (v["role"], v["weight"]) for v in mlp["versions"]}
    assert roles == {"1": ("canary", 0.25), "2": ("live", None)}
    version = by_name["digits"]["versions"][0]
    for key in ("success", "failure", "failures", "inference_count", "execution_count",
                "pending", "executing", "p50_ms", "p99_ms", "window_requests"):  # fmt: skip
        assert key in version, key
    host = doc["host"]
    assert host["rss_bytes"] > 10 * 2**20 and host["cpu_seconds"] > 0
    assert 0 < host["factor"] <= 1.0 and "temp_c" in host and "freq_cur_hz" in host


def test_dashboard_shows_live_numbers(server: ServerProcess, driver: Any) -> None:
    page = httpx.get(f"{server.url}/dashboard", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "://" not in page.text, "the page must be self-contained: no absolute URLs"

    def text(testid: str) -> str:
        # One script call: the page re-renders every 2 s, so held element references go stale.
        script = "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';"
        return str(driver.execute_script(script, f'[data-testid="{testid}"]')).strip()

    def spark_points() -> int:
        script = ("const l = document.querySelector('tr[data-model=\"digits\"][data-version=\"1\"]"
                  " polyline'); return l ? l.getAttribute('points').split(' ').length : 0;")  # fmt: skip
        return int(driver.execute_script(script))

    driver.get(f"{server.url}/dashboard")
    wait_until(what="the first sample", cond=lambda: text("requests-digits-1").isdigit())
    start = int(text("requests-digits-1"))
    with Traffic(server.url) as traffic:
        wait_until(
            what="the request count to grow",
            cond=lambda: int(text("requests-digits-1") or 0) > start,
        )
        wait_until(what="a request rate", cond=lambda: text("rate-digits-1").replace(".", "").isdigit()
              and float(text("rate-digits-1")) > 0)  # fmt: skip
        wait_until(what="a rate sparkline with a few points", cond=lambda: spark_points() >= 4)
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "dashboard.png"))
        if not README_SHOT.exists():
            README_SHOT.parent.mkdir(exist_ok=True)
            shutil.copyfile(ARTIFACTS / "dashboard.png", README_SHOT)
    assert traffic.statuses and set(traffic.statuses) == {200}

    # Once traffic stops, the page catches up with /metrics within a poll or two.
    def same_as_metrics() -> bool:
        shown = text("requests-digits-1")
        return shown.isdigit() and int(shown) == _metric_success(server.url, "digits", "1")

    wait_until(what="the page to show the count in /metrics", cond=same_as_metrics, timeout=10)
    assert int(text("requests-digits-1")) > start
    mlp = [_metric_success(server.url, "mlp", v) for v in ("1", "2")]
    wait_until(what="the mlp rows", cond=lambda: [text("requests-mlp-1"), text("requests-mlp-2")]
          == [str(n) for n in mlp], timeout=10)  # fmt: skip
    rows = text("model-mlp")
    assert "live" in rows and "canary 25%" in rows, rows
    assert text("llm-tokens") == "\u2013"  # the LLM tokens/s slot: empty until LLMs are served
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe

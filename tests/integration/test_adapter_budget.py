"""The adapter byte budget on a real server: least-recently-used idle adapters are evicted to
make room, reload on their next request with the right output, and an adapter that can never
fit is refused with a 4xx that says why, without evicting anything.

The budget is `--adapter-budget-mb 1`; every adapter file is ~300 KB, so three fit and a fourth
evicts one. Both ONNX LoRA modes run the same checks (per-run ORT adapters, and the stacked table
whose freed slots are reused, here with two instances running batches)."""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from edgeinfer.adapters.convert import convert_graph
from edgeinfer.adapters.store import add_adapter
from edgeinfer.runtime.lora_onnx import export_onnx_adapter
from edgeinfer.testing import models
from tests.helpers import Samples, ServerProcess, samples, serve

BUDGET = 1 << 20  # --adapter-budget-mb 1
N_IN, HIDDEN, N_OUT = 64, 256, 8
RANK = 128  # 4 * RANK * (64 + 256 + 256 + 8) B = 299 KB per adapter: three fit in 1 MB
HUGE_RANK = 480  # 1.1 MB: never fits
NAMES = ("a0", "a1", "a2", "a3")

Lora = dict[str, tuple[np.ndarray, np.ndarray]]


def _lora(rng: np.random.Generator, rank: int) -> Lora:
    """target -> (A [in, r], B [r, out]), scaled so the delta is about the size of the base."""

    def pair(d_in: int, d_out: int) -> tuple[np.ndarray, np.ndarray]:
        a = rng.standard_normal((d_in, rank)) / np.sqrt(d_in)
        b = rng.standard_normal((rank, d_out)) / np.sqrt(rank)
        return a.astype(np.float32), b.astype(np.float32)

    return {"w1": pair(N_IN, HIDDEN), "w2": pair(HIDDEN, N_OUT)}


def _reference(base: dict[str, np.ndarray], x: np.ndarray, lora: Lora | None) -> np.ndarray:
    w1, w2 = base["w1"].astype(np.float64), base["w2"].astype(np.float64)
    if lora:
        w1 = w1 + lora["w1"][0].astype(np.float64) @ lora["w1"][1]
        w2 = w2 + lora["w2"][0].astype(np.float64) @ lora["w2"][1]
    return np.maximum(x @ w1 + base["b1"], 0) @ w2


@pytest.fixture(scope="module", params=["per_run", "stacked"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    import onnx
    from onnx import numpy_helper

    mode = request.param
    root, build = tmp_path_factory.mktemp("budget-repo"), tmp_path_factory.mktemp("budget-build")
    base_file = models.mlp(build / "mlp.onnx", n_in=N_IN, hidden=HIDDEN, n_out=N_OUT, seed=1)
    base = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(base_file)).graph.initializer}
    # A stacked slot is padded to the graph's rank and charged that: at RANK it is the file's size.
    graph = convert_graph(base_file, build / "graph", ["w1", "w2"], mode == "stacked",
                          RANK if mode == "stacked" else 512)  # fmt: skip
    # Stacked: two instances (sessions) that the scheduler runs batches on, one table of slots.
    instances = 2 if mode == "stacked" else 1
    models.publish(root, "m", graph / "model.onnx",
                   f"max_batch_size = 8\ninstance_count = {instances}\n"
                   "[dynamic_batching]\nmax_queue_delay_us = 1000\n",
                   extra={"lora.json": graph / "lora.json"})  # fmt: skip
    rng = np.random.default_rng(7)
    loras = {name: _lora(rng, RANK) for name in NAMES}
    for name, lora in loras.items():
        add_adapter(root / "m", name, export_onnx_adapter(build / f"{name}.onnx_adapter", lora))
    huge = export_onnx_adapter(build / "huge.onnx_adapter", _lora(rng, HUGE_RANK))
    add_adapter(root / "m", "toobig", huge)
    size = (build / "a0.onnx_adapter").stat().st_size
    assert 3 * size <= BUDGET < 4 * size < BUDGET + size < huge.stat().st_size + size, size
    with serve(root, build / "server.log", "--adapter-budget-mb", "1",
               "--adapter-dir", str(build)) as server:  # fmt: skip
        yield {"server": server, "base": base, "loras": loras, "huge": huge, "mode": mode}


def _body(x: np.ndarray, adapter: str | None) -> dict:
    body: dict = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                              "data": x.ravel().tolist()}]}  # fmt: skip
    if adapter:
        body["parameters"] = {"adapter": adapter}
    return body


def _post(server: ServerProcess, x: np.ndarray, adapter: str | None) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/m/infer", json=_body(x, adapter), timeout=30)


def _check(env: dict, x: np.ndarray, adapter: str | None) -> None:
    """One request; its output must be the adapter's merged-weights output."""
    r = _post(env["server"], x, adapter)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    got = np.array(out["data"], np.float64).reshape(out["shape"])
    want = _reference(env["base"], x, env["loras"][adapter] if adapter else None)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def _metrics(server: ServerProcess) -> Samples:
    return samples(server.url, "edgeinfer_adapter_")


def _loads(snap: Samples, name: str) -> float:
    return snap.get("edgeinfer_adapter_loads_total", model="m", adapter=name) or 0.0


def _evictions(snap: Samples, name: str) -> float:
    return (
        snap.get("edgeinfer_adapter_unloads_total", model="m", adapter=name, reason="evict") or 0.0
    )


def test_lru_idle_adapter_is_evicted_and_reloads_on_demand(env: dict) -> None:
    server = env["server"]
    x = np.random.default_rng(0).standard_normal((2, N_IN)).astype(np.float32)
    outs = {a: _post(server, x, a).json()["outputs"][0]["data"] for a in (None, *NAMES)}
    assert len({tuple(np.round(v, 3)) for v in outs.values()}) == 5  # each adapter matters
    for name in ("a0", "a1", "a2", "a0"):  # resident: a0, a1, a2; a1 least recently used
        _check(env, x, name)
    before = _metrics(server)
    assert before.value("edgeinfer_adapter_resident") == 3

    _check(env, x, "a3")  # no room for a fourth: a1 goes, not a0 (used after it)
    after = _metrics(server)
    assert _evictions(after, "a1") - _evictions(before, "a1") == 1
    assert all(_evictions(after, n) == _evictions(before, n) for n in ("a0", "a2"))
    assert after.value("edgeinfer_adapter_resident") == 3

    _check(env, x, "a1")  # reloaded on demand (evicting a2), with a1's own output
    _check(env, x, "a0")  # still resident: never reloaded
    last = _metrics(server)
    assert _loads(last, "a1") - _loads(before, "a1") == 1
    assert _loads(last, "a0") == _loads(before, "a0")
    assert _evictions(last, "a2") - _evictions(before, "a2") == 1
    assert last.value("edgeinfer_adapter_resident") == 3


def test_adapter_that_cannot_fit_is_refused_with_a_4xx_and_nothing_is_evicted(env: dict) -> None:
    server = env["server"]
    x = np.ones((1, N_IN), np.float32)
    for name in ("a0", "a1", "a2"):
        _check(env, x, name)
    before = _metrics(server)

    r = httpx.post(f"{server.url}/v1/load_lora_adapter", timeout=30,
                   json={"lora_name": "m:huge", "lora_path": str(env["huge"])})  # fmt: skip
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "budget" in message and "m:huge" in message, message
    assert "huge" not in {m["id"].partition(":")[2]
                          for m in httpx.get(f"{server.url}/v1/models").json()["data"]}  # fmt: skip

    r = _post(server, x, "toobig")  # published in the repository: refused when first used
    assert r.status_code == 400, r.text
    assert "budget" in r.json()["error"] and "m:toobig" in r.json()["error"], r.text
    assert "retry-after" not in r.headers  # retrying cannot help

    after = _metrics(server)
    assert all(_evictions(after, n) == _evictions(before, n) for n in NAMES)
    assert after.value("edgeinfer_adapter_resident") == 3
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    for name in (None, "a0", "a1", "a2", "a3"):
        _check(env, x, name)


def test_mixed_adapters_churning_through_the_budget_stay_correct(env: dict) -> None:
    """Four adapters in flight with room for three: every reply must be its own adapter's
    (a reused stacked slot or a dropped ORT adapter would give another's), and the only
    refusals allowed are 503s with Retry-After when every resident adapter is in use."""
    server = env["server"]
    rng = np.random.default_rng(1)
    jobs = [(NAMES[i % 4], rng.standard_normal((1 + i % 3, N_IN)).astype(np.float32))
            for i in range(96)]  # fmt: skip

    def one(job: tuple[str, np.ndarray]) -> str:
        name, x = job
        r = _post(server, x, name)
        if r.status_code == 503:
            assert "retry-after" in r.headers and "budget" in r.text, r.text
            return "busy"
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        got = np.array(out["data"], np.float64).reshape(out["shape"])
        want = _reference(env["base"], x, env["loras"][name])
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
        return "ok"

    before = _metrics(server)
    with cf.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, jobs))
    assert results.count("ok") >= len(jobs) // 2, results
    after = _metrics(server)
    evicted = sum(_evictions(after, n) - _evictions(before, n) for n in NAMES)
    assert evicted >= 1  # the churn really went through eviction and reload
    assert after.value("edgeinfer_adapter_resident") <= 3
    for name in NAMES:  # and every adapter is served right once things settle
        _check(env, np.ones((1, N_IN), np.float32), name)

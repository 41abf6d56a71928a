"""LoRA adapters served for real: outputs against merged weights, mixed adapters in flight,
hot load/unload under traffic, memory after 50 cycles, tenant isolation."""

from __future__ import annotations

import concurrent.futures as cf
import os
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgeinfer.adapters.convert import convert_graph, convert_peft, write_peft
from edgeinfer.adapters.store import add_adapter
from edgeinfer.auth import hash_key
from edgeinfer.demo.gguf import LLM_DEMO_CONFIG
from edgeinfer.demo.lora import lora_pairs, write_gguf_lora
from edgeinfer.repository import add_version
from edgeinfer.runtime import gguf_writer
from edgeinfer.testing import models
from tests.helpers import ServerProcess, serve, wait_until

KEYS = {"admin": ("admin", None), "acme": ("infer", "acme"), "globex": ("infer", "globex")}
RANK = 4
PROMPT = "The quick brown fox"
N_TOKENS = 12


def _onnx_lora(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """PEFT layout: module -> (lora_A [r, in], lora_B [out, r]) for the mlp's w1 and w2."""
    return {"w1": (rng.standard_normal((RANK, 16)).astype(np.float32),
                   rng.standard_normal((32, RANK)).astype(np.float32)),
            "w2": (rng.standard_normal((RANK, 32)).astype(np.float32),
                   rng.standard_normal((4, RANK)).astype(np.float32))}  # fmt: skip


def _mlp_ref(base: dict[str, np.ndarray], x: np.ndarray,
             lora: dict[str, tuple[np.ndarray, np.ndarray]] | None) -> np.ndarray:  # fmt: skip
    w1, w2 = base["w1"].copy(), base["w2"].copy()
    if lora:  # merged: W + (B @ A)^T * alpha / r, alpha = 2r
        w1 += (lora["w1"][1] @ lora["w1"][0]).T * 2.0
        w2 += (lora["w2"][1] @ lora["w2"][0]).T * 2.0
    return np.maximum(x @ w1 + base["b1"], 0) @ w2


@pytest.fixture(scope="module")
def lora_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    import onnx
    from onnx import numpy_helper

    root = tmp_path_factory.mktemp("lora-repo")
    build = tmp_path_factory.mktemp("lora-build")
    rng = np.random.default_rng(3)
    # ONNX: the same MLP as a per-run LoRA graph and as a stacked one; adapters from PEFT.
    base = models.mlp(build / "mlp.onnx", seed=1)
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(base)).graph.initializer}
    onnx_loras = {"x": _onnx_lora(rng), "y": _onnx_lora(rng)}
    graphs = {}
    for model, stacked in (("mlp-lora", False), ("mlp-stacked", True)):
        graph = graphs[model] = convert_graph(base, build / model, ["w1", "w2"], stacked, rank=8)
        cfg = "max_batch_size = 8\n[dynamic_batching]\nmax_queue_delay_us = 2000\n"
        models.publish(root, model, graph / "model.onnx", cfg,
                       extra={"lora.json": graph / "lora.json"})  # fmt: skip
        for name, lora in onnx_loras.items():
            peft = write_peft(build / f"peft-{name}", lora, alpha=2.0 * RANK, r=RANK)
            out = convert_peft(peft, graph / "model.onnx", build / f"{model}-{name}")
            add_adapter(root / model, name, out, tenants=["acme"] if name == "x" else None)
    # GGUF: the tiny llama, adapters a1 (acme only) and a2 (everyone).
    shape = gguf_writer.SHAPES["tiny"]
    gguf_writer.build_gguf(build / "llm.gguf", "tiny", "f32", seed=0)
    (root / "llm").mkdir()
    (root / "llm" / "config.toml").write_text(LLM_DEMO_CONFIG)
    add_version(root / "llm", {"model.gguf": build / "llm.gguf"}, version=1)
    gguf_loras = {
        n: lora_pairs(shape, seed, rank=8) for n, seed in (("a1", 1), ("a2", 2), ("tmp", 3))
    }
    for name in ("a1", "a2"):
        path = write_gguf_lora(build / f"{name}.gguf", gguf_loras[name], alpha=8)
        add_adapter(root / "llm", name, path, tenants=["acme"] if name == "a1" else None)
    write_gguf_lora(build / "tmp.gguf", gguf_loras["tmp"], alpha=8)
    keys, lines = {}, []
    for name, (role, tenant) in KEYS.items():
        keys[name] = f"ei_test_{name}_key"
        lines.append(f'[[keys]]\nname = "{name}"\nrole = "{role}"\n'
                     f'sha256 = "{hash_key(keys[name])}"\n'
                     + (f'tenant = "{tenant}"\n' if tenant else ""))  # fmt: skip
    (build / "keys.toml").write_text("\n".join(lines))
    with serve(root, build / "server.log", "--api-keys", str(build / "keys.toml"),
               "--adapter-dir", str(build)) as server:  # fmt: skip
        yield {"server": server, "keys": keys, "weights": weights, "onnx_loras": onnx_loras,
               "gguf_loras": gguf_loras, "build": build, "root": root, "graphs": graphs}  # fmt: skip


def _h(env: dict, who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {env['keys'][who]}"}


def _infer(server: ServerProcess, headers: dict, model: str, x: np.ndarray,
           adapter: str | None) -> np.ndarray:  # fmt: skip
    body: dict = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                              "data": x.ravel().tolist()}]}  # fmt: skip
    if adapter:
        body["parameters"] = {"adapter": adapter}
    r = httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    return np.array(out["data"], np.float32).reshape(out["shape"])


@pytest.mark.parametrize("model", ["mlp-lora", "mlp-stacked"])
def test_onnx_adapters_match_merged_weights_also_mixed_in_flight(
    lora_env: dict, model: str
) -> None:
    server, w, loras = lora_env["server"], lora_env["weights"], lora_env["onnx_loras"]
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    acme = _h(lora_env, "acme")
    np.testing.assert_allclose(_infer(server, acme, model, x, None), _mlp_ref(w, x, None),
                               rtol=1e-4, atol=1e-3)  # fmt: skip
    np.testing.assert_allclose(_infer(server, acme, model, x, "x"), _mlp_ref(w, x, loras["x"]),
                               rtol=1e-4, atol=1e-3)  # fmt: skip
    # Many requests with different adapters at once: each gets its own adapter's output.
    jobs = [(a, x[i % 2 : i % 2 + 1]) for i, a in enumerate([None, "x", "y"] * 8)]
    with cf.ThreadPoolExecutor(12) as pool:
        outs = list(pool.map(lambda j: _infer(server, acme, model, j[1], j[0]), jobs))
    for (a, xi), out in zip(jobs, outs, strict=True):
        np.testing.assert_allclose(out, _mlp_ref(w, xi, loras[a] if a else None),
                                   rtol=1e-4, atol=1e-3)  # fmt: skip


@pytest.mark.parametrize("model", ["mlp-lora", "mlp-stacked"])
def test_a_new_adapter_version_is_served_instead_of_the_old(lora_env: dict, model: str) -> None:
    server, w, build = lora_env["server"], lora_env["weights"], lora_env["build"]
    x = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
    acme = _h(lora_env, "acme")
    versions = [_onnx_lora(np.random.default_rng(seed)) for seed in (41, 42)]
    for i, lora in enumerate(versions, 1):
        peft = write_peft(build / f"peft-z{i}-{model}", lora, alpha=2.0 * RANK, r=RANK)
        out = convert_peft(peft, lora_env["graphs"][model] / "model.onnx", build / f"{model}-z{i}")
        add_adapter(lora_env["root"] / model, "z", out)  # version i
        ref = _mlp_ref(w, x, lora)
        served = partial(_serves, server, acme, model, x, "z", ref)  # rescans every <= 2 s
        wait_until(served, 10, f"adapter z version {i} to be served")
        np.testing.assert_allclose(_infer(server, acme, model, x, "z"), _mlp_ref(w, x, lora),
                                   rtol=1e-4, atol=1e-3)  # fmt: skip


def _serves(server: ServerProcess, headers: dict, model: str, x: np.ndarray, adapter: str,
            want: np.ndarray) -> bool:  # fmt: skip
    """Whether `adapter` answers `x` with `want` (not yet known or still the old one: False)."""
    r = httpx.post(f"{server.url}/v2/models/{model}/infer", headers=headers, timeout=30,
                   json={"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                     "data": x.ravel().tolist()}],
                         "parameters": {"adapter": adapter}})  # fmt: skip
    if r.status_code != 200:
        return False
    out = r.json()["outputs"][0]
    got = np.array(out["data"], np.float32).reshape(out["shape"])
    return bool(np.allclose(got, want, rtol=1e-4, atol=1e-3))


def _complete(
    server: ServerProcess, headers: dict, model: str, n: int = N_TOKENS
) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/completions", headers=headers, timeout=60,
                      json={"model": model, "prompt": PROMPT, "max_tokens": n,
                            "temperature": 0})  # fmt: skip


def _merged_reference(build: Path, pairs: dict | None) -> str:
    """Greedy text of the tiny llama with B @ A * alpha / r merged into its weights, in-process."""
    from edgeinfer.config import LlmOptions
    from edgeinfer.runtime.llm_llamacpp import BatchItem, LlamaCppModel

    original = gguf_writer._weights
    name = "merged.gguf" if pairs else "plain.gguf"

    def merged(*args: object) -> Iterator:
        for tname, w in original(*args):  # type: ignore[arg-type]
            if pairs and tname in pairs:
                a, b = pairs[tname]
                w = (w + (b @ a) * (8.0 / a.shape[0])).astype(np.float32)
            yield tname, w

    gguf_writer._weights = merged  # type: ignore[assignment]
    try:
        gguf_writer.build_gguf(build / name, "tiny", "f32", seed=0)
    finally:
        gguf_writer._weights = original
    m = LlamaCppModel(build / name, LlmOptions(context_length=512, slots=1, kv_cache_type="f32",
                                               n_batch=256, prefill_chunk=128), 1)  # fmt: skip
    try:
        toks = m.tokenize(PROMPT)
        logits = m.decode([BatchItem(0, toks, 0, True)])
        out = []
        for k in range(N_TOKENS):
            t = int(logits[0].argmax())
            out.append(t)
            logits = m.decode([BatchItem(0, [t], len(toks) + k, True)])
        return b"".join(m.piece(t) for t in out).decode("utf-8", errors="replace")
    finally:
        m.close()


def test_gguf_adapter_matches_merged_model_and_mixed_adapters_stay_apart(lora_env: dict) -> None:
    server, build, loras = lora_env["server"], lora_env["build"], lora_env["gguf_loras"]
    acme = _h(lora_env, "acme")
    expected = {"llm": _merged_reference(build, None),
                "llm:a1": _merged_reference(build, loras["a1"]),
                "llm:a2": _merged_reference(build, loras["a2"])}  # fmt: skip
    assert len(set(expected.values())) == 3  # the adapters change the greedy output
    for model, text in expected.items():
        r = _complete(server, acme, model)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == text, model
    jobs = list(expected) * 4  # base and both adapters in flight together
    with cf.ThreadPoolExecutor(len(jobs)) as pool:
        replies = list(pool.map(lambda m: _complete(server, acme, m), jobs))
    for model, r in zip(jobs, replies, strict=True):
        assert r.json()["choices"][0]["text"] == expected[model], model


def test_tenants_use_and_see_only_their_adapters(lora_env: dict) -> None:
    server = lora_env["server"]
    globex, acme = _h(lora_env, "globex"), _h(lora_env, "acme")
    assert _complete(server, globex, "llm:a1", 2).status_code == 403
    assert _complete(server, globex, "llm:a2", 2).status_code == 200
    assert _complete(server, globex, "llm:nope", 2).status_code == 404
    x = np.zeros((1, 16), np.float32).tolist()
    body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": x}],
            "parameters": {"adapter": "x"}}  # fmt: skip
    r = httpx.post(f"{server.url}/v2/models/mlp-lora/infer", json=body, headers=globex)
    assert r.status_code == 403
    # A client cannot claim another tenant by header: the key decides.
    r = httpx.post(f"{server.url}/v2/models/mlp-lora/infer", json=body,
                   headers={**globex, "tenant": "acme"})  # fmt: skip
    assert r.status_code == 403
    ids = {who: {m["id"] for m in httpx.get(f"{server.url}/v1/models", headers=h).json()["data"]}
           for who, h in (("globex", globex), ("acme", acme))}  # fmt: skip
    assert "llm:a2" in ids["globex"] and "llm:a1" not in ids["globex"]
    assert "mlp-lora:x" not in ids["globex"] and "mlp-lora:y" in ids["globex"]
    assert {"llm:a1", "llm:a2", "mlp-lora:x", "mlp-stacked:x"} <= ids["acme"]
    metrics = httpx.get(f"{server.url}/metrics", headers=_h(lora_env, "admin")).text
    assert 'edgeinfer_tenant_requests_total{model="llm",tenant="globex"}' in metrics
    assert "vllm:lora_requests_info{" in metrics


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_hot_load_unload_under_traffic_and_memory_after_50_cycles(lora_env: dict) -> None:
    server, build = lora_env["server"], lora_env["build"]
    admin, acme = _h(lora_env, "admin"), _h(lora_env, "acme")
    url = server.url

    def cycle(check: bool) -> None:
        r = httpx.post(f"{url}/v1/load_lora_adapter", headers=admin,
                       json={"lora_name": "llm:tmp", "lora_path": str(build / "tmp.gguf")})  # fmt: skip
        assert r.status_code == 200, r.text
        assert _complete(server, acme, "llm:tmp", 2).status_code == 200  # loads it
        r = httpx.post(
            f"{url}/v1/unload_lora_adapter", headers=admin, json={"lora_name": "llm:tmp"}
        )
        assert r.status_code == 200, r.text
        if check:
            assert _complete(server, acme, "llm:tmp", 2).status_code == 404

    for _ in range(5):  # warm up allocator pools before the baseline
        cycle(False)
    baseline = _rss(server.proc.pid)
    stop, failures, done = False, [], [0]

    def traffic(model: str) -> None:
        while not stop:
            r = _complete(server, acme, model, 4)
            if r.status_code != 200:
                failures.append((model, r.status_code, r.text))
            done[0] += 1
            time.sleep(0.1)  # steady traffic; a tiny model's engine thread holds the GIL

    with cf.ThreadPoolExecutor(3) as pool:
        futs = [pool.submit(traffic, m) for m in ("llm:a1", "llm:a2", "llm")]
        for i in range(50):
            cycle(i % 10 == 0)
        stop = True
        for f in futs:
            f.result()
    assert not failures, failures[:3]
    assert done[0] > 0
    after = _rss(server.proc.pid)
    assert after <= baseline * 1.10, (baseline, after)
    # Unloading an unknown adapter is a 404, as in vLLM.
    r = httpx.post(f"{url}/v1/unload_lora_adapter", headers=admin, json={"lora_name": "llm:tmp"})
    assert r.status_code == 404
    assert os.path.exists(build / "tmp.gguf")

"""Adversarial reproductions against a real server: the failure limiter, forwarded headers,
/metrics exposure and tenant label cardinality, adapter paths, and slow connections.

Settings are given as EDGEINFER_* environment variables where that is enough, so the same
tests run (and fail on the behaviour, not on an unknown flag) against a server without them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from edgeinfer.adapters.convert import PEFT_CONFIG, convert_graph, convert_peft, write_peft
from edgeinfer.adapters.store import add_adapter
from edgeinfer.auth import hash_key
from edgeinfer.testing import models
from tests.helpers import ServerProcess, free_port, serve, wait_until

KEYS = {"admin": ("admin", None), "acme": ("infer", "acme"), "ops": ("infer", None)}
X = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}]}


def _keys(d: Path) -> tuple[Path, dict[str, str]]:
    keys, lines = {}, []
    for name, (role, tenant) in KEYS.items():
        keys[name] = f"ei_adversarial_{name}_key"
        lines.append(f'[[keys]]\nname = "{name}"\nrole = "{role}"\n'
                     f'sha256 = "{hash_key(keys[name])}"\n'
                     + (f'tenant = "{tenant}"\n' if tenant else ""))  # fmt: skip
    (d / "keys.toml").write_text("\n".join(lines))
    return d / "keys.toml", keys


def _h(key: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **extra}


def _lora(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {"w1": (rng.standard_normal((4, 16), np.float32),
                   rng.standard_normal((32, 4), np.float32))}  # fmt: skip


@pytest.fixture(scope="module")
def lora_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """`m`: the MLP as a LoRA graph, adapter `x` granted to tenant acme only."""
    root, build = tmp_path_factory.mktemp("adv-repo"), tmp_path_factory.mktemp("adv-build")
    graph = convert_graph(models.mlp(build / "mlp.onnx", seed=1), build / "graph", ["w1"],
                          stacked=False, rank=8)  # fmt: skip
    models.publish(root, "m", graph / "model.onnx", "max_batch_size = 8\n",
                   extra={"lora.json": graph / "lora.json"})  # fmt: skip
    out = convert_peft(write_peft(build / "peft-x", _lora(1), 8.0, 4), graph / "model.onnx",
                       build / "x")  # fmt: skip
    add_adapter(root / "m", "x", out, tenants=["acme"])
    return root, build


@pytest.fixture(scope="module")
def secured(lora_repo: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Keys on; adapters may come from `allowed/`; the server's temp dir is ours to inspect."""
    root, _ = lora_repo
    d = tmp_path_factory.mktemp("adv-secured")
    keys_file, keys = _keys(d)
    (d / "allowed").mkdir()
    (d / "tmp").mkdir()
    with serve(root, d / "server.log", "--api-keys", str(keys_file),
               env={"EDGEINFER_ADAPTER_DIRS": str(d / "allowed"), "TMPDIR": str(d / "tmp"),
                    "EDGEINFER_TENANTS": "globex"}) as server:  # fmt: skip
        yield server, keys, d


def _infer_x(server: ServerProcess, headers: dict[str, str]) -> httpx.Response:
    body = {**X, "parameters": {"adapter": "x"}}
    return httpx.post(f"{server.url}/v2/models/m/infer", json=body, headers=headers, timeout=30)


# ---- the failure limiter and forwarded headers ---------------------------------------------
def test_wrong_keys_never_lock_out_valid_keys_nor_hide_behind_forwarded_headers(
    lora_repo: tuple[Path, Path], tmp_path: Path
) -> None:
    keys_file, keys = _keys(tmp_path)
    with serve(lora_repo[0], tmp_path / "server.log", "--api-keys", str(keys_file)) as server:
        url = f"{server.url}/v2/models/m/infer"
        # X-Forwarded-For from 127.0.0.1 is not trusted by default: all count as 127.0.0.1.
        codes = [httpx.post(url, json=X, headers=_h(f"guess-{i:03d}", **{
            "X-Forwarded-For": f"10.0.{i}.1"})).status_code for i in range(15)]  # fmt: skip
        assert codes[:10] == [401] * 10 and codes[10:] == [429] * 5
        assert httpx.post(url, json=X, headers=_h("again")).status_code == 429
        for who in ("admin", "acme", "ops"):  # valid keys, even "from" the limited address
            r = httpx.post(url, json=X, headers=_h(keys[who], **{"X-Forwarded-For": "10.0.1.1"}))
            assert r.status_code == 200, (who, r.text)
        r = httpx.post(f"{server.url}/v2/repository/models/m/load", headers=_h(keys["admin"]))
        assert r.status_code == 200, r.text
        client = grpcclient.InferenceServerClient(server.grpc_addr)
        inp = grpcclient.InferInput("x", [1, 16], "FP32")
        inp.set_data_from_numpy(np.ones((1, 16), np.float32))
        with pytest.raises(InferenceServerException) as e:
            client.infer("m", [inp], headers={"authorization": "Bearer wrong"})
        assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        for who in ("admin", "acme"):
            out = client.infer("m", [inp], headers={"authorization": f"Bearer {keys[who]}"})
            assert out.as_numpy("y").shape == (1, 4)
        client.load_model("m", headers={"authorization": f"Bearer {keys['admin']}"})


def test_forwarded_headers_are_trusted_only_from_allowed_proxies(
    tiny_repo: Path, tmp_path: Path
) -> None:
    keys_file, keys = _keys(tmp_path)
    with serve(tiny_repo, tmp_path / "server.log", "--api-keys", str(keys_file),
               env={"EDGEINFER_FORWARDED_ALLOW_IPS": "127.0.0.1"}) as server:  # fmt: skip
        url = f"{server.url}/v2/models/mlp/infer"

        def post(key: str, client: str) -> int:
            return httpx.post(url, json=X, headers=_h(key, **{"X-Forwarded-For": client})
                              ).status_code  # fmt: skip

        assert [post(f"guess-{i:03d}", "10.1.2.3") for i in range(11)][-1] == 429
        assert post("guess-other", "10.9.9.9") == 401  # another client behind the proxy
        assert post(keys["ops"], "10.1.2.3") == 200  # the limited client's valid key


# ---- /metrics and tenants ------------------------------------------------------------------
def test_metrics_need_a_key_when_keys_are_configured(
    lora_repo: tuple[Path, Path], tmp_path: Path
) -> None:
    keys_file, keys = _keys(tmp_path)
    side = str(free_port())
    with serve(lora_repo[0], tmp_path / "server.log", "--api-keys", str(keys_file),
               "--metrics-port", side) as server:  # fmt: skip
        for base in (server.url, f"http://127.0.0.1:{side}"):
            assert httpx.get(f"{base}/metrics").status_code == 401, base
            assert httpx.get(f"{base}/metrics", headers=_h(keys["ops"])).status_code == 200
        assert httpx.get(f"{server.url}/dashboard").status_code == 401
    with serve(lora_repo[0], tmp_path / "open.log", "--api-keys", str(keys_file),
               "--open-metrics") as server:  # fmt: skip
        assert httpx.get(f"{server.url}/metrics").status_code == 200


def test_a_key_without_tenant_cannot_claim_one(secured: tuple) -> None:
    server, keys, _ = secured
    assert _infer_x(server, _h(keys["acme"])).status_code == 200  # the key's own tenant
    r = _infer_x(server, _h(keys["ops"], tenant="acme"))  # acme is a key's tenant, not listed
    assert r.status_code == 403, r.text
    r = _infer_x(server, _h(keys["ops"], **{"x-edgeinfer-tenant": "acme"}))  # nor by our header
    assert r.status_code == 403, r.text
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    inp = grpcclient.InferInput("x", [1, 16], "FP32")
    inp.set_data_from_numpy(np.ones((1, 16), np.float32))
    with pytest.raises(InferenceServerException) as e:  # the same over gRPC metadata
        client.infer("m", [inp], parameters={"adapter": "x"},
                     headers={"authorization": f"Bearer {keys['ops']}", "tenant": "acme",
                              "x-edgeinfer-tenant": "acme"})  # fmt: skip
    assert e.value.status() == "StatusCode.PERMISSION_DENIED"
    client.infer("m", [inp], parameters={"adapter": "x"},
                 headers={"authorization": f"Bearer {keys['acme']}"})  # fmt: skip
    ids = {m["id"] for m in httpx.get(f"{server.url}/v1/models",
                                      headers=_h(keys["ops"], tenant="acme")).json()["data"]}  # fmt: skip
    assert "m:x" not in ids
    for _ in range(3):
        httpx.post(f"{server.url}/v2/models/m/infer", json=X,
                   headers=_h(keys["ops"], tenant="globex"))  # fmt: skip
    text = httpx.get(f"{server.url}/metrics", headers=_h(keys["admin"])).text
    assert 'tenant="globex"' in text  # configured with --tenants: its own label


def test_tenant_headers_do_not_grow_metrics(tiny_repo: Path, tmp_path: Path) -> None:
    with serve(tiny_repo, tmp_path / "server.log") as server:  # no keys
        before = len(httpx.get(f"{server.url}/metrics").content)
        with httpx.Client() as client:
            for i in range(300):
                tenant = f"{i:04d}" + "t" * 4000
                r = client.post(f"{server.url}/v2/models/mlp/infer", json=X,
                                headers={"tenant": tenant})  # fmt: skip
                assert r.status_code == 200
        text = httpx.get(f"{server.url}/metrics").text
        assert "tttttttttt" not in text
        assert len(text) < before + 20_000, (before, len(text))


# ---- adapter paths -------------------------------------------------------------------------
def _load(server: ServerProcess, keys: dict[str, str], name: str, path: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/load_lora_adapter", headers=_h(keys["admin"]),
                      json={"lora_name": name, "lora_path": path}, timeout=60)  # fmt: skip


def _leftovers(d: Path) -> list[str]:
    return [p.name for p in (d / "tmp").glob("edgeinfer-lora-*")]


def test_adapter_paths_outside_allowed_directories_are_refused(secured: tuple) -> None:
    server, keys, d = secured
    for path in ("/etc/passwd", "/etc/no-such-file", str(d / "keys.toml")):
        r = _load(server, keys, "m:evil", path)
        assert r.status_code == 403, (path, r.status_code, r.text)
        assert "outside the directories" in r.json()["error"]["message"]
    (d / "allowed" / "link").symlink_to("/etc")
    r = _load(server, keys, "m:evil", str(d / "allowed" / "link" / "passwd"))
    assert r.status_code == 403, r.text
    assert "m:evil" not in httpx.get(f"{server.url}/v1/models", headers=_h(keys["admin"])).text


def test_the_cli_load_is_confined_too(secured: tuple) -> None:
    server, keys, _ = secured
    proc = subprocess.run([sys.executable, "-m", "edgeinfer.cli", "adapters", "load", "--url",
                           server.url, "--api-key", keys["admin"], "m:evil", "/etc/passwd"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode != 0 and "outside the directories" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_bad_adapter_loads_are_400s_naming_the_problem(secured: tuple) -> None:
    server, keys, d = secured
    allowed = d / "allowed"
    peft = write_peft(allowed / "peft-good", _lora(2), 8.0, 4)
    (allowed / "unicode" / "²").mkdir(parents=True)
    huge = write_peft(allowed / "peft-huge-config", _lora(3), 8.0, 4)
    with (huge / PEFT_CONFIG).open("r+b") as f:
        f.truncate(512 << 20)  # sparse: 512 MB to stat(), nothing on disk
    broken = write_peft(allowed / "peft-broken", _lora(4), 8.0, 4)
    (broken / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    cases = {
        ("m:a/b", str(peft)): "adapter name",
        ("m:long", "/" + "a" * 100_000): "characters long",
        ("m:uni", str(allowed / "unicode")): "adapter_model.safetensors",
        ("m:huge", str(huge)): "adapter config may have at most",
        ("m:broken", str(broken)): "safetensors",
    }
    for (name, path), message in cases.items():
        start = time.monotonic()
        r = _load(server, keys, name, path)
        assert r.status_code == 400, (name, r.status_code, r.text[:300])
        assert message in r.json()["error"]["message"], (name, r.text[:300])
        assert time.monotonic() - start < 10, name
    assert _leftovers(d) == []  # failed conversions leave no temporary folders
    (peft / "²").mkdir()  # a stray Unicode-digit folder beside a real PEFT adapter is harmless
    r = _load(server, keys, "m:good", str(peft))
    assert r.status_code == 200, r.text
    assert len(_leftovers(d)) == 1  # the converted copy, in the server's temp dir
    body = {**X, "parameters": {"adapter": "good"}}
    r = httpx.post(f"{server.url}/v2/models/m/infer", json=body, headers=_h(keys["ops"]))
    assert r.status_code == 200, r.text
    r = httpx.post(f"{server.url}/v1/unload_lora_adapter", headers=_h(keys["admin"]),
                   json={"lora_name": "m:good"})  # fmt: skip
    assert r.status_code == 200 and _leftovers(d) == []  # the converted copy goes with it


# ---- slow connections ----------------------------------------------------------------------
def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_slow_header_connections_are_closed_and_others_are_served(
    tiny_repo: Path, tmp_path: Path
) -> None:
    timeout = 3.0
    with serve(tiny_repo, tmp_path / "server.log",
               env={"EDGEINFER_HEADER_TIMEOUT_S": str(timeout)}) as server:  # fmt: skip
        baseline = _fds(server.proc.pid)
        socks = [socket.create_connection(("127.0.0.1", server.http_port)) for _ in range(200)]
        closed: set[int] = set()
        stop = threading.Event()

        def trickle() -> None:  # one header byte per second on every connection
            head = b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
            for i in range(len(head)):
                for n, s in enumerate(socks):
                    if n not in closed:
                        try:
                            s.send(head[i : i + 1])
                        except OSError:
                            closed.add(n)
                if stop.wait(1.0):
                    return

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        # They are (nearly) all open now.
        wait_until(lambda: _fds(server.proc.pid) >= baseline + 190, timeout, "200 open connections")
        # A normal client is served while the slow ones hold their connections.
        r = httpx.post(f"{server.url}/v2/models/mlp/infer", json=X, timeout=10)
        assert r.status_code == 200, r.text
        wait_until(lambda: _fds(server.proc.pid) <= baseline + 5, timeout + 10,
                   "the slow connections to be closed", interval=0.2)  # fmt: skip
        stop.set()
        t.join(5)
        assert _fds(server.proc.pid) <= baseline + 5, "slow connections are still open"
        for s in socks[:5]:
            s.settimeout(5)
            reply = b""
            try:
                while chunk := s.recv(4096):
                    reply += chunk
            except OSError:
                pass
            assert reply.startswith(b"HTTP/1.1 408 "), reply[:100]
        for s in socks:
            s.close()
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


def test_grpc_connections_that_never_speak_http2_are_closed(
    tiny_repo: Path, tmp_path: Path
) -> None:
    with serve(tiny_repo, tmp_path / "server.log",
               env={"EDGEINFER_HEADER_TIMEOUT_S": "2"}) as server:  # fmt: skip
        socks = [socket.create_connection(("127.0.0.1", server.grpc_port)) for _ in range(50)]
        for s in socks[::2]:
            s.sendall(b"PRI * HTTP/2.0\r\n")  # half a connection preface, then silence
        client = grpcclient.InferenceServerClient(server.grpc_addr)
        assert client.is_server_ready()  # a real client is served meanwhile
        start = time.monotonic()
        for s in socks:
            s.settimeout(max(0.1, start + 15 - time.monotonic()))
            try:
                while s.recv(4096):
                    pass
            except TimeoutError:
                pytest.fail("a silent gRPC connection is still open after 15 s")
            except OSError:
                pass  # reset: closed as well
            s.close()

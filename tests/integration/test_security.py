"""API keys with roles over HTTP, the OpenAI client and gRPC; TLS; binding rules."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.helpers import serve

X = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}]}


def create_key(keys: Path, role: str, tenant: str | None = None) -> str:
    cmd = [sys.executable, "-m", "edgeinfer.cli", "keys", "create", "--role", role,
           "--file", str(keys)] + (["--tenant", tenant] if tenant else [])  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def secured(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    d = tmp_path_factory.mktemp("secured")
    keys = d / "keys.toml"
    admin, infer = create_key(keys, "admin"), create_key(keys, "infer")
    assert admin not in keys.read_text() and infer not in keys.read_text()  # hashed at rest
    with serve(tiny_repo, d / "log", "--api-keys", str(keys), "--no-open-metrics") as server:
        yield server, admin, infer


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_http_roles(secured: tuple) -> None:
    server, admin, infer = secured
    url = server.url
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200  # open
    r = httpx.post(f"{url}/v2/models/mlp/infer", json=X)
    assert r.status_code == 401 and "missing API key" in r.json()["error"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert httpx.post(f"{url}/v2/models/mlp/infer", json=X, headers=auth("nope")).status_code == 401
    assert httpx.post(f"{url}/v2/models/mlp/infer", json=X, headers=auth(infer)).status_code == 200
    assert httpx.get(f"{url}/v2/models/mlp", headers=auth(infer)).status_code == 200
    r = httpx.post(f"{url}/v2/repository/models/ids/unload", headers=auth(infer))
    assert r.status_code == 403 and "needs 'admin'" in r.json()["error"]
    assert (
        httpx.post(f"{url}/v2/repository/models/ids/load", headers=auth(admin)).status_code == 200
    )
    assert httpx.get(f"{url}/metrics").status_code == 401  # --no-open-metrics
    text = httpx.get(f"{url}/metrics", headers=auth(infer)).text
    assert 'edgeinfer_auth_failures_total{reason="forbidden"}' in text


def test_openai_client_uses_the_key(secured: tuple) -> None:
    server, _, infer = secured
    ok = openai.OpenAI(base_url=server.url + "/v1", api_key=infer, max_retries=0)
    assert {m.id for m in ok.models.list().data} >= {"mlp", "ids"}
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_grpc_roles(secured: tuple) -> None:
    server, admin, infer = secured
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    assert client.is_server_live()  # open
    inp = grpcclient.InferInput("x", [1, 16], "FP32")
    inp.set_data_from_numpy(np.ones((1, 16), np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("mlp", [inp])
    assert e.value.status() == "StatusCode.UNAUTHENTICATED"
    assert client.infer("mlp", [inp], headers={"authorization": f"Bearer {infer}"}) is not None
    with pytest.raises(InferenceServerException) as e:
        client.unload_model("ids", headers={"authorization": f"Bearer {infer}"})
    assert e.value.status() == "StatusCode.PERMISSION_DENIED"
    client.load_model("ids", headers={"authorization": f"Bearer {admin}"})


def test_failed_attempts_are_rate_limited(tiny_repo: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    good = create_key(keys, "infer")
    with serve(tiny_repo, tmp_path / "log", "--api-keys", str(keys)) as server:
        codes = [httpx.post(f"{server.url}/v2/models/mlp/infer", json=X,
                            headers=auth(f"guess{i}")).status_code for i in range(12)]  # fmt: skip
        assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]
        r = httpx.post(f"{server.url}/v2/models/mlp/infer", json=X, headers=auth("guess"))
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1  # this address waits
        r = httpx.post(f"{server.url}/v2/models/mlp/infer", json=X, headers=auth(good))
        assert r.status_code == 200  # but a valid key is never refused by the limiter


def test_no_keys_means_loopback_only(tiny_repo: Path, tmp_path: Path) -> None:
    with serve(tiny_repo, tmp_path / "log", "--host", "0.0.0.0", wait="exit", timeout=60) as s:
        assert s.proc.returncode == 2
        assert "without API keys" in s.log() and "--insecure" in s.log()


def _self_signed(d: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))  # fmt: skip
    cert_path, key_path = d / "cert.pem", d / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


def test_tls_for_http_and_grpc(tiny_repo: Path, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    with serve(tiny_repo, tmp_path / "tls.log", tls=(cert, key), timeout=60) as server:
        http_port = server.http_port
        with httpx.Client(verify=_ctx(cert)) as c:
            r = c.post(f"https://127.0.0.1:{http_port}/v2/models/mlp/infer", json=X)
            assert r.status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=5)
        client = grpcclient.InferenceServerClient(server.grpc_addr, ssl=True,
                                                  root_certificates=str(cert))  # fmt: skip
        assert client.is_server_ready()
        plain = grpcclient.InferenceServerClient(server.grpc_addr)
        with pytest.raises(InferenceServerException):
            plain.is_server_ready()


def _ctx(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def test_limits_are_enforced_before_allocation(tiny_repo: Path, tmp_path: Path) -> None:
    with serve(tiny_repo, tmp_path / "log", "--max-tensors", "3", "--max-elements",
               "1000", "--max-string-bytes", "8") as server:  # fmt: skip
        url = f"{server.url}/v2/models/ids/infer"
        # A 10 GB shape declared in a 100-byte body: refused, nothing allocated.
        huge = {"inputs": [{"name": "b", "shape": [50000, 50000], "datatype": "FP64",
                            "data": [1.0]}]}  # fmt: skip
        r = httpx.post(url, json=huge)
        assert r.status_code == 400 and "more than 1000 elements" in r.json()["error"]
        many = {"inputs": [{"name": f"t{i}", "shape": [1], "datatype": "INT32", "data": [1]}
                           for i in range(4)]}  # fmt: skip
        r = httpx.post(url, json=many)
        assert r.status_code == 400 and "limit is 3" in r.json()["error"]
        long = {"inputs": [{"name": "s", "shape": [1], "datatype": "BYTES",
                            "data": ["123456789"]}]}  # fmt: skip
        r = httpx.post(url, json=long)
        assert r.status_code == 400 and "longer than 8 bytes" in r.json()["error"]
        client = grpcclient.InferenceServerClient(server.grpc_addr)
        s = grpcclient.InferInput("s", [1], "BYTES")
        s.set_data_from_numpy(np.array([b"123456789"], dtype=object))
        with pytest.raises(InferenceServerException) as e:
            client.infer("ids", [s])
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "8" in e.value.message()
        rss = int(Path(f"/proc/{server.proc.pid}/status").read_text().split("VmRSS:")[1].split()[0])
        assert rss < 1_000_000  # kB: nothing near 10 GB was allocated

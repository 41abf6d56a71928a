"""Verified hot reload, drain, rollback (manual and automatic), canary and A/B, persisted state."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient

from edgeinfer.repository import add_version
from edgeinfer.testing import models
from tests.helpers import ServerProcess, metric, serve, wait_until

X = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16)
BODY = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": X.ravel().tolist()}]}


def infer(server: ServerProcess, model: str = "m", **kw: object) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{model}/infer", json=BODY, timeout=30, **kw)  # type: ignore[arg-type]


def status(server: ServerProcess, model: str = "m") -> dict:
    return httpx.get(f"{server.url}/v2/repository/models/{model}/status").json()


def post(server: ServerProcess, action: str, model: str = "m", **body: object) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/repository/models/{model}/{action}", json=body, timeout=60)


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("lifecycle-build")
    return {"a": models.mlp(d / "a.onnx", seed=11), "b": models.mlp(d / "b.onnx", seed=12),
            "slow": models.slow(d / "slow.onnx", depth=60), "failing": models.failing(d / "f.onnx")}  # fmt: skip


def expected(path: Path) -> np.ndarray:
    return ort.InferenceSession(str(path)).run(None, {"x": X})[0]


def make_repo(root: Path, builds: dict[str, Path], config: str = "max_batch_size = 8\n") -> Path:
    models.publish(root, "m", builds["a"], config)
    return root


def test_twenty_reloads_under_load_drop_nothing(tmp_path: Path, builds: dict[str, Path]) -> None:
    # Automatic rollback off: on a loaded machine a latency blip must not undo a reload here.
    repo = make_repo(tmp_path / "repo", builds,
                     "max_batch_size = 8\n[lifecycle]\nauto_rollback = false\n")  # fmt: skip
    out_a, out_b = expected(builds["a"]), expected(builds["b"])
    with serve(repo, tmp_path / "log", "--model-control", "explicit") as server:
        results: list[tuple[int, str, np.ndarray | None]] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(timeout=30) as c:
                while not stop.is_set():
                    r = c.post(f"{server.url}/v2/models/m/infer", json=BODY)
                    data = r.json()
                    y = np.array(data["outputs"][0]["data"], np.float32).reshape(1, 4) if \
                        r.status_code == 200 else None  # fmt: skip
                    results.append((r.status_code, data.get("model_version", ""), y))

        threads = [threading.Thread(target=client) for _ in range(16)]
        try:
            for t in threads:
                t.start()
            for i in range(20):
                src = builds["b"] if i % 2 == 0 else builds["a"]
                add_version(repo / "m", {"model.onnx": src})
                r = httpx.post(f"{server.url}/v2/repository/models/m/load", timeout=60)
                assert r.status_code == 200, r.text
                assert status(server)["live"] == str(i + 2)
        finally:
            stop.set()
            for t in threads:
                t.join()
    assert len(results) > 200
    assert [code for code, _, _ in results if code != 200] == []
    for _, version, y in results:
        want = out_b if int(version) % 2 == 0 else out_a  # odd versions hold a, even ones b
        np.testing.assert_allclose(y, want, rtol=1e-6)
    assert len({v for _, v, _ in results}) >= 10  # traffic really spanned the reloads


def test_memory_is_flat_across_50_reloads(tmp_path: Path) -> None:
    build = tmp_path / "build"
    a = models.resnet18_like(build / "a.onnx", image=32, seed=1)
    b = models.resnet18_like(build / "b.onnx", image=32, seed=2)
    repo = tmp_path / "repo"
    models.publish(repo, "cnn", a, "max_batch_size = 4\n")
    with serve(repo, tmp_path / "log", "--model-control", "explicit") as server:
        body = {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                            "data": [0.5] * 3072}]}  # fmt: skip

        def rss() -> int:
            for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
            raise AssertionError("no VmRSS")

        def cycle(src: Path) -> None:
            add_version(repo / "cnn", {"model.onnx": src})
            r = httpx.post(f"{server.url}/v2/repository/models/cnn/load", timeout=60)
            assert r.status_code == 200, r.text
            assert httpx.post(f"{server.url}/v2/models/cnn/infer", json=body).status_code == 200

        cycle(b)
        cycle(a)  # two versions resident from here on (live + one previous)
        after_first = rss()
        for i in range(48):
            cycle(b if i % 2 == 0 else a)
        wait_until(lambda: len(status(server, "cnn")["resident"]) == 2)
        after_fifty = rss()
    assert after_fifty <= after_first * 1.10, (after_first, after_fifty)


@pytest.mark.parametrize("breakage", ["golden mismatch", "rejected by optimizer"])
def test_verification_failures_keep_the_old_version(
    tmp_path: Path, builds: dict[str, Path], breakage: str
) -> None:
    repo = make_repo(tmp_path / "repo", builds)
    with serve(repo, tmp_path / "log", "--model-control", "explicit") as server:
        extra = tmp_path / "extra"
        extra.mkdir()
        files = {"model.onnx": builds["b"]}
        if breakage == "golden mismatch":
            np.savez(extra / "in.npz", x=X)
            np.savez(extra / "out.npz", y=expected(builds["a"]))  # a's output: b differs
            files |= {"golden/case1.input.npz": extra / "in.npz",
                      "golden/case1.output.npz": extra / "out.npz"}  # fmt: skip
            needle, reason = "differs from the expected", "golden"
        else:
            (extra / "report.json").write_text(json.dumps(
                {"status": "rejected", "gate": {"reason": "top1 dropped 4.1 points > 0.5"}}))  # fmt: skip
            files["report.json"] = extra / "report.json"
            needle, reason = "top1 dropped", "rejected"
        add_version(repo / "m", files)
        r = post(server, "load")
        assert r.status_code == 400 and needle in r.json()["error"]
        assert infer(server).json()["model_version"] == "1"
        st = httpx.get(f"{server.url}/v2/models/m/stats").json()["lifecycle"]
        assert st["live"] == "1"
        assert st["load_failures"][-1]["reason"] == reason
        assert metric(server.url, "edgeinfer_model_load_failures_total", model="m",
                      reason=reason, version="2") == 1  # fmt: skip


def test_golden_match_is_accepted(tmp_path: Path, builds: dict[str, Path]) -> None:
    repo = make_repo(tmp_path / "repo", builds)
    extra = tmp_path / "extra"
    extra.mkdir()
    np.savez(extra / "in.npz", x=X)
    np.savez(extra / "out.npz", y=expected(builds["b"]))
    add_version(repo / "m", {"model.onnx": builds["b"], "golden/c.input.npz": extra / "in.npz",
                             "golden/c.output.npz": extra / "out.npz"})  # fmt: skip
    with serve(repo, tmp_path / "log") as server:
        assert infer(server).json()["model_version"] == "2"
        assert metric(server.url, "edgeinfer_model_loads_total", model="m", version="2") == 1


def test_manual_rollback_http_grpc_cli_and_restart(tmp_path: Path, builds: dict[str, Path]) -> None:
    repo = make_repo(tmp_path / "repo", builds)
    add_version(repo / "m", {"model.onnx": builds["b"]})
    add_version(repo / "m", {"model.onnx": builds["a"]})
    with serve(repo, tmp_path / "log", "--model-control", "explicit") as server:
        assert status(server)["live"] == "3"
        r = post(server, "rollback")  # to the previous live version... v3 was first live: none
        assert r.status_code == 400 and "no previous version" in r.json()["error"]
        r = post(server, "rollback", version=2)
        assert r.status_code == 200 and r.json()["live"] == "2"
        assert infer(server).json()["model_version"] == "2"
        # gRPC: rollback is a RepositoryModelLoad with edgeinfer.action parameters.
        client = grpcclient.InferenceServerClient(server.grpc_addr)
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_addr))
        req = service_pb2.RepositoryModelLoadRequest(model_name="m")
        req.parameters["edgeinfer.action"].string_param = "rollback"
        req.parameters["edgeinfer.version"].int64_param = 1
        stub.RepositoryModelLoad(req)
        inp = grpcclient.InferInput("x", [1, 16], "FP32")
        inp.set_data_from_numpy(X)
        assert client.infer("m", [inp]).get_response().model_version == "1"
        # CLI: roll back to 3 again.
        out = subprocess.run([sys.executable, "-m", "edgeinfer.cli", "models", "rollback", "m",
                              "--to", "3", "--url", server.url], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
        assert "live v3" in out
        # A reload does not silently re-promote what was rolled back from.
        assert post(server, "load").status_code == 200
        assert status(server)["live"] == "3"
    # State survives a restart.
    with serve(repo, tmp_path / "log2", "--model-control", "explicit") as server:
        assert status(server)["live"] == "3"
        assert infer(server).json()["model_version"] == "3"


def test_canary_split_and_sticky_ab(tmp_path: Path, builds: dict[str, Path]) -> None:
    repo = make_repo(
        tmp_path / "repo", builds, "max_batch_size = 8\n[version_policy]\nall = true\n"
    )
    add_version(repo / "m", {"model.onnx": builds["b"]})
    with serve(repo, tmp_path / "log", "--model-control", "explicit") as server:
        assert post(server, "rollback", version=1).status_code == 200
        r = post(server, "canary", version=2, weight=0.2)
        assert r.status_code == 200 and r.json()["canary"] == {"version": "2", "weight": 0.2}
        counts: Counter[str] = Counter()
        with httpx.Client() as c:
            for _ in range(2000):
                counts[
                    c.post(f"{server.url}/v2/models/m/infer", json=BODY).json()["model_version"]
                ] += 1
        # Binomial(2000, 0.2): mean 400, sd 17.9; +-5 sd.
        assert 310 <= counts["2"] <= 490, counts
        # Explicit versions always go where they say.
        r = httpx.post(f"{server.url}/v2/models/m/versions/2/infer", json=BODY)
        assert r.json()["model_version"] == "2"
        # Sticky: the same tenant always lands on the same version, by parameter or header.
        rng = random.Random(3)
        seen: dict[str, set[str]] = {}
        for _ in range(200):
            tenant = f"t{rng.randrange(20)}"
            body = {**BODY, "parameters": {"tenant": tenant}}
            v1 = httpx.post(f"{server.url}/v2/models/m/infer", json=body).json()["model_version"]
            v2 = infer(server, headers={"tenant": tenant}).json()["model_version"]
            seen.setdefault(tenant, set()).update({v1, v2})
        assert all(len(v) == 1 for v in seen.values()), seen
        assert {next(iter(v)) for v in seen.values()} == {"1", "2"}  # both sides used
        assert post(server, "promote").json()["live"] == "2"
        assert status(server)["canary"] is None
        assert {infer(server).json()["model_version"] for _ in range(20)} == {"2"}


@pytest.mark.parametrize("bad", ["failing", "slow"])
def test_automatic_rollback_of_a_regressed_version(
    tmp_path: Path, builds: dict[str, Path], bad: str
) -> None:
    config = "max_batch_size = 8\n[lifecycle]\nmin_requests = 10\nwindow_s = 60\n"
    repo = make_repo(tmp_path / "repo", builds, config)
    with serve(repo, tmp_path / "log", "--model-control", "explicit") as server:
        body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [9.0] * 16}]}
        with httpx.Client(timeout=30) as c:
            for _ in range(60):  # baseline traffic on v1
                assert c.post(f"{server.url}/v2/models/m/infer", json=body).status_code == 200
            add_version(repo / "m", {"model.onnx": builds[bad]})
            assert post(server, "load").status_code == 200
            assert status(server)["live"] == "2"

            def rolled_back() -> bool:  # traffic on v2 until it is rolled back
                if status(server)["live"] != "2":
                    return True
                c.post(f"{server.url}/v2/models/m/infer", json=body)
                return False

            wait_until(rolled_back, 30, "an automatic rollback", interval=0)
        st = status(server)
        assert st["live"] == "1" and st["blocked"] == ["2"]
        last = st["history"][-1]
        assert last["event"] == "rollback" and last["reason"].startswith("auto: ")
        assert ("error rate" if bad == "failing" else "p99 latency") in last["reason"]
        assert metric(server.url, "edgeinfer_model_rollbacks_total", kind="auto", model="m") == 1


def test_poll_mode_picks_up_a_version_added_by_the_cli(
    tmp_path: Path, builds: dict[str, Path]
) -> None:
    repo = make_repo(tmp_path / "repo", builds)
    with serve(repo, tmp_path / "log", "--model-control", "poll") as server:
        subprocess.run([sys.executable, "-m", "edgeinfer.cli", "models", "add", str(repo), "m",
                        str(builds["b"])], check=True, capture_output=True)  # fmt: skip
        wait_until(lambda: infer(server).json()["model_version"] == "2")
        # A corrupt version written by hand is refused; v2 keeps serving.
        v3 = add_version(repo / "m", {"model.onnx": builds["a"]})
        (v3 / "model.onnx").write_bytes(b"garbage")
        wait_until(lambda: any(f["version"] == "3" for f in status(server)["load_failures"]))
        assert infer(server).json()["model_version"] == "2"


def test_kill_9_mid_rollback_leaves_a_loadable_repository(
    tmp_path: Path, builds: dict[str, Path]
) -> None:
    repo = make_repo(tmp_path / "repo", builds)
    for src in ("b", "a", "b"):
        add_version(repo / "m", {"model.onnx": builds[src]})
    rng = random.Random(7)
    for i in range(5):
        with serve(repo, tmp_path / f"log{i}", "--model-control", "explicit") as server:
            stop = threading.Event()

            def churn(s: ServerProcess = server, stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    try:
                        post(s, "rollback", version=rng.choice([1, 2, 3, 4]))
                        post(s, "canary", version=rng.choice([1, 2, 3, 4]), weight=0.3)
                        post(s, "promote")
                    except httpx.HTTPError:
                        return

            t = threading.Thread(target=churn)
            t.start()
            # A random moment to kill at: the behaviour under test.
            time.sleep(rng.uniform(0.2, 1.0))
            os.kill(server.proc.pid, signal.SIGKILL)
            server.proc.wait()
            stop.set()
            t.join()
        doc = json.loads((repo / "m" / "state.json").read_text())  # never torn
        assert doc["live"] in (1, 2, 3, 4)
    with serve(repo, tmp_path / "final", "--model-control", "explicit") as server:
        assert infer(server).status_code == 200

"""A fleet against a real etcd on 127.0.0.1: convergence, canary, bad artifacts, halting, etcd
outages and dead devices. etcd comes from scripts/install-etcd."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgeinfer.cli import main
from edgeinfer.registry import Canary, DesiredModel, EtcdRegistry, FileSource
from edgeinfer.registry.source import parse_url
from edgeinfer.testing import models
from tests.helpers import ServerProcess, free_port, samples, serve, wait_until

X = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16)
BODY = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": X.ravel().tolist()}]}
BAD = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [9.0] * 16}]}


@dataclass
class Etcd:
    data_dir: Path
    log_path: Path
    port: int
    peer_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def registry(self, prefix: str, ttl: int = 3) -> str:
        return f"etcd://127.0.0.1:{self.port}/{prefix}?ttl={ttl}"

    def start(self) -> None:
        exe = shutil.which("etcd")
        assert exe is not None
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.proc = subprocess.Popen(
            [exe, "--name", "t", "--data-dir", str(self.data_dir),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"t={peer}"],
            stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_until(self._healthy, 20)

    def _healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    if shutil.which("etcd") is None:  # scripts/test and .ci/run install it (as root)
        pytest.fail("etcd is not installed: run scripts/install-etcd as root")
    d = tmp_path_factory.mktemp("etcd")
    server = Etcd(d / "data", d / "etcd.log", free_port(), free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fleet-build")
    out = {f"v{i}": models.mlp(d / f"v{i}.onnx", seed=40 + i) for i in (1, 2, 3)}
    out["failing"] = models.failing(d / "failing.onnx")
    return out


@pytest.fixture(scope="module")
def artifacts_url(builds: dict[str, Path]) -> Iterator[str]:
    """The build folder over HTTP on 127.0.0.1, as an artifact store would serve it."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(builds["v1"].parent))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def device(tmp: Path, name: str, builds: dict[str, Path], registry: str,
           group: str = "g") -> contextlib.AbstractContextManager[ServerProcess]:  # fmt: skip
    """A server on its own copy of v1 in the fleet `registry` (started on entering)."""
    repo = tmp / name
    models.publish(repo, "m", builds["v1"], "max_batch_size = 8\n")
    return serve(repo, tmp / f"{name}.log", "--registry", registry,
                 "--device-id", name, "--device-group", group)  # fmt: skip


def status(server: ServerProcess) -> dict:
    return httpx.get(f"{server.url}/v2/repository/models/m/status", timeout=10).json()


def infer(server: ServerProcess, body: dict = BODY, version: str = "") -> httpx.Response:
    path = f"/v2/models/m/versions/{version}/infer" if version else "/v2/models/m/infer"
    return httpx.post(server.url + path, json=body, timeout=10)


def connected(server: ServerProcess) -> float:
    return samples(server.url, "edgeinfer_registry_connected").value("edgeinfer_registry_connected")


def fleet(args: list[str]) -> int:
    return main(["fleet", *args])


def run_fleet(*args: str) -> int:
    return fleet(list(args))


def fleet_status(registry: str) -> dict:
    out = StringIO()
    with redirect_stdout(out):
        assert fleet(["status", "--json", "--registry", registry]) == 0
    return dict(json.loads(out.getvalue()))


def test_devices_converge_obey_the_canary_refuse_bad_artifacts_and_halt(
    etcd: Etcd, builds: dict[str, Path], artifacts_url: str, tmp_path: Path
) -> None:
    reg = etcd.registry("t1")
    with device(tmp_path, "a", builds, reg) as a, device(tmp_path, "b", builds, reg) as b:
        both = (a, b)
        # Roll out v2 from a local artifact: both devices fetch, verify and promote it.
        assert run_fleet("set", "m", "2", "--group", "g", "--artifact", str(builds["v2"]),
                         "--adapter", "bot=acme,globex", "--registry", reg) == 0  # fmt: skip
        start = time.monotonic()
        wait_until(lambda: all(status(s)["live"] == "2" for s in both), 15)
        converged_s = time.monotonic() - start
        desired = fleet_status(reg)["desired"]["g"]["m"]
        assert desired["adapters"] == {"bot": ["acme", "globex"]} and desired["previous"] is None
        assert all(infer(s).json()["model_version"] == "2" for s in both)

        # A canary at 30 %, its artifact from an HTTP server: every device routes that share to v3.
        assert run_fleet("set", "m", "2", "--group", "g", "--canary", "3", "--weight", "0.3",
                         "--artifact", f"{artifacts_url}/v3.onnx", "--registry", reg) == 0  # fmt: skip
        wait_until(lambda: all(status(s)["canary"] == {"version": "3", "weight": 0.3}
                               for s in both), 15)  # fmt: skip
        with httpx.Client() as c:
            counts = Counter(c.post(f"{a.url}/v2/models/m/infer", json=BODY).json()["model_version"]
                             for _ in range(400))  # fmt: skip
        assert 80 <= counts["3"] <= 160, counts  # Binomial(400, 0.3): mean 120, sd 9.2

        # A wrong sha256 is refused before use: nothing published, v2 keeps serving, the
        # error is in the fleet status.
        wrong = {4: {"model.onnx": FileSource(str(builds["v1"]), "0" * 64)}}
        asyncio.run(write_desired(reg, DesiredModel(2, Canary(4, 0.5), wrong, previous=1)))

        def refused() -> bool:
            devices = fleet_status(reg)["devices"]
            return all("sha256" in devices.get(n, {}).get("models", {}).get("m", {}).get("error", "")
                       for n in ("a", "b"))  # fmt: skip

        wait_until(refused, 15)
        for s, name in ((a, "a"), (b, "b")):
            assert status(s)["live"] == "2" and status(s)["canary"] is None
            assert not (tmp_path / name / "m" / "4").exists()
            assert infer(s).json()["model_version"] == "2"

        # A canary that fails on real traffic halts the rollout group-wide (CAS, no leader).
        assert run_fleet("set", "m", "2", "--group", "g", "--canary", "5", "--weight", "0.2",
                         "--artifact", str(builds["failing"]), "--min-requests", "10",
                         "--registry", reg) == 0  # fmt: skip
        wait_until(lambda: all(status(s)["canary"] is not None for s in both), 15)
        for _ in range(10):  # min_requests: the 10th error halts it (v5 then unloads)
            assert infer(b, BAD, version="5").status_code >= 500
        wait_until(lambda: "HALTED" in _desired_halted(reg), 15)
        wait_until(lambda: all(status(s)["canary"] is None for s in both), 15)
        assert all(status(s)["live"] == "2" for s in both)
        print(f"converged in {converged_s:.1f}s")
        assert converged_s < 10


async def write_desired(registry: str, desired: DesiredModel) -> None:
    r = EtcdRegistry(*parse_url(registry)[:2])
    try:
        await r.write("g", "m", desired)
    finally:
        await r.close()


def _desired_halted(registry: str) -> str:
    doc = fleet_status(registry)["desired"]["g"]["m"]
    return f"HALTED: {doc['halted']}" if doc["halted"] else ""


def test_etcd_outage_keeps_serving_then_converges_and_dead_devices_leave(
    etcd: Etcd, builds: dict[str, Path], tmp_path: Path
) -> None:
    reg = etcd.registry("t2")
    assert run_fleet("set", "m", "2", "--group", "g", "--artifact", str(builds["v2"]),
                     "--registry", reg) == 0  # fmt: skip
    with contextlib.ExitStack() as running:
        a = running.enter_context(device(tmp_path, "a", builds, reg))
        b = running.enter_context(device(tmp_path, "b", builds, reg))
        both = (a, b)
        # Ready means converged: the desired v2 serves the moment a device reports ready.
        assert all(status(s)["live"] == "2" for s in both)
        assert all(infer(s).json()["model_version"] == "2" for s in both)
        wait_until(lambda: set(fleet_status(reg)["devices"]) == {"a", "b"}, 10)

        etcd.stop()
        wait_until(lambda: all(connected(s) == 0 for s in both), 15)
        for _ in range(20):  # serving goes on, nothing unloaded
            assert all(infer(s).json()["model_version"] == "2" for s in both)
        assert (tmp_path / "a" / ".fleet-state.json").is_file()
        # A device restarted while the registry is down gets ready on its last known state.
        b.stop()
        b = running.enter_context(serve(tmp_path / "b", tmp_path / "b-restart.log", "--registry",
                                        reg, "--device-id", "b", "--device-group", "g"))  # fmt: skip
        both = (a, b)
        assert status(b)["live"] == "2" and infer(b).json()["model_version"] == "2"
        assert "no desired state from the registry at start" in b.log()

        etcd.start()
        wait_until(lambda: all(connected(s) == 1 for s in both), 20)
        assert run_fleet("set", "m", "3", "--group", "g", "--artifact", str(builds["v3"]),
                         "--registry", reg) == 0  # fmt: skip
        wait_until(lambda: all(status(s)["live"] == "3" for s in both), 15)

        # kill -9: no goodbye, the status disappears when the lease (3 s) expires.
        os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait()
        killed = time.monotonic()
        wait_until(lambda: set(fleet_status(reg)["devices"]) == {"b"}, 15)
        assert time.monotonic() - killed < 10
        # A clean stop revokes the lease: gone at once.
        b.stop()
        assert fleet_status(reg)["devices"] == {}


def test_a_device_is_ready_only_once_the_desired_state_is_applied(
    etcd: Etcd, builds: dict[str, Path], tmp_path: Path
) -> None:
    """A load balancer must not send traffic to the local v1 while the desired v2 (slow to
    warm up) is still loading."""
    reg = etcd.registry("t-ready")
    slow = models.slow(tmp_path / "slow.onnx", depth=40)
    assert run_fleet("set", "m", "2", "--group", "g", "--artifact", str(slow),
                     "--registry", reg) == 0  # fmt: skip
    with device(tmp_path, "a", builds, reg) as server:
        assert status(server)["live"] == "2"
        assert infer(server).json()["model_version"] == "2"


def _free_run(n: int) -> int:
    """A port base with base+1..base+n free on 127.0.0.1."""
    for base in random.sample(range(20000, 60000, 7), 200):
        try:
            for p in range(base, base + n + 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return base
    raise AssertionError("no free port range")


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in process group `pgid`."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _end_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the process group (servers shut down cleanly), SIGKILL what is left after 15 s."""
    for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        end = time.monotonic() + grace
        while time.monotonic() < end:
            proc.poll()
            if not _group_alive(proc.pid):
                return
            time.sleep(0.1)


def test_readme_walkthrough_three_devices_canary_promote_rollback(
    etcd: Etcd, tmp_path: Path
) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "fleet.md").read_text()
    script = re.findall(r"```bash\n(.*?)```", doc, re.S)[0]
    base = _free_run(3)
    script = re.sub(r"\b810([0-3])\b", lambda m: str(base + int(m.group(1))), script)
    script = (script.replace("/tmp/fleet", str(tmp_path / "fleet"))
              .replace("2379", str(free_port())).replace("2380", str(free_port())))  # fmt: skip
    bindir = Path(sys.executable).parent
    prelude = f'export PATH="{bindir}:$PATH"\n'
    # Its own process group: etcd and the three servers it starts in the background go with it.
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", prelude + script],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        _end_group(proc)
    assert proc.returncode == 0, stdout + stderr
    text = stdout
    first, promoted, rolled_back = text.split("GROUP       MODEL")[1:4]
    assert "v1       v2 @ 20%      running" in first
    assert len(re.findall(r"^dev[123]\s+shop\s+ready\s+mlp\s+v1\s+v2 @ 20%", first, re.M)) == 3
    counts = dict((v, int(n)) for n, v in re.findall(r"^\s+(\d+) (v\d)$", text, re.M))
    assert counts.get("v1", 0) + counts.get("v2", 0) == 50 and counts.get("v2", 0) >= 2, counts
    assert len(re.findall(r"^dev[123]\s+shop\s+ready\s+mlp\s+v2\s+-", promoted, re.M)) == 3
    assert "rolled back to v1" in text
    assert len(re.findall(r"^dev[123]\s+shop\s+ready\s+mlp\s+v1\s+-", rolled_back, re.M)) == 3

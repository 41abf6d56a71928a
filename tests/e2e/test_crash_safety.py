"""kill -9 at random points during `edgeinfer models add` and `edgeinfer adapters add` leaves the
repository loadable and consistent. (kill -9 of a server in the middle of rollbacks, canaries and
promotions: tests/integration/test_lifecycle.py.)"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
from onnx import numpy_helper

from edgeinfer.adapters.convert import convert_graph
from edgeinfer.adapters.store import ADAPTERS_DIR, add_adapter, scan
from edgeinfer.repository import Repository, verify_manifest
from edgeinfer.testing import models
from tests.helpers import ServerProcess, serve, wait_until


def big_model(path: Path) -> Path:
    """The MLP padded with an unused 100 MB initializer, so a copy takes long enough to interrupt."""
    m = onnx.load(str(models.mlp(path)))
    m.graph.initializer.append(numpy_helper.from_array(np.ones(25_000_000, np.float32), "pad"))
    onnx.save(m, str(path))
    return path


def test_kill_9_during_models_add(tmp_path: Path) -> None:
    src = big_model(tmp_path / "big.onnx")
    repo = tmp_path / "repo"
    rng = random.Random(5)
    killed = 0
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-m", "edgeinfer.cli", "models", "add", str(repo),
                                 "m", str(src)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        # Wait until the add is under way (its temp folder, named with its pid, exists), then
        # kill at a random point.
        while proc.poll() is None and not list((repo / "m").glob(f".v*.{proc.pid}.*")):
            time.sleep(0.001)
        time.sleep(rng.uniform(0.0, 0.15))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
    assert killed >= 2  # some runs really were cut short
    # An add that runs to the end still works after all those kills.
    subprocess.run([sys.executable, "-m", "edgeinfer.cli", "models", "add", str(repo), "m",
                    str(src)], check=True, capture_output=True)  # fmt: skip
    entry = Repository(repo).model("m")
    assert entry.versions
    for version in entry.versions:  # every visible version is complete and verifies
        verify_manifest(version.path)
    visible = {p.name for p in (repo / "m").iterdir() if not p.name.startswith(".")}
    assert visible == {"config.toml"} | {str(v.version) for v in entry.versions}
    assert not list((repo / "m").glob(".v*"))  # the last add removed what killed ones left
    # And a server loads it.
    r = subprocess.run([sys.executable, "-m", "edgeinfer.cli", "models", "list", "--repository",
                        str(repo)], capture_output=True, text=True, check=True)  # fmt: skip
    assert r.stdout.count("\n") == len(entry.versions)


# ---- adapters ------------------------------------------------------------------------------------
BIG_RANK = 100_000  # a 34 MB adapter: copying and hashing it takes long enough to interrupt


def onnx_adapter(path: Path, rank: int, seed: int | None = None) -> Path:
    """A per_run adapter for the MLP's w1 [16, 32] and w2 [32, 4]; B = 0 (so the base model's
    output) unless `seed` is given."""
    from edgeinfer.runtime.lora_onnx import export_onnx_adapter

    rng = np.random.default_rng(seed)

    def pair(d_in: int, d_out: int) -> tuple[np.ndarray, np.ndarray]:
        b = rng.standard_normal((rank, d_out)) if seed is not None else np.zeros((rank, d_out))
        return np.ones((d_in, rank), np.float32), b.astype(np.float32)

    return export_onnx_adapter(path, {"w1": pair(16, 32), "w2": pair(32, 4)})


def adapters_add(repo: Path, name: str, file: Path) -> list[str]:
    return [sys.executable, "-m", "edgeinfer.cli", "adapters", "add", "--repository", str(repo),
            "m", name, str(file)]  # fmt: skip


def temp_dirs(repo: Path, name: str) -> set[Path]:
    return set((repo / "m" / ADAPTERS_DIR / name).glob(".v*"))


def check_adapters(repo: Path) -> dict[str, int]:
    """Only complete adapter versions are visible, and the store lists exactly the newest
    of each adapter that has one. Returns adapter -> listed version."""
    listed = {name: spec.version for name, spec in scan(repo / "m").items()}
    newest = {}
    for adir in (repo / "m" / ADAPTERS_DIR).iterdir():
        assert adir.is_dir()
        visible = [v for v in adir.iterdir() if not v.name.startswith(".")]  # '.v*': temp dirs
        for v in visible:
            assert v.name.isdigit(), v
            verify_manifest(v)  # published means complete: every file there, checksums match
        if visible:
            newest[adir.name] = max(int(v.name) for v in visible)
    assert listed == newest
    return listed


def infer(server: ServerProcess, adapter: str | None) -> httpx.Response:
    x = np.linspace(-1, 1, 16, dtype=np.float32)
    body: dict = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                              "data": x.tolist()}]}  # fmt: skip
    if adapter:
        body["parameters"] = {"adapter": adapter}
    return httpx.post(f"{server.url}/v2/models/m/infer", json=body, timeout=30)


def output(r: httpx.Response) -> list[float]:
    assert r.status_code == 200, r.text
    return list(r.json()["outputs"][0]["data"])


def test_kill_9_during_adapters_add(tmp_path: Path) -> None:
    build, repo = tmp_path / "build", tmp_path / "repo"
    graph = convert_graph(models.mlp(build / "mlp.onnx", seed=1), build / "lora", ["w1", "w2"],
                          stacked=False, rank=8)  # fmt: skip
    models.publish(repo, "m", graph / "model.onnx", "max_batch_size = 8\n",
                   extra={"lora.json": graph / "lora.json"})  # fmt: skip
    big = onnx_adapter(build / "big.onnx_adapter", BIG_RANK)
    small = onnx_adapter(build / "small.onnx_adapter", 2)
    add_adapter(repo / "m", "x", onnx_adapter(build / "x.onnx_adapter", 4, seed=0))
    # A server runs throughout, as on a device where adapters are added next to it.
    with serve(repo, tmp_path / "server.log") as server:
        base = output(infer(server, None))
        assert not np.allclose(output(infer(server, "x")), base)  # adapters really apply
        # One add that runs to the end: how long the whole command and its copy take.
        started = time.monotonic()
        proc = subprocess.Popen(adapters_add(repo, "zero", big), stdout=subprocess.DEVNULL)
        while proc.poll() is None and not temp_dirs(repo, "zero"):
            time.sleep(0.001)
        copying = time.monotonic()
        assert proc.wait() == 0
        total_s, copy_s = time.monotonic() - started, time.monotonic() - copying
        rng = random.Random(11)
        killed = 0
        for i in range(20):
            name = rng.choice(["zero", f"new{i}"])  # a new version, or a new adapter
            before = temp_dirs(repo, name)
            proc = subprocess.Popen(adapters_add(repo, name, big), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)  # fmt: skip
            if rng.random() < 0.5:  # anywhere from start-up to the end
                time.sleep(rng.uniform(0.0, total_s))
            else:  # while the version is copied, hashed and renamed
                while proc.poll() is None and temp_dirs(repo, name) <= before:
                    time.sleep(0.001)
                time.sleep(rng.uniform(0.0, copy_s))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed += 1
            proc.wait()
            listed = check_adapters(repo)
            # The server serves the interrupted adapter whole (B = 0: the base output) or not
            # at all; never a 5xx from a half-written file.
            r = infer(server, name)
            assert r.status_code in (200, 404), r.text
            if r.status_code == 200:
                assert np.allclose(output(r), base)
            # Retrying succeeds next to whatever the kill left behind (temp dirs, empty dirs).
            done = subprocess.run(adapters_add(repo, name, small), check=True,
                                  capture_output=True, text=True)  # fmt: skip
            version = int(Path(done.stdout.strip()).name)
            assert version > listed.get(name, 0)
            assert not temp_dirs(repo, name)  # what killed adds left behind was cleaned up
            assert check_adapters(repo)[name] == version
        assert killed >= 5  # many runs really were cut short
        listed = check_adapters(repo)
        r = subprocess.run([sys.executable, "-m", "edgeinfer.cli", "adapters", "list",
                            "--repository", str(repo)], capture_output=True, text=True,
                           check=True)  # fmt: skip
        assert {line.split("\t")[0] for line in r.stdout.splitlines()} == {
            f"m:{name}" for name in listed
        }

        def served_right() -> bool:  # the server rescans a model's adapters at most every 2 s
            replies = {name: infer(server, name) for name in listed}
            return all(r.status_code == 200 and np.allclose(output(r), base) == (name != "x")
                       for name, r in replies.items())  # fmt: skip

        wait_until(served_right, 10, "the server to serve the listed adapters")
        for name in listed:  # every listed adapter serves (all but x leave the output as is)
            out = output(infer(server, name))
            assert np.allclose(out, base) == (name != "x"), name

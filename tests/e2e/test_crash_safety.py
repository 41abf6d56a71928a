"""kill -9 at random points during `edgeinfer models add` leaves the repository consistent."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgeinfer.repository import Repository, verify_manifest
from edgeinfer.testing import models


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
        before = len(list((repo / "m").glob(".v*"))) if (repo / "m").exists() else 0
        proc = subprocess.Popen([sys.executable, "-m", "edgeinfer.cli", "models", "add", str(repo),
                                 "m", str(src)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        # Wait until the add is under way (its temp folder exists), then kill at a random point.
        while proc.poll() is None and len(list((repo / "m").glob(".v*"))) <= before:
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
    # And a server loads it.
    r = subprocess.run([sys.executable, "-m", "edgeinfer.cli", "models", "list", "--repository",
                        str(repo)], capture_output=True, text=True, check=True)  # fmt: skip
    assert r.stdout.count("\n") == len(entry.versions)

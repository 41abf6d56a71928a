"""`edgeinfer tune` as a user runs it: a report and a plot, a winner applied with one flag and
served by a polling server, a killed run that resumes, one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgeinfer.testing import models
from tests.helpers import serve, wait_until

CLI = [sys.executable, "-m", "edgeinfer.cli", "tune"]
FAST = ["--seconds", "0.2", "--repetitions", "2", "--concurrency", "1,4"]


def tune(*args: str | Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def request(x: np.ndarray) -> dict[str, object]:
    data = x.ravel().tolist()
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": data}]}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    models.publish(
        root,
        "cnn",
        models.resnet18_like(tmp_path / "cnn.onnx", image=32),
        "# the demo CNN\nmax_batch_size = 8\n",
    )
    return root


def test_tune_reports_applies_and_the_server_serves_the_winner(repo: Path, tmp_path: Path) -> None:
    with serve(repo, tmp_path / "server.log", "--model-control", "poll") as server:
        x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
        before = httpx.post(
            f"{server.url}/v2/models/cnn/infer",
            json=request(x),
            timeout=30,
        )
        assert before.status_code == 200, before.text
        got = tune(
            repo,
            "cnn",
            *FAST,
            "--budget-minutes",
            "1",
            "--precision",
            "fp32,int8-dynamic",
            "--apply",
            "--json",
        )
        assert got.returncode == 0, got.stderr
        result = json.loads(got.stdout)
        folder = repo / "cnn" / "tune"
        body = json.loads((folder / "report.json").read_text())
        keys = [t["key"] for t in body["trials"]]
        assert keys[0] == "default" and len(keys) >= 3
        assert all(t["levels"] for t in body["trials"] if t["status"] == "ok")
        assert (folder / "frontier.svg").read_text().startswith("<svg")
        assert "default" in (folder / "report.md").read_text()
        assert "[1/" in got.stderr  # progress lines
        # The default and the best were measured again through a real server over HTTP.
        served = {t["key"]: t for t in body["trials"] if t["served"]}
        assert "default" in served and len(served) >= 2, got.stderr
        for t in served.values():
            assert t["status"] == "ok" and t["in_process"], t
            assert all(lv["requests"] > 0 for lv in t["levels"])
        assert "[confirm over HTTP] default:" in got.stderr
        assert "| HTTP |" in (folder / "report.md").read_text()
        if not result["decision"]["changed"]:
            assert "noise" in result["summary"]
            return
        assert "# the demo CNN" in (repo / "cnn" / "config.toml").read_text()
        want = 2  # always a new version, loaded with the new settings

        def live() -> set[int]:
            index = httpx.post(f"{server.url}/v2/repository/index", json={}, timeout=10).json()
            return {
                int(m["version"]) for m in index if m["name"] == "cnn" and m["state"] == "READY"
            }

        wait_until(lambda: want in live(), 60, f"cnn version {want} to be ready", interval=0.1)
        after = httpx.post(f"{server.url}/v2/models/cnn/infer", json=request(x), timeout=30)
        assert after.status_code == 200, after.text


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_a_trial_never_outlives_a_killed_tune(repo: Path) -> None:
    proc = subprocess.Popen(
        [*CLI, str(repo), "cnn", "--seconds", "60", "--precision", "fp32"],
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: bool(children(proc.pid)), 60, "a trial process")
    trials = children(proc.pid)
    proc.kill()  # SIGKILL to `edgeinfer tune` alone; its trial had minutes of work left
    proc.wait()
    wait_until(lambda: not any(running(pid) for pid in trials), 10, "the orphaned trial to exit")


def test_a_killed_run_resumes_where_it_stopped(repo: Path) -> None:
    proc = subprocess.Popen(
        [*CLI, str(repo), "cnn", *FAST, "--budget-minutes", "5", "--precision", "fp32"],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stderr is not None
    seen = [proc.stderr.readline() for _ in range(2)]  # the default and one more trial
    wait_until(lambda: bool(children(proc.pid)), 60, "a trial process")
    trials = children(proc.pid)
    proc.kill()  # SIGKILL to `edgeinfer tune` alone: its trial must not outlive it
    proc.wait()
    wait_until(lambda: not any(running(pid) for pid in trials), 10, "the orphaned trial to exit")
    assert all(line.startswith("[") for line in seen), seen
    checkpoint = repo / "cnn" / "tune" / "checkpoint.json"
    saved = {t["key"]: t for t in json.loads(checkpoint.read_text())["trials"]}
    assert "default" in saved
    got = tune(repo, "cnn", *FAST, "--budget-minutes", "5", "--precision", "fp32")
    assert got.returncode == 0, got.stderr
    after = {t["key"]: t for t in json.loads(checkpoint.read_text())["trials"]}
    for key, trial in saved.items():
        # Reused, not measured again: its first measurement is the one saved before the kill
        # (the confirmation measures the default and the two best again, over HTTP).
        first = after[key]["in_process"] or after[key]["levels"]
        assert first == trial["levels"]
    assert len(after) > len(saved)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "model 'nope' is not in the repository"),
        (["cnn", "--version", "7"], "no version 7"),
        (["cnn", "--concurrency", "a,b"], "--concurrency"),
        (["cnn", "--concurrency", "0"], "--concurrency must be in 1..1024"),
        (["cnn", "--concurrency", "100000"], "--concurrency must be in 1..1024"),
        (["cnn", "--budget-minutes", "0"], "--budget-minutes must be in"),
        (["cnn", "--budget-minutes", "-1"], "--budget-minutes must be in"),
        (["cnn", "--budget-minutes", "nan"], "--budget-minutes must be in"),
        (["cnn", "--seconds", "1e308"], "--seconds must be in (0, 600]"),
        (["cnn", "--seconds", "nan"], "--seconds must be in (0, 600]"),
        (["cnn", "--repetitions", "1000000"], "--repetitions must be in 1..100"),
        (["cnn", "--max-drop", "-3"], "--max-drop must be in [0, 1]"),
        (["cnn", "--max-drop", "nan"], "--max-drop must be in [0, 1]"),
        (["cnn", "--latency-budget-ms", "-5"], "--latency-budget-ms must be in"),
        (["cnn", "--precision", "fp64"], "--precision: unknown fp64; use fp32"),
        (["cnn", "--backend", "nope,onnxruntime"], "--backend: unknown nope; use onnxruntime"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(repo: Path, args: list[str], message: str) -> None:
    got = tune(repo, *args)
    assert got.returncode == 2
    assert message in got.stderr and len(got.stderr.strip().splitlines()) == 1
    assert "Traceback" not in got.stderr


def test_bad_arguments_write_nothing(repo: Path) -> None:
    got = tune(repo, "cnn", "--budget-minutes", "0")
    assert got.returncode == 2
    assert not (repo / "cnn" / "tune").exists()


def test_a_model_with_a_fixed_batch_dimension_is_tuned(tmp_path: Path) -> None:
    import onnx

    model = onnx.load(models.mlp(tmp_path / "mlp.onnx"))
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = 1  # exported for batch 1 only
    onnx.save(model, tmp_path / "fixed.onnx")
    repo = tmp_path / "repo"
    models.publish(repo, "fixed", tmp_path / "fixed.onnx", "max_batch_size = 0\n")
    got = tune(repo, "fixed", *FAST, "--budget-minutes", "0.2", "--backend", "onnxruntime")
    assert got.returncode == 0, got.stderr
    body = json.loads((repo / "fixed" / "tune" / "report.json").read_text())
    int8 = [t for t in body["trials"] if "int8-dynamic" in t["key"]]
    assert int8 and all(t["status"] in ("ok", "rejected") for t in int8), int8


def test_a_gguf_model_is_tuned_through_the_generation_loop(tmp_path: Path) -> None:
    from edgeinfer.repository.manifest import add_version
    from edgeinfer.runtime.gguf_writer import build_gguf

    repo = tmp_path / "repo"
    (repo / "llm").mkdir(parents=True)
    build_gguf(tmp_path / "tiny.gguf", "tiny", "f32", seed=0)
    (repo / "llm" / "config.toml").write_text(
        'backend = "llama.cpp"\n[llm]\ncontext_length = 512\nslots = 2\n'
    )
    add_version(repo / "llm", {"model.gguf": tmp_path / "tiny.gguf"})
    got = tune(
        repo,
        "llm",
        "--seconds",
        "0.3",
        "--repetitions",
        "1",
        "--concurrency",
        "1,2",
        "--budget-minutes",
        "0.5",
        "--json",
    )
    assert got.returncode == 0, got.stderr
    body = json.loads((repo / "llm" / "tune" / "report.json").read_text())
    assert body["unit"] == "tok/s"
    measured = [t for t in body["trials"] if t["status"] == "ok"]
    assert len(measured) >= 3 and measured[0]["key"] == "default"
    assert any(t["key"].startswith("llama.cpp threads=") for t in measured)
    # Every trial's greedy tokens are compared with the default's.
    others = [t for t in body["trials"] if t["key"] != "default" and t["levels"]]
    assert others and all(t["accuracy"]["metric"] == "tokens" for t in others)

"""The CLI as a user runs it: a real process, its exit code and what it prints."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from edgeinfer.testing import models
from tests.helpers import serve

EDGEINFER = [sys.executable, "-m", "edgeinfer.cli"]


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*EDGEINFER, *args], capture_output=True, text=True, timeout=120)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_help_for_every_command_and_no_heavy_imports() -> None:
    for args in ([], ["serve"], ["models"], ["models", "list"], ["models", "add"],
                 ["models", "load"], ["models", "unload"], ["models", "rollback"],
                 ["models", "canary"], ["models", "promote"], ["models", "status"], ["demo"],
                 ["doctor"], ["quantize"], ["optimize"], ["keys", "create"], ["chat"], ["fleet"], ["adapters"]):  # fmt: skip
        out = run(*args, "--help").stdout
        assert "usage: edgeinfer" in out
    code = ("import sys, edgeinfer.cli as c\n"
            "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = {'onnxruntime', 'torch', 'grpc', 'uvicorn'} & set(sys.modules)\n"
            "assert not heavy, heavy")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_models_add_and_list(tmp_path: Path) -> None:
    onnx_file = models.mlp(tmp_path / "m.onnx")
    repo = tmp_path / "repo"
    out = run("models", "add", str(repo), "mlp", str(onnx_file)).stdout
    assert "version 1" in out
    run("models", "add", str(repo), "mlp", str(onnx_file), "--version", "4")
    assert "version 5" in run("models", "add", str(repo), "mlp", str(onnx_file)).stdout
    listing = run("models", "list", "--repository", str(repo)).stdout.splitlines()
    assert [line.split("\t")[1] for line in listing] == ["1 ", "4 ", "5*"]
    assert sorted(p.name for p in (repo / "mlp").iterdir()) == ["1", "4", "5", "config.toml"]


def test_errors_are_one_line_with_exit_code(tmp_path: Path) -> None:
    proc = run("models", "add", str(tmp_path / "r"), "m", str(tmp_path / "missing.onnx"), ok=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "missing.onnx: no such file" in proc.stderr
    proc = run("serve", "--repository", str(tmp_path / "nope"), ok=False)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("serve", "--repository", str(tmp_path), "--http-port", "99999", ok=False)
    assert proc.returncode == 2 and "http-port" in proc.stderr
    proc = run("models", "list", "--url", "http://127.0.0.1:9", ok=False)
    assert proc.returncode == 1 and "cannot reach the server" in proc.stderr


def test_load_unload_against_a_running_server(tiny_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    with serve(repo, tmp_path / "server.log") as server:
        url = ["--url", server.url]
        listing = run("models", "list", *url).stdout
        assert "ids" in listing and "READY" in listing
        run("models", "unload", "ids", *url)
        assert httpx.get(f"{server.url}/v2/models/ids/ready").status_code == 400
        # Readiness now only counts the models that should be loaded.
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
        r = httpx.post(f"{server.url}/v2/models/ids/infer", json={"inputs": [
            {"name": "a", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 3]}]})  # fmt: skip
        assert r.status_code == 503 and "not ready" in r.json()["error"]
        assert "UNAVAILABLE" in run("models", "list", *url).stdout
        run("models", "load", "ids", *url)
        assert httpx.get(f"{server.url}/v2/models/ids/ready").status_code == 200
        proc = run("models", "load", "nope", *url, ok=False)
        assert proc.returncode == 1 and "404" in proc.stderr
        # A new version published with the CLI is picked up by a load (reload).
        run("models", "add", str(repo), "ids", str(repo / "ids" / "1" / "model.onnx"))
        run("models", "load", "ids", *url)
        md = httpx.get(f"{server.url}/v2/models/ids").json()
        assert md["versions"] == ["1", "2"]  # v1 stays resident for an instant rollback
        assert "live v2" in run("models", "status", "ids", *url).stdout


def test_set_overrides_a_models_config(tiny_repo: Path, tmp_path: Path) -> None:
    with serve(tiny_repo, tmp_path / "server.log", "--set", "mlp.max_batch_size=2",
               "--set", "mlp.dynamic_batching.max_queue_delay_us=100") as server:  # fmt: skip
        cfg = httpx.get(f"{server.url}/v2/models/mlp/config").json()
        assert cfg["max_batch_size"] == 2
    proc = run("serve", "--repository", str(tiny_repo), "--set", "mlp.queue.timeout_action=boom",
               ok=False)  # fmt: skip
    assert proc.returncode == 2
    assert "timeout_action must be 'reject' or 'delay'" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_server_commands_send_the_api_key(tiny_repo: Path, tmp_path: Path) -> None:
    """Every command that talks to a server takes --api-key (or EDGEINFER_API_KEY)."""
    keys = tmp_path / "keys.toml"
    admin = run("keys", "create", "--role", "admin", "--file", str(keys)).stdout.strip()
    with serve(tiny_repo, tmp_path / "server.log", "--api-keys", str(keys)) as server:
        url = ["--url", server.url]
        proc = run("models", "status", "mlp", *url, ok=False)
        assert proc.returncode == 1 and "server answered 401" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert "live v" in run("models", "status", "mlp", *url, "--api-key", admin).stdout
        assert "READY" in run("models", "list", *url, "--api-key", admin).stdout
        proc = subprocess.run(
            [*EDGEINFER, "profile", "mlp", *url],
            capture_output=True,
            text=True,
            env={**os.environ, "EDGEINFER_API_KEY": admin},
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("--max-grpc-message-bytes", "٣٣٣٣", "in ASCII digits"),  # int() would take it as 3333
        ("--max-grpc-message-bytes", "99999999999999999999999", "in ASCII digits"),
        ("--max-grpc-message-bytes", "3000000000", "1024..2147483647"),  # past grpcio's C int
        ("--max-grpc-message-bytes", "0", "1024..2147483647"),
        ("--max-grpc-message-bytes", "-5", "non-negative integer"),
        ("--max-request-bytes", "1_000_000", "in ASCII digits"),
        ("--max-request-bytes", "", "in ASCII digits"),
        ("--header-timeout-s", "inf", "finite"),
        ("--header-timeout-s", "1e12", "at most 86400 seconds"),  # grpcio's ms as a C int
    ],
)
def test_serve_refuses_bad_numbers_with_one_line(
    tmp_path: Path, flag: str, value: str, needle: str
) -> None:
    proc = run("serve", "--repository", str(tmp_path), "--grpc-port", "0", flag, value, ok=False)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and flag in proc.stderr and "Traceback" not in proc.stderr


def test_a_bad_number_in_the_environment_is_refused_like_a_flag(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*EDGEINFER, "serve", "--repository", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "EDGEINFER_MAX_REQUEST_BYTES": "٦٤"},
    )
    assert proc.returncode == 2 and "--max-request-bytes" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr

"""Confirming tune's best candidates through a real server: each is published into a scratch
repository, served by `edgeinfer serve` in its own process and driven over HTTP by the load
generator in another (`edgeinfer.tune.load`). The figure tune reports for them is then what the
server delivers to a client on this device, HTTP parsing, event loop and the client's own CPU
included, not only what the scheduler and backend do in-process."""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.repository.manifest import add_version, version_files
from edgeinfer.types import datatype_of, tensor_bytes

HOST = "127.0.0.1"
INDEX = "index.json"
START_S = 10.0  # what starting a server and loading a small model is budgeted at


def kill_with_parent() -> None:
    """This process gets SIGKILL when its parent ends (Linux's PR_SET_PDEATHSIG; elsewhere the
    parent's timeouts still apply). The trials, servers and load generators tune starts
    run it first (as `preexec_fn`)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class ServedError(Exception):
    """The candidate could not be served or measured over HTTP (the message says why)."""


def write_requests(folder: Path, samples: list[dict[str, np.ndarray]]) -> None:
    """The samples as KServe v2 requests in the binary tensor extension, outputs asked for in
    binary, as tritonclient sends them. The JSON heads are padded with spaces to one length,
    so one Inference-Header-Content-Length fits every body. The index is written last."""
    heads, blobs = [], []
    for feeds in samples:
        raw = {name: tensor_bytes(a) for name, a in feeds.items()}
        inputs = [
            {
                "name": name,
                "shape": list(a.shape),
                "datatype": datatype_of(a),
                "parameters": {"binary_data_size": len(raw[name])},
            }
            for name, a in feeds.items()
        ]
        doc = {"inputs": inputs, "parameters": {"binary_data_output": True}}
        heads.append(json.dumps(doc).encode())
        blobs.append(b"".join(raw.values()))
    width = max(map(len, heads), default=0)
    folder.mkdir(parents=True, exist_ok=True)
    for k, (head, blob) in enumerate(zip(heads, blobs, strict=True)):
        (folder / f"{k}.body").write_bytes(head.ljust(width) + blob)
    (folder / INDEX).write_text(json.dumps({"header_length": width, "count": len(heads)}))


@dataclass(frozen=True)
class Requests:
    bodies: list[Path]
    header_length: int


def read_requests(folder: Path) -> Requests | None:
    try:
        index = json.loads((folder / INDEX).read_text())
        bodies = [folder / f"{k}.body" for k in range(int(index["count"]))]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not bodies or not all(b.is_file() for b in bodies):
        return None
    return Requests(bodies, int(index["header_length"]))


@dataclass(frozen=True)
class ServePlan:
    model: str
    version: int
    concurrency: tuple[int, ...]
    seconds: float
    repetitions: int
    warmup_s: float
    timeout_s: float  # starting the server, loading and warming the model


def publish(folder: Path, plan: ServePlan, version_dir: Path, config: str) -> Path:
    """A repository in `folder` holding only this candidate: its model files and config."""
    shutil.rmtree(folder, ignore_errors=True)
    add_version(folder / plan.model, version_files(version_dir), plan.version)
    (folder / plan.model / "config.toml").write_text(config)
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _log_tail(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
    return lines[-1] if lines else "no output"


def _wait_ready(proc: subprocess.Popen[bytes], port: int, plan: ServePlan, log: Path) -> None:
    deadline = time.monotonic() + plan.timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServedError(f"the server exited ({proc.returncode}): {_log_tail(log)}")
        conn = http.client.HTTPConnection(HOST, port, timeout=2)
        try:
            conn.request("GET", f"/v2/models/{plan.model}/ready")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.2)
    raise ServedError(f"the model was not ready within {plan.timeout_s:.0f} s")


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _drive(
    plan: ServePlan, port: int, pid: int, requests: Requests, clients: int
) -> dict[str, Any]:
    """One repetition at `clients` connections: the load generator's JSON."""
    cmd = [
        sys.executable,
        "-m",
        "edgeinfer.tune.load",
        "--port",
        str(port),
        "--path",
        f"/v2/models/{plan.model}/infer",
        "--concurrency",
        str(clients),
        "--duration",
        str(plan.seconds),
        "--warmup",
        str(plan.warmup_s),
        "--server-pid",
        str(pid),
        "--header",
        "Content-Type: application/octet-stream",
        "--header",
        f"Inference-Header-Content-Length: {requests.header_length}",
    ]
    for body in requests.bodies:
        cmd += ["--body", str(body)]
    timeout = plan.seconds + plan.warmup_s + 60
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=kill_with_parent
        )
        result: dict[str, Any] = json.loads(done.stdout)
        failed = bool(result["errors"]) or not result["requests"]
    except subprocess.TimeoutExpired as e:
        raise ServedError(f"the load generator did not finish within {timeout:.0f} s") from e
    except (ValueError, KeyError, TypeError) as e:  # no result, or not the generator's JSON
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ServedError(f"the load generator failed: {tail}") from e
    if failed:
        raise ServedError(f"requests failed over HTTP: {result['first_error'] or 'none done'}")
    return result


def level(clients: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One concurrency's result over repetitions: the median rate and its spread, the median
    p50/p99 latency as the client saw it."""
    rates = [float(r["rps"]) for r in runs]
    mid = float(np.median(rates))
    return {
        "concurrency": clients,
        "throughput": mid,
        "spread": float((max(rates) - min(rates)) / max(mid, 1e-9)),
        "p50_ms": float(np.median([r["p50_ms"] for r in runs])),
        "p99_ms": float(np.median([r["p99_ms"] for r in runs])),
        "requests": sum(int(r["requests"]) for r in runs),
        "client_cpu": float(np.median([r["client_cpu"] for r in runs])),
    }


def serve_levels(plan: ServePlan, repo: Path, requests: Requests) -> tuple[list[Any], int]:
    """Serve `repo` and drive it at each concurrency: (levels, the server's RSS at the end)."""
    port = _free_port()
    log = repo / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "edgeinfer.cli",
        "serve",
        "--repository",
        str(repo),
        "--host",
        HOST,
        "--http-port",
        str(port),
        "--grpc-port",
        "0",
        "--log-level",
        "warning",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=kill_with_parent
        )
    try:
        _wait_ready(proc, port, plan, log)
        levels = [
            level(c, [_drive(plan, port, proc.pid, requests, c) for _ in range(plan.repetitions)])
            for c in plan.concurrency
        ]
        return levels, _rss_bytes(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def budget_s(plan: ServePlan, configurations: int, rounds: int) -> float:
    """What confirming `configurations` over `rounds` takes, about: the search leaves it."""
    per_level = plan.repetitions * (plan.seconds + plan.warmup_s + 0.5)
    return configurations * rounds * (START_S + len(plan.concurrency) * per_level)

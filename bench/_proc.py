"""Subprocesses for the serving benchmark: start/stop servers, poll them, read /proc, run the
load generator. Every server is started through `Server`, whose `stop()` runs in a finally."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from _load import PATH as LOAD_PATH
from _load import machine_busy_s, proc_cpu_s

HOST = "127.0.0.1"
BENCH = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Request:
    """One ready-to-send KServe v2 infer request."""

    model: str
    body: bytes
    headers: dict[str, str]

    @property
    def path(self) -> str:
        return f"/v2/models/{self.model}/infer"


def post(port: int, req: Request, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("POST", req.path, req.body, req.headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


class Server:
    """A server subprocess with its log in `log_path`."""

    def __init__(self, name: str, cmd: list[str], port: int, log_path: Path) -> None:
        self.name, self.cmd, self.port, self.log_path = name, cmd, port, log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("wb") as log:
            self.started_at = time.perf_counter()
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_first_success(
        self, requests: list[Request], timeout: float = 60.0
    ) -> dict[str, float]:
        """Seconds from process start to the first 200 reply for each request's model."""
        assert self.proc is not None
        pending = {r.model: r for r in requests}
        first: dict[str, float] = {}
        deadline = self.started_at + timeout
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if time.perf_counter() > deadline:
                raise RuntimeError(
                    f"{self.name}: no successful inference within {timeout} s:\n{self.log_tail()}"
                )
            for model, req in list(pending.items()):
                try:
                    status, _, _ = post(self.port, req, timeout=10)
                except OSError:
                    break  # not listening yet
                if status == 200:
                    first[model] = time.perf_counter() - self.started_at
                    del pending[model]
            if pending:
                time.sleep(0.01)
        return {m: round(s, 3) for m, s in first.items()}

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def rss_mb(self) -> dict[str, float]:
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = round(int(value.split()[0]) / 1024, 1)
        return {"rss_mb": out["VmRSS"], "peak_rss_mb": out["VmHWM"]}

    def idle_cpu(self, seconds: float) -> float:
        """Share of one core the server used over `seconds` with no traffic."""
        c0, t0 = proc_cpu_s(self.pid), time.perf_counter()
        time.sleep(seconds)
        return round((proc_cpu_s(self.pid) - c0) / (time.perf_counter() - t0), 4)


def wait_quiet(server: Server | None, cap: float, threshold: float = 0.15) -> dict[str, float]:
    """Wait (at most `cap` s) until processes other than `server` use under `threshold` of a core
    for a whole second: other engineers' test runs share these 2 cores. Returns what was seen."""
    start = time.perf_counter()
    other = float("inf")
    while True:
        m0, s0 = machine_busy_s(), proc_cpu_s(server.pid) if server else 0.0
        time.sleep(1.0)
        m1, s1 = machine_busy_s(), proc_cpu_s(server.pid) if server else 0.0
        other = (m1 - m0) - (s1 - s0)
        waited = time.perf_counter() - start
        if other < threshold or waited >= cap:
            return {"waited_s": round(waited, 1), "other_cpu_before": round(other, 3)}


class Patience:
    """How long the run may spend waiting for quiet and re-measuring noisy points, in total, so
    a busy machine stretches the run by at most `spare_s` seconds (then the noise is reported)."""

    def __init__(self, spare_s: float, quiet_wait: float) -> None:
        self.left, self.quiet_wait = spare_s, quiet_wait

    def wait_quiet(self, server: Server | None) -> dict[str, float]:
        seen = wait_quiet(server, max(1.0, min(self.quiet_wait, self.left)))
        self.left -= seen["waited_s"] - 1.0  # one second of sampling is always spent
        return seen

    def allow(self, seconds: float) -> bool:
        if seconds > self.left:
            return False
        self.left -= seconds
        return True


def run_load(server: Server, req: Request, concurrency: int, duration: float, warmup: float,
             workdir: Path) -> dict[str, object]:  # fmt: skip
    """Run the load generator against `server` in its own process and return its JSON."""
    body_file = workdir / f"{req.model}.body"
    if not body_file.exists():
        body_file.write_bytes(req.body)
    cmd = [sys.executable, str(LOAD_PATH), "--port", str(server.port),
           "--path", req.path, "--body", str(body_file), "--concurrency", str(concurrency),
           "--duration", str(duration), "--warmup", str(warmup), "--server-pid", str(server.pid)]  # fmt: skip
    for k, v in req.headers.items():
        cmd += ["--header", f"{k}: {v}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + warmup + 180)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}):\n{done.stderr[-2000:]}")
    result: dict[str, object] = json.loads(done.stdout)
    return result

"""Shared test helpers: start a real `edgeinfer serve` process, wait for a condition, and read
a server's /metrics with the Prometheus text parser (not regexes)."""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def wait_until(
    cond: Callable[[], object],
    timeout: float = 30.0,
    what: str | Callable[[], str] = "condition",
    interval: float = 0.02,
) -> None:
    """Poll `cond` until it is truthy; fail the test naming `what` after `timeout` seconds.

    `what` may be a function, called only on failure (to show a server's log as it is then)."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= end:
            raise AssertionError(f"{what() if callable(what) else what} not reached in {timeout}s")
        time.sleep(interval)


async def until(
    cond: Callable[[], object | Awaitable[object]],
    timeout: float = 10.0,
    what: str = "condition",
    interval: float = 0.005,
) -> None:
    """`wait_until` for a running event loop; `cond` may be a coroutine function."""
    end = time.monotonic() + timeout
    while True:
        ok = cond()
        if inspect.isawaitable(ok):
            ok = await ok
        if ok:
            return
        assert time.monotonic() < end, f"{what} not reached in {timeout}s"
        await asyncio.sleep(interval)


@dataclass(frozen=True)
class Samples:
    """The samples of one /metrics scrape."""

    items: tuple[Sample, ...]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.items)

    def get(self, name: str, /, **labels: str) -> float | None:
        """The value of sample `name` with exactly these labels, or None if there is none."""
        for s in self.items:
            if s.name == name and s.labels == labels:
                return float(s.value)
        return None

    def value(self, name: str, /, **labels: str) -> float:
        """Like `get`, but the sample must be there."""
        got = self.get(name, **labels)
        assert got is not None, f"{name}{labels} not in /metrics: {sorted({s.name for s in self})}"
        return got


def parse_metrics(text: str, prefix: str = "") -> Samples:
    """The samples in a Prometheus text exposition whose name starts with `prefix`."""
    found = (s for f in text_string_to_metric_families(text) for s in f.samples)
    return Samples(tuple(s for s in found if s.name.startswith(prefix)))


def samples(url: str, prefix: str = "", headers: Mapping[str, str] | None = None) -> Samples:
    """Scrape `url`/metrics (url: a server's base URL) and keep the samples starting with `prefix`."""
    r = httpx.get(f"{url}/metrics", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return parse_metrics(r.text, prefix)


def metric(url: str, name: str, /, **labels: str) -> float | None:
    """The value of one sample (exact name and labels) on `url`/metrics, or None if absent."""
    return samples(url, name).get(name, **labels)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """An `edgeinfer serve` process on 127.0.0.1, its output in `log_path`."""

    proc: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log_path: Path
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.http_port}"

    @property
    def http_addr(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        """Everything the process wrote so far, stdout and stderr interleaved."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it is still there after 15 s; a no-op once it has exited."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def answers(self, path: str, verify: ssl.SSLContext | bool = True) -> bool:
        """Whether GET `path` is a 200 now; a process that has exited fails the test at once."""
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}")
        try:
            return httpx.get(self.url + path, timeout=1, verify=verify).status_code == 200
        except httpx.HTTPError:
            return False


Wait = Literal["ready", "live", "exit"] | None


@contextmanager
def serve(
    repo: Path,
    log: Path,
    *flags: str,
    env: Mapping[str, str] | None = None,
    wait: Wait = "ready",
    timeout: float = 120.0,
    tls: tuple[Path, Path] | None = None,
) -> Iterator[ServerProcess]:
    """Run `edgeinfer serve --repository repo *flags` on free ports, stopped on leaving.

    `wait`: until /v2/health/ready (or /live: models may still be loading) answers 200, or
    "exit" for a server expected to refuse to start (the test then reads `proc.returncode` and
    `log()`), or None to return at once. `env` adds to this process's environment; `tls` is
    (certificate, key) and makes `url` https. The test fails, with the log, after `timeout` s."""
    http_port, grpc_port = free_port(), free_port()
    tls_flags = ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])] if tls else []
    where = ["--host", "127.0.0.1", "--http-port", str(http_port), "--grpc-port", str(grpc_port)]
    cmd = [sys.executable, "-m", "edgeinfer.cli", "serve", "--repository", str(repo), *where]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*cmd, *tls_flags, *flags],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    server = ServerProcess(proc, http_port, grpc_port, log, "https" if tls else "http")
    try:
        _wait_for(server, wait, timeout, ssl.create_default_context(cafile=tls[0]) if tls else True)
        yield server
    finally:
        server.stop()


def _wait_for(
    server: ServerProcess, wait: Wait, timeout: float, verify: ssl.SSLContext | bool
) -> None:
    try:
        if wait == "exit":
            try:
                server.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"server still running after {timeout}s") from None
        elif wait is not None:
            path = f"/v2/health/{wait}"
            wait_until(lambda: server.answers(path, verify), timeout, f"{path} = 200", 0.1)
    except AssertionError as e:
        raise AssertionError(f"{e}; its log:\n{server.log()}") from None

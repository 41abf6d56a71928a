"""Closed-loop HTTP load generator, run as its own process by `edgeinfer tune` (to measure its best
candidates through a real server) and by the benchmarks: `python -m edgeinfer.tune.load`.

One thread per concurrency slot, each with one keep-alive connection: send the request, read the
whole reply, send again (with several --body files, connection k sends body k modulo their
number). Only requests that complete inside the timed window (after the warm-up)
count. The HTTP/1.1 client is a few lines over a raw socket because http.client parses every reply's
headers with the email package: measured against edgeinfer's MLP, ~120 µs of client CPU per
request against ~35 µs here, so http.client would saturate this client 3x earlier
(`--client httpclient` keeps it for that comparison). Stdlib only.

Prints one JSON object: req/s, latency percentiles, errors, and the CPU used during the window by
this process, the server process (--server-pid) and the whole machine, each as a share of one core,
so a saturated client or a busy neighbour shows in the numbers.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")


class ProtocolError(Exception):
    pass


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def read_reply(sock: socket.socket, buf: bytearray) -> tuple[int, bytes]:
    """Read one Content-Length framed reply from `sock`; leftover bytes stay in `buf`."""
    while (end := buf.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(65536)
        if not chunk:
            raise ProtocolError("server closed the connection")
        buf += chunk
    head = bytes(buf[:end]).lower()
    status = int(head[9:12])
    i = head.find(b"\r\ncontent-length:")
    if i < 0:
        raise ProtocolError("reply without Content-Length (chunked replies are not supported)")
    j = head.find(b"\r\n", i + 2)
    total = end + 4 + int(head[i + 17 : j if j >= 0 else len(head)])
    while len(buf) < total:
        chunk = sock.recv(max(65536, total - len(buf)))
        if not chunk:
            raise ProtocolError("server closed the connection mid-reply")
        buf += chunk
    body = bytes(buf[end + 4 : total])
    del buf[:total]
    return status, body


class _RawConn:
    def __init__(self, host: str, port: int, request: bytes) -> None:
        self.sock = socket.create_connection((host, port), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request = request
        self.buf = bytearray()

    def roundtrip(self) -> tuple[int, bytes]:
        self.sock.sendall(self.request)
        return read_reply(self.sock, self.buf)

    def close(self) -> None:
        self.sock.close()


class _StdlibConn:
    """http.client, kept only to measure what the raw client saves."""

    def __init__(
        self, host: str, port: int, path: str, body: bytes, headers: dict[str, str]
    ) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=120)
        self.args = (path, body, headers)

    def roundtrip(self) -> tuple[int, bytes]:
        path, body, headers = self.args
        self.conn.request("POST", path, body, headers)
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def close(self) -> None:
        self.conn.close()


@dataclass
class _Slot:
    ends: list[int] = field(default_factory=list)
    lats: list[int] = field(default_factory=list)
    error_ends: list[int] = field(default_factory=list)
    first_error: str = ""


def _worker(
    make_conn: Callable[[], _RawConn | _StdlibConn],
    slot: _Slot,
    go: threading.Event,
    stop: threading.Event,
) -> None:
    """One closed-loop client. A failed connect or request counts as an error and the client
    connects again; it never ends before `stop`."""
    try:
        conn: _RawConn | _StdlibConn | None = make_conn()  # before the start: not timed
    except OSError:
        conn = None
    go.wait()
    clock = time.perf_counter_ns
    while not stop.is_set():
        t = clock()
        try:
            conn = conn or make_conn()
            status, body = conn.roundtrip()
        except (OSError, ProtocolError, ValueError) as e:
            slot.error_ends.append(clock())
            slot.first_error = slot.first_error or f"{type(e).__name__}: {e}"
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(0.01)
            continue
        end = clock()
        if status == 200:
            slot.ends.append(end)
            slot.lats.append(end - t)
        else:
            slot.error_ends.append(end)
            slot.first_error = slot.first_error or f"HTTP {status}: {body[:200]!r}"
    if conn is not None:
        conn.close()


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy_s() -> float:
    """CPU seconds all cores spent not idle (from /proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return (sum(values) - values[3] - values[4]) / _TICK


def self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


def run(args: argparse.Namespace) -> dict[str, object]:
    bodies = [Path(b).read_bytes() for b in args.body]
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}

    def conn_factory(body: bytes) -> Callable[[], _RawConn | _StdlibConn]:
        request = build_request(args.host, args.port, args.path, body, headers)

        def make_conn() -> _RawConn | _StdlibConn:
            if args.client == "httpclient":
                return _StdlibConn(args.host, args.port, args.path, body, headers)
            return _RawConn(args.host, args.port, request)

        return make_conn

    factories = [conn_factory(bodies[k % len(bodies)]) for k in range(args.concurrency)]
    out = measure(factories, args.warmup, args.duration, args.server_pid)
    return {"concurrency": args.concurrency, "client": args.client, **out}


def measure(
    make_conns: list[Callable[[], _RawConn | _StdlibConn]],
    warmup: float,
    duration: float,
    server_pid: int = 0,
) -> dict[str, Any]:
    """One closed-loop worker thread per connection factory; after `warmup` s, count what
    completes in the next `duration` s, with the CPU of this process, the server's and the
    machine's over that window (shares of one core)."""
    slots = [_Slot() for _ in make_conns]
    go, stop = threading.Event(), threading.Event()
    threads = [
        threading.Thread(target=_worker, args=(make, s, go, stop), daemon=True)
        for make, s in zip(make_conns, slots, strict=True)
    ]
    for t in threads:
        t.start()
    go.set()
    time.sleep(warmup)
    t0, c0, m0 = time.perf_counter_ns(), self_cpu_s(), machine_busy_s()
    s0 = proc_cpu_s(server_pid) if server_pid else 0.0
    time.sleep(duration)
    t1, c1, m1 = time.perf_counter_ns(), self_cpu_s(), machine_busy_s()
    s1 = proc_cpu_s(server_pid) if server_pid else 0.0
    stop.set()
    for t in threads:
        t.join(timeout=120)

    wall = (t1 - t0) / 1e9
    lats = sorted(
        lat for s in slots for e, lat in zip(s.ends, s.lats, strict=True) if t0 <= e <= t1
    )
    errors = sum(1 for s in slots for e in s.error_ends if t0 <= e <= t1)
    client, server, machine = (c1 - c0) / wall, (s1 - s0) / wall, (m1 - m0) / wall
    return {
        "duration_s": round(wall, 3),
        "requests": len(lats),
        "errors": errors,
        "first_error": next((s.first_error for s in slots if s.first_error), ""),
        "rps": round(len(lats) / wall, 1),
        "per_connection": [sum(1 for e in s.ends if t0 <= e <= t1) for s in slots],
        "p50_ms": round(percentile(lats, 0.50) / 1e6, 3),
        "p90_ms": round(percentile(lats, 0.90) / 1e6, 3),
        "p99_ms": round(percentile(lats, 0.99) / 1e6, 3),
        "mean_ms": round(sum(lats) / len(lats) / 1e6, 3) if lats else float("nan"),
        # Shares of one core during the timed window.
        "client_cpu": round(client, 3),
        "server_cpu": round(server, 3) if server_pid else None,
        "machine_cpu": round(machine, 3),
        "other_cpu": round(machine - client - server, 3) if server_pid else None,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", required=True)
    p.add_argument(
        "--body", action="append", required=True, help="file holding a request body (repeatable)"
    )
    p.add_argument("--header", action="append", default=[], help="'Name: value' (repeatable)")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--server-pid", type=int, default=0, help="process whose CPU to report")
    p.add_argument("--client", choices=("raw", "httpclient"), default="raw")
    args = p.parse_args()
    if args.host != "127.0.0.1":
        p.error("the load generator only targets 127.0.0.1")
    if args.concurrency < 1 or not args.duration > 0 or not args.warmup >= 0:
        p.error("--concurrency must be >= 1, --duration > 0 and --warmup >= 0")
    if missing := [b for b in args.body if not Path(b).is_file()]:
        p.error(f"--body: no such file: {missing[0]}")
    json.dump(run(args), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

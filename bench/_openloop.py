"""Open-loop HTTP load generator, run by bench/batching.py as its own process.

Requests arrive at a fixed rate whether or not earlier ones were answered, as independent clients
do under overload (a closed loop slows down with the server and can never overload it). Each
arrival takes an idle keep-alive connection from a pool or opens a new one. A separate connection
polls the health endpoint every --health-every seconds. Every request waits at most its deadline
plus --grace seconds for a reply; one that gets none is a silent timeout. Stdlib only.

Prints one JSON object: arrivals, replies by status, latency of the accepted (200) replies and how
many of them came back after their deadline, 429 replies with and without Retry-After, silent
timeouts, connection errors, health-probe latencies, and this process's CPU share.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"
IDLE_S = 2.0


def build(method: str, path: str, port: int, body: bytes, headers: list[str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines + headers) + "\r\n\r\n").encode("latin-1") + body


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


class Run:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        body = Path(opts.body).read_bytes()
        self.request = build("POST", opts.path, opts.port, body, opts.header)
        self.probe = build("GET", opts.health_path, opts.port, b"", [])
        # Idle keep-alive connections and when each became idle: one idle longer than
        # IDLE_S is closed instead of reused, before the server's keep-alive timeout (uvicorn:
        # 5 s) can close it under a request in flight.
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.status: dict[str, int] = {}
        self.ok_ms: list[float] = []
        self.late = 0  # 200 replies that arrived after the request's deadline
        self.retry_after = {"with": 0, "without": 0}
        self.silent = 0  # no reply within deadline + grace
        self.conn_errors = 0
        self.first_error = ""  # the first non-200, non-429 reply
        self.first_conn_error = ""
        self.health_ms: list[float] = []
        self.health_failed = 0
        self.max_open = 0
        self.open = 0

    async def one(self) -> None:
        opts = self.opts
        t0 = time.perf_counter()
        try:
            while self.idle and t0 - self.idle[-1][2] > IDLE_S:
                self.idle.pop()[1].close()
                self.open -= 1
            if self.idle:
                reader, writer, _ = self.idle.pop()
            else:
                reader, writer = await asyncio.open_connection(HOST, opts.port)
                self.open += 1
                self.max_open = max(self.max_open, self.open)
        except OSError as e:
            self.conn_errors += 1
            self.first_conn_error = self.first_conn_error or f"connect: {e}"
            return
        keep = False
        try:
            writer.write(self.request)
            status, headers, body = await asyncio.wait_for(
                self._send_and_read(writer, reader), opts.deadline_ms / 1e3 + opts.grace
            )
            ms = (time.perf_counter() - t0) * 1e3
            self.status[str(status)] = self.status.get(str(status), 0) + 1
            if status == 200:
                self.ok_ms.append(ms)
                self.late += ms > opts.deadline_ms
            elif status == 429:
                self.retry_after["with" if "retry-after" in headers else "without"] += 1
            elif not self.first_error:
                self.first_error = f"HTTP {status}: {body[:200]!r}"
            keep = headers.get("connection", "").lower() != "close"
        except TimeoutError:
            self.silent += 1
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            self.conn_errors += 1
            self.first_conn_error = self.first_conn_error or f"{type(e).__name__}: {e!r}"
        if keep:
            self.idle.append((reader, writer, time.perf_counter()))
        else:
            writer.close()
            self.open -= 1

    @staticmethod
    async def _send_and_read(
        writer: asyncio.StreamWriter, reader: asyncio.StreamReader
    ) -> tuple[int, dict[str, str], bytes]:
        await writer.drain()
        return await read_reply(reader)

    async def health(self, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection(HOST, self.opts.port)
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                writer.write(self.probe)
                status, _, _ = await asyncio.wait_for(read_reply(reader), 5.0)
                if status == 200:
                    self.health_ms.append((time.perf_counter() - t0) * 1e3)
                else:
                    self.health_failed += 1
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                self.health_failed += 1
                writer.close()
                reader, writer = await asyncio.open_connection(HOST, self.opts.port)
            await asyncio.sleep(self.opts.health_every)
        writer.close()

    async def main(self) -> dict[str, object]:
        opts = self.opts
        stop = asyncio.Event()
        prober = asyncio.create_task(self.health(stop))
        tasks: set[asyncio.Task[None]] = set()
        n = int(opts.rate * opts.duration)
        c0, t0 = _cpu(), time.perf_counter()
        behind = 0.0
        for i in range(n):
            delay = t0 + i / opts.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                behind = max(behind, -delay)
            task = asyncio.create_task(self.one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        sent_s = time.perf_counter() - t0
        if tasks:
            await asyncio.wait(tasks)
        stop.set()
        await prober
        wall = time.perf_counter() - t0
        for _, writer, _ in self.idle:
            writer.close()
        ok = sorted(self.ok_ms)
        health = sorted(self.health_ms)
        return {
            "rate_target": opts.rate, "arrivals": n, "rate_achieved": round(n / sent_s, 1),
            "most_behind_schedule_ms": round(behind * 1e3, 1),
            "deadline_ms": opts.deadline_ms, "status": self.status,
            "accepted": len(ok), "accepted_after_deadline": self.late,
            "accepted_p50_ms": _pct(ok, 0.5), "accepted_p99_ms": _pct(ok, 0.99),
            "accepted_max_ms": round(ok[-1], 1) if ok else None,
            "retry_after_on_429": self.retry_after, "silent_timeouts": self.silent,
            "connection_errors": self.conn_errors, "first_error": self.first_error,
            "first_connection_error": self.first_conn_error,
            "connections_max": self.max_open,
            "health_probes": len(health), "health_failed": self.health_failed,
            "health_p50_ms": _pct(health, 0.5), "health_p99_ms": _pct(health, 0.99),
            "health_max_ms": round(health[-1], 2) if health else None,
            "health_over_50ms": sum(ms > 50 for ms in health),
            "client_cpu": round((_cpu() - c0) / wall, 3), "wall_s": round(wall, 2),
        }  # fmt: skip


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, round(q * (len(values) - 1)))], 2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--body", required=True, help="file with the request body")
    p.add_argument("--header", action="append", default=[], help="'Name: value'")
    p.add_argument("--rate", type=float, required=True, help="arrivals per second")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--deadline-ms", type=float, required=True,
                   help="the deadline the requests carry (judges the 200 replies)")  # fmt: skip
    p.add_argument("--grace", type=float, default=5.0,
                   help="seconds past the deadline before a missing reply is a silent timeout")  # fmt: skip
    p.add_argument("--health-path", default="/v2/health/ready")
    p.add_argument("--health-every", type=float, default=0.05)
    opts = p.parse_args()
    print(json.dumps(asyncio.run(Run(opts).main())))
    return 0


if __name__ == "__main__":
    sys.exit(main())

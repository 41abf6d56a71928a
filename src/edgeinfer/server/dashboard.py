"""GET /dashboard: one self-contained page; GET /v2/dashboard/data: the JSON it polls.

The page (dashboard.html beside this module: inline CSS, JS and SVG, nothing fetched from
elsewhere) asks for the data every 2 s. The data is cumulative counters plus a recent latency
window, so any number of open pages can poll without the server keeping state for them: rates
(requests/s, CPU %, recent mean batch size) are differences the page takes between two polls.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import cache
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edgeinfer import __version__
from edgeinfer.errors import EdgeInferError
from edgeinfer.lifecycle.interfaces import EngineControl
from edgeinfer.server.http_common import json_response
from edgeinfer.telemetry.metrics import VersionSample

WINDOW_S = 10.0  # latency percentiles over the last WINDOW_S seconds
_STARTED = time.time()


def routes(engine: EngineControl) -> list[Route]:
    async def page(request: Request) -> Response:
        return Response(
            _page(), media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"}
        )

    async def data(request: Request) -> Response:
        return json_response(dashboard_data(engine), headers={"Cache-Control": "no-store"})

    return [Route("/dashboard", page), Route("/v2/dashboard/data", data)]


@cache
def _page() -> bytes:
    return resources.files("edgeinfer.server").joinpath("dashboard.html").read_bytes()


def dashboard_data(
    engine: EngineControl, now: Callable[[], float] = time.monotonic
) -> dict[str, Any]:
    """Everything the page shows, read from the Engine and the host at this instant. Sensor
    readings come from the engine's device governor, which caches them (at most one read a
    second), so open pages add no sysfs reads of their own."""
    t = now()
    samples: dict[str, list[VersionSample]] = {}
    for s in engine.version_samples():
        samples.setdefault(s.stats.name, []).append(s)
    states: dict[str, tuple[str, str]] = {}
    for row in engine.index():
        if row.name not in states or row.state == "READY":
            states[row.name] = (row.state, row.reason)
    models = []
    for name, (state, reason) in sorted(states.items()):
        try:
            status = engine.lifecycle_status(name).to_json()
        except EdgeInferError:
            status = {"live": None, "canary": None}
        versions = [_version(s, status, t) for s in samples.get(name, [])]
        versions.sort(key=lambda v: int(v["version"]))
        models.append(
            {
                "name": name,
                "state": state,
                "reason": reason,
                "live": status["live"],
                "canary": status["canary"],
                "versions": versions,
            }
        )
    return {
        "server": {
            "version": __version__,
            "uptime_s": round(time.time() - _STARTED, 1),
            "ready": engine.ready(),
        },
        "t": t,
        "window_s": WINDOW_S,
        "models": models,
        "host": _host(engine),
        "llm": _llm(engine, t),
    }


_last_tokens: dict[str, tuple[float, int]] = {}  # model -> (time, generation tokens) at last poll


def _llm(engine: EngineControl, t: float) -> dict[str, Any] | None:
    """Generation tokens/s since the previous poll, summed over LLMs; None without LLMs."""
    samples = engine.llm_samples()
    if not samples:
        return None
    totals: dict[str, int] = {}
    running = waiting = 0
    for s in samples:
        totals[s.stats.model_name] = totals.get(s.stats.model_name, 0) + s.stats.generation_tokens
        running, waiting = running + s.running, waiting + s.waiting
    rate = 0.0
    for model, tokens in totals.items():
        before = _last_tokens.get(model)
        if before is not None and t > before[0] and tokens >= before[1]:
            rate += (tokens - before[1]) / (t - before[0])
        _last_tokens[model] = (t, tokens)
    return {
        "tokens_per_s": rate,
        "detail": f"{running} generating, {waiting} waiting, {sum(totals.values())} tokens",
    }


def _version(sample: VersionSample, status: dict[str, Any], t: float) -> dict[str, Any]:
    s = sample.stats
    canary = status.get("canary") or {}
    if s.version == status.get("live"):
        role = "live"
    else:
        role = "canary" if canary.get("version") == s.version else "standby"
    recent = sorted(sec for when, sec, _ in s.recent() if when >= t - WINDOW_S)
    return {
        "version": s.version,
        "role": role,
        "weight": canary.get("weight") if role == "canary" else None,
        "success": s.success.count,
        "failure": s.fail.count,
        "failures": dict(s.failures),
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "pending": sample.pending,
        "executing": sample.executing,
        "window_requests": len(recent),
        "p50_ms": _percentile_ms(recent, 0.50),
        "p99_ms": _percentile_ms(recent, 0.99),
        "mean_ms": round(s.success.ns / s.success.count / 1e6, 3) if s.success.count else None,
    }


def _percentile_ms(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 3)


def _host(engine: EngineControl) -> dict[str, Any]:
    snap = engine.device_snapshot()
    device = {k: v for k, v in asdict(snap).items() if k != "read_at"}
    try:
        load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "rss_bytes": _rss_bytes(),
        "cpu_seconds": time.process_time(),  # all threads of this process
        "cpus": os.cpu_count(),
        "load": load,
        **device,  # temp_c, freq_*, memory_*, throttled, capacity factor and reason
    }


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None

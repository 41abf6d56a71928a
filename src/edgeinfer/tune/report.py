"""The tuning report: every trial, the Pareto frontier of latency against throughput, the winner
against the default configuration, as report.json, report.md and frontier.svg."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from edgeinfer.tune.search import DEFAULT_KEY, Objective, Trial

MIN_GAIN = 0.05  # a winner must beat the default by this much, or by the measured spread


def point(t: Trial, concurrency: int) -> tuple[float, float] | None:
    """(p99 ms, throughput) of a trial at one concurrency, as the search measured it
    (in-process for every trial, so the frontier compares like with like)."""
    lv = next((x for x in t.in_process or t.levels if x["concurrency"] == concurrency), None)
    return None if lv is None or t.status != "ok" else (lv["p99_ms"], lv["throughput"])


def frontier(trials: list[Trial], concurrency: int) -> list[Trial]:
    """Trials no other beats on both p99 latency and throughput, by increasing latency."""
    pts = [(p, t) for t in trials if (p := point(t, concurrency)) is not None]
    pts.sort(key=lambda pt: (pt[0][0], -pt[0][1]))
    out, best = [], -1.0
    for (_, tput), t in pts:
        if tput > best:
            out.append(t)
            best = tput
    return out


def decide(trials: dict[str, Trial], objective: Objective) -> dict[str, Any]:
    """The winner, or why the default stays: a gain within the noise changes nothing. Once a
    confirmation round ran, only the configurations it measured again can win."""
    default = trials.get(DEFAULT_KEY)
    base = objective.score(default) if default else None
    pool = [t for t in trials.values() if t.confirmed] or list(trials.values())
    scored = [(s, t) for t in pool if (s := objective.score(t)) is not None]
    if base is None or default is None:
        return {"changed": False, "why": "the default configuration could not be measured"}
    s, best = max(scored, key=lambda st: st[0])
    # The spread between runs at the concurrency the score came from, of both configurations.
    spreads = [lv["spread"] for t in (default, best) for lv in t.levels]
    noise = max([MIN_GAIN, *spreads])
    # latency: how many times lower the p99; throughput: how many times more requests
    gain = (-base) / max(-s, 1e-9) if objective.kind == "latency" else s / max(base, 1e-9)
    if best.key == DEFAULT_KEY or gain <= 1 + noise:
        return {
            "changed": False,
            "gain": gain,
            "noise": noise,
            "winner": DEFAULT_KEY,
            "why": f"nothing beat the default by more than the measured noise "
            f"({noise:.0%}): the configuration stays as it is",
        }
    return {
        "changed": True,
        "gain": gain,
        "noise": noise,
        "winner": best.key,
        "candidate": best.candidate,
        "accuracy": best.accuracy,
        "served": best.served,
    }


def summary_line(decision: dict[str, Any], objective: Objective) -> str:
    if not decision["changed"]:
        return str(decision["why"])
    what = "throughput" if objective.kind == "throughput" else "lower p99 latency"
    budget = (
        f" at p99 <= {objective.latency_budget_ms:g} ms"
        if objective.latency_budget_ms is not None
        else ""
    )
    acc = decision.get("accuracy")
    accuracy = (
        "outputs identical to the default's"
        if acc is None
        else f"{acc['metric']} agreement {acc['value']:.4f}"
    )
    how = ", both served over HTTP" if decision.get("served") else ""
    return (
        f"{decision['winner']}: {decision['gain']:.2f}x the default's {what}{budget}{how}, "
        f"{accuracy}"
    )


def write(
    folder: Path,
    trials: dict[str, Trial],
    pruned: list[tuple[str, str]],
    objective: Objective,
    decision: dict[str, Any],
    meta: dict[str, Any],
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    top = max(objective.concurrency)
    body = {
        **meta,
        "objective": objective.__dict__,
        "decision": decision,
        "summary": summary_line(decision, objective),
        "trials": [t.__dict__ for t in trials.values()],
        "pruned": [{"candidate": k, "reason": r} for k, r in pruned],
        "frontier": [t.key for t in frontier(list(trials.values()), top)],
    }
    (folder / "report.json").write_text(json.dumps(body, indent=1) + "\n")
    (folder / "frontier.svg").write_text(svg(list(trials.values()), top, meta.get("unit", "req/s")))
    (folder / "report.md").write_text(markdown(body, trials, objective))
    return folder / "report.md"


def markdown(body: dict[str, Any], trials: dict[str, Trial], objective: Objective) -> str:
    unit = body.get("unit", "req/s")
    lines = [
        f"# edgeinfer tune: {body.get('model')} v{body.get('version')}",
        "",
        f"**{body['summary']}**",
        "",
        "![frontier](frontier.svg)",
        "",
        "| trial | status | "
        + " | ".join(f"c={c} {unit}, p50/p99 ms" for c in objective.concurrency)
        + " | RSS MB | accuracy | measured |",
        "|---|---|" + "---|" * len(objective.concurrency) + "---|---|---|",
    ]
    for t in trials.values():
        cells = []
        for c in objective.concurrency:
            lv = t.level(c)
            cells.append(
                ""
                if lv is None
                else f"{lv['throughput']:.1f} ({lv['p50_ms']:.1f}/{lv['p99_ms']:.1f})"
            )
        acc = "" if t.accuracy is None else f"{t.accuracy['metric']} {t.accuracy['value']:.4f}"
        status = t.status if not t.error else f"{t.status}: {t.error}"
        lines.append(
            f"| {t.key} | {status} | "
            + " | ".join(cells)
            + f" | {t.rss_peak_bytes / 2**20:.0f} | {acc} | {'HTTP' if t.served else 'in-process'} |"
        )
    if any(t.served for t in trials.values()):
        lines += [
            "",
            "HTTP: measured again through `edgeinfer serve` with the client in a process of its "
            "own (RSS: the server's); the winner is picked on these. Their in-process figures "
            "are in report.json (`in_process`); the plot shows every trial in-process.",
        ]
    if body["pruned"]:
        lines += ["", "## Not tried", ""]
        lines += [f"- {p['candidate']}: {p['reason']}" for p in body["pruned"]]
    return "\n".join(lines) + "\n"


def svg(
    trials: list[Trial], concurrency: int, unit: str = "req/s", w: int = 640, h: int = 400
) -> str:
    """Throughput against p99 latency at one concurrency; the frontier joined by a line."""
    pts = [(p, t) for t in trials if (p := point(t, concurrency)) is not None]
    if not pts:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}"></svg>\n'
    xmax = max(p[0] for p, _ in pts) * 1.1 or 1.0
    ymax = max(p[1] for p, _ in pts) * 1.1 or 1.0
    m = 60

    def xy(lat: float, tput: float) -> tuple[float, float]:
        return m + lat / xmax * (w - 2 * m), h - m - tput / ymax * (h - 2 * m)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<line x1="{m}" y1="{h - m}" x2="{w - m}" y2="{h - m}" stroke="black"/>',
        f'<line x1="{m}" y1="{m}" x2="{m}" y2="{h - m}" stroke="black"/>',
        f'<text x="{w / 2}" y="{h - 20}" text-anchor="middle">p99 latency (ms) at '
        f"concurrency {concurrency}; x max {xmax:.1f}</text>",
        f'<text x="15" y="{h / 2}" transform="rotate(-90 15 {h / 2})" text-anchor="middle">'
        f"throughput ({unit}); y max {ymax:.1f}</text>",
    ]
    front = frontier(trials, concurrency)
    line = " ".join("{:.1f},{:.1f}".format(*xy(*point(t, concurrency) or (0, 0))) for t in front)
    out.append(f'<polyline points="{line}" fill="none" stroke="#d62728" stroke-width="2"/>')
    for (lat, tput), t in pts:
        x, y = xy(lat, tput)
        color = "#1f77b4" if t.key != DEFAULT_KEY else "#2ca02c"
        out.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{color}">'
            f"<title>{escape(t.key)}: {tput:.1f} {unit}, p99 {lat:.1f} ms</title></circle>"
        )
        if t in front or t.key == DEFAULT_KEY:
            out.append(f'<text x="{x + 6:.1f}" y="{y - 6:.1f}">{escape(t.key)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"

"""Old code against new on the same benchmark, paired: runs `bench/<name>.py` several times,
alternating the edgeinfer sources it imports and serves (old, new, new, old, ...), so that a
refactoring can be shown within noise of the code before it on the same machine in one session.

    python bench/source_ab.py serving --old ../old/src --rounds 2   # -> bench/results/serving-ab.json
    python bench/source_ab.py batching --old ../old/src --new src --quick

The benchmark harness (this checkout's bench/) is the same for both sides; only PYTHONPATH
differs, so the server, the in-process baseline and the FastAPI peer run the side's code. Every
number in the benchmark's `ratios` and `targets` is compared: the median of each side, new / old,
and the noise (each side's spread between its own rounds, (max - min) / median).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"


def numbers(res: dict[str, Any]) -> dict[str, float]:
    """Every comparable number of one run: its ratios and its targets' values."""
    out = {k: float(v) for k, v in res.get("ratios", {}).items() if isinstance(v, int | float)}
    for t in res.get("targets", []):
        if isinstance(t.get("value"), int | float):
            out[t["target"]] = float(t["value"])
    return out


def one_run(name: str, src: Path, quick: bool, out: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, str(BENCH / f"{name}.py"), "--output", str(out)]
    subprocess.run(cmd + (["--quick"] if quick else []), env=env, check=True)
    return numbers(json.loads(out.read_text()))


def compare(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, Any]]:
    out = {}
    for key in runs["old"][0]:
        sides = {s: [r[key] for r in rs if key in r] for s, rs in runs.items()}
        if not all(sides.values()):
            continue
        med = {s: statistics.median(v) for s, v in sides.items()}
        spread = {s: (max(v) - min(v)) / abs(med[s]) if med[s] else 0.0 for s, v in sides.items()}
        ratio = med["new"] / med["old"] if med["old"] else float("nan")
        out[key] = {
            "old": sides["old"],
            "new": sides["new"],
            "new_over_old": round(ratio, 3),
            "noise": round(max(spread.values()), 3),
            "within_noise": abs(ratio - 1) <= max(spread.values()),
        }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("bench", help="serving, batching, ... (a bench/<name>.py with --output)")
    p.add_argument("--old", type=Path, required=True, help="the old checkout's src/ directory")
    p.add_argument("--new", type=Path, default=BENCH.parent / "src")
    p.add_argument("--rounds", type=int, default=2, help="runs per side (default 2)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--output", type=Path)
    opts = p.parse_args()
    order = ["old", "new", "new", "old"] * opts.rounds
    order = order[: 2 * opts.rounds]
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeinfer-ab-") as tmp:
        for i, side in enumerate(order):
            src = (opts.old if side == "old" else opts.new).resolve()
            print(f"[ab] run {i + 1}/{len(order)}: {side} ({src})", file=sys.stderr, flush=True)
            runs[side].append(one_run(opts.bench, src, opts.quick, Path(tmp) / f"{i}.json"))
    result = {
        "benchmark": opts.bench,
        "quick": opts.quick,
        "order": order,
        "old": str(opts.old.resolve()),
        "new": str(opts.new.resolve()),
        "load_average_after": os.getloadavg(),
        "wall_s": round(time.perf_counter() - started, 1),
        "numbers": compare(runs),
    }
    suffix = "-quick" if opts.quick else ""
    output = opts.output or RESULTS / f"{opts.bench}-ab{suffix}.json"
    output.write_text(json.dumps(result, indent=2) + "\n")
    for key, v in result["numbers"].items():
        mark = "ok " if v["within_noise"] else "OUT"
        print(f"{mark} {v['new_over_old']:6.3f} (noise {v['noise']:.3f})  {key}")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

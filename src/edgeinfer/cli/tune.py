"""`edgeinfer tune REPO MODEL`: the command line of the tuning run (edgeinfer/tune/).

Exit codes: 0 done (a report is written, with or without a change), 2 bad input (one line).
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from typing import Any

from edgeinfer.errors import EdgeInferError, InvalidInput


def _parse_list(text: str, cast: Any, what: str) -> tuple[Any, ...]:
    try:
        values = tuple(cast(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InvalidInput(f"{what}: expected a comma-separated list, got {text!r}") from None
    if not values:
        raise InvalidInput(f"{what}: empty list")
    return values


def add_tune(sub: Any) -> None:
    p = sub.add_parser(
        "tune",
        help="find the fastest configuration for a model on this device",
        description="Measure backends, precisions, threads, instances and batching through "
        "the serving path on this device, keep what passes the accuracy gate, report the "
        "latency/throughput frontier and apply the winner with --apply.",
    )
    p.add_argument("repo", type=Path, metavar="REPO")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--version", type=int, help="version to tune (default: the latest)")
    _add_search(p)
    _add_accuracy(p)
    p.add_argument(
        "--apply",
        action="store_true",
        help="write the winner into config.toml (and publish INT8 as a new version)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_tune)


def _add_search(p: Any) -> None:
    p.add_argument("--objective", choices=("throughput", "latency"), default="throughput")
    p.add_argument(
        "--latency-budget-ms",
        type=float,
        help="throughput counts only at concurrencies whose p99 stays under this",
    )
    p.add_argument(
        "--concurrency",
        default="1,4,8",
        help="client concurrencies to measure (default: %(default)s)",
    )
    p.add_argument("--budget-minutes", type=float, default=15.0)
    p.add_argument(
        "--seconds",
        type=float,
        default=2.0,
        help="measurement time per repetition and concurrency (default: %(default)s)",
    )
    p.add_argument("--repetitions", type=int, default=3)
    p.add_argument("--precision", help="comma-separated: fp32,int8-dynamic,int8-static")
    p.add_argument("--backend", help="comma-separated backends to try (default: all installed)")


def _add_accuracy(p: Any) -> None:
    p.add_argument(
        "--eval",
        type=Path,
        metavar="DATA",
        help="requests and accuracy data (.npz, image folder, .txt); default: "
        "synthetic requests; also the INT8 calibration data",
    )
    p.add_argument(
        "--calibration",
        type=Path,
        metavar="DATA",
        help="INT8 static calibration data (default: --eval)",
    )
    p.add_argument(
        "--metric",
        choices=("auto", "top1", "cosine"),
        default="auto",
        help="agreement with the default configuration's outputs",
    )
    p.add_argument(
        "--max-drop",
        type=float,
        default=0.005,
        help="largest allowed drop in agreement (default: %(default)s)",
    )


def cmd_tune(ns: Any) -> int:
    from edgeinfer.tune.run import TuneArgs, run  # numpy, the runtimes: only when it runs

    try:
        args = TuneArgs(
            ns.repo,
            ns.model,
            ns.version,
            ns.objective,
            ns.latency_budget_ms,
            _parse_list(ns.concurrency, int, "--concurrency"),
            ns.eval,
            ns.calibration,
            ns.metric,
            ns.max_drop,
            ns.budget_minutes,
            ns.seconds,
            ns.repetitions,
            _parse_list(ns.precision, str, "--precision") if ns.precision else None,
            _parse_list(ns.backend, str, "--backend") if ns.backend else None,
            ns.apply,
        )
        result = run(args)
    except (EdgeInferError, tomllib.TOMLDecodeError, OSError) as e:
        print(f"edgeinfer tune: {getattr(e, 'message', e)}", file=sys.stderr)
        return 2
    if ns.json:
        print(json.dumps(result, indent=2))
        return 0
    print(result["summary"])
    print(f"report: {result['report']}")
    if "applied" in result:
        print(
            f"applied: {result['applied']['config']}"
            + (
                f", new version {result['applied']['version']}"
                if result["applied"]["version"]
                else ""
            )
        )
    elif "config" in result:
        print("to use it, set in config.toml (or run again with --apply):\n")
        print(result["config"])
        if result.get("variant"):
            print(f"and publish the model in {result['variant']} as a new version")
    return 0

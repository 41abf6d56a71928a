"""`edgeinfer profile`: per-layer time of a model, from a server or a repository on disk."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgeinfer.cli.client import DEFAULT_URL, CliError, add_server_args, request


def cmd_profile(args: argparse.Namespace) -> int:
    from edgeinfer.runtime.profile import render

    if args.repository is not None:
        from edgeinfer.repository import Repository
        from edgeinfer.runtime.profile import profile_model

        entry = Repository(args.repository).model(args.model)
        candidates = (
            entry.selected()
            if args.version is None
            else [v for v in entry.versions if v.version == args.version]
        )
        if not candidates:
            raise CliError(f"model '{args.model}' has no version {args.version or ''} to profile")
        v = candidates[-1]
        doc = {
            "model": args.model,
            "version": str(v.version),
            **profile_model(v.path, entry.config, args.batch, args.runs),
        }
    else:
        where = f"/v2/models/{args.model}" + (f"/versions/{args.version}" if args.version else "")
        doc = request(args, "GET", f"{where}/profile?batch={args.batch}&runs={args.runs}")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(render(doc, top=args.top, markdown=args.markdown))
    return 0


def add_profile(sub: Any) -> None:
    p = sub.add_parser(
        "profile",
        help="per-layer time of a model (ONNX Runtime's profiler)",
        description="Run a model on a separate profiling session (the live one "
        "is not touched) and print the slowest nodes and the share of each op "
        "type. Asks a running server, or profiles a repository on disk.",
    )
    p.add_argument("model")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--url", default=DEFAULT_URL, help=f"server URL (default: $EDGEINFER_URL or {DEFAULT_URL})"
    )
    add_server_args(p, url=False)
    src.add_argument("--repository", type=Path, help="profile from a repository folder instead")
    p.add_argument("--version", type=int, help="version (default: the live/newest one)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default: 1)")
    p.add_argument("--runs", type=int, default=10, help="measured runs after warm-up (default: 10)")
    p.add_argument("--top", type=int, default=15, help="nodes to list (default: 15)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the whole profile as JSON")
    fmt.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    p.set_defaults(func=cmd_profile)

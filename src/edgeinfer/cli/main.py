"""`edgeinfer` command line: one module per command group in this package. Heavy modules are
imported inside the commands that need them."""

from __future__ import annotations

import argparse
import sys

from edgeinfer import __version__
from edgeinfer.cli.adapters import add_adapters
from edgeinfer.cli.chat import add_chat  # stdlib-only at import
from edgeinfer.cli.client import CliError
from edgeinfer.cli.demo import add_demo
from edgeinfer.cli.doctor import add_doctor  # stdlib-only at import
from edgeinfer.cli.fleet import add_fleet
from edgeinfer.cli.keys import add_keys
from edgeinfer.cli.models import add_models
from edgeinfer.cli.profile import add_profile
from edgeinfer.cli.quantize import add_optimize, add_quantize
from edgeinfer.cli.serve import add_serve
from edgeinfer.cli.tune import add_tune
from edgeinfer.config import ConfigError
from edgeinfer.errors import EdgeInferError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeinfer",
        description="Load, optimize and serve AI models on small machines.",
    )
    parser.add_argument("--version", action="version", version=f"edgeinfer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_serve(sub)
    add_models(sub)
    add_profile(sub)
    add_demo(sub)
    add_doctor(sub)
    add_chat(sub)
    add_quantize(sub)
    add_optimize(sub)
    add_tune(sub)
    add_fleet(sub)
    add_adapters(sub)
    add_keys(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (CliError, ConfigError, EdgeInferError) as e:
        print(f"edgeinfer: error: {e}", file=sys.stderr)
        return getattr(e, "code", 2)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

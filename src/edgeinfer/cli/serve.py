"""`edgeinfer serve`: every ServerSettings field is a flag (and an EDGEINFER_* variable)."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from edgeinfer.cli.client import CliError
from edgeinfer.config import ServerSettings, parse_overrides
from edgeinfer.errors import InvalidInput
from edgeinfer.server.parse import parse_float, parse_int


def add_serve(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model repository over HTTP and gRPC",
        description="Serve every model in a repository over KServe v2 HTTP/gRPC "
        "and the OpenAI API. Each flag can also be set as EDGEINFER_<FLAG>.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--repository", type=Path, help=fields(ServerSettings)[0].metadata["help"])
    src.add_argument(
        "--demo",
        action="store_true",
        help="serve the built-in demo repository (built on first use)",
    )
    _add_setting_flags(p)
    _add_list_flags(p)
    p.set_defaults(func=cmd_serve)


def _add_setting_flags(p: argparse.ArgumentParser) -> None:
    """One flag per scalar ServerSettings field, its default read from EDGEINFER_*."""
    env = ServerSettings.env_defaults()
    for f in fields(ServerSettings):
        if f.name in _TUPLE_SETTINGS:
            continue
        flag = "--" + f.name.replace("_", "-")
        if str(f.type) == "bool":
            p.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=env[f.name].lower() in ("1", "true", "yes"),
                help=f"{f.metadata['help']} (default: %(default)s)",
            )
            continue
        # A string default goes through `type` too, so EDGEINFER_* values are checked alike.
        default: object = env[f.name]
        if f.name == "model_control" and "EDGEINFER_MODEL_CONTROL" not in os.environ:
            default = None  # resolved later: poll with --demo, else explicit
        p.add_argument(
            flag,
            type=_number(str(f.type), flag),
            default=default,
            help=f"{f.metadata['help']} (default: %(default)s)",
        )


def _number(kind: str, flag: str) -> Callable[[str], Any]:
    """The flag's parser: ints as ASCII decimal and floats finite, as on the wire (`int()` takes
    '٣' and '1_000', `float()` takes 'inf', which no timeout or bound can use)."""
    if kind not in ("int", "float"):
        return str

    def parse(text: str) -> Any:
        try:
            if kind == "int":
                return parse_int(text, flag)
            return parse_float(text, flag)
        except InvalidInput as e:
            raise argparse.ArgumentTypeError(e.message) from e

    return parse


def _add_list_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--load-model",
        action="append",
        dest="load_models",
        metavar="NAME",
        help="with --model-control explicit: load only these at start (repeatable; default: all)",
    )
    p.add_argument(
        "--set",
        action="append",
        dest="overrides",
        metavar="MODEL.KEY=VALUE",
        default=os.environ.get("EDGEINFER_SET", "").split() or None,
        help="override a model's config.toml, e.g. digits.max_batch_size=16 or "
        "digits.dynamic_batching.max_queue_delay_us=500 (repeatable; env "
        "EDGEINFER_SET, space-separated)",
    )
    p.add_argument(
        "--adapter-dir",
        action="append",
        dest="adapter_dirs",
        metavar="DIR",
        default=[d for d in os.environ.get("EDGEINFER_ADAPTER_DIRS", "").split(os.pathsep) if d]
        or None,
        help="a directory the LoRA load API may read adapters from, besides each "
        "model's adapters/ folder (repeatable; env EDGEINFER_ADAPTER_DIRS, "
        f"'{os.pathsep}'-separated)",
    )


_TUPLE_SETTINGS = ("repository", "load_models", "overrides", "adapter_dirs")


def cmd_serve(args: argparse.Namespace) -> int:
    from edgeinfer.repository import Repository

    if args.demo:
        from edgeinfer.demo import ensure_demo_repository

        root = ensure_demo_repository()
    elif args.repository is not None:
        root = args.repository
    else:
        raise CliError("give --repository DIR or --demo")
    kwargs = {
        f.name: getattr(args, f.name)
        for f in fields(ServerSettings)
        if f.name not in _TUPLE_SETTINGS
    }
    if kwargs["model_control"] is None:
        kwargs["model_control"] = "poll" if args.demo else ServerSettings.model_control
    settings = ServerSettings(
        repository=root,
        load_models=tuple(args.load_models or ("*",)),
        overrides=tuple(args.overrides or ()),
        adapter_dirs=tuple(args.adapter_dirs or ()),
        **kwargs,
    )
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from edgeinfer.server.app import run

    overrides = parse_overrides(settings.overrides)
    repository = Repository(root, overrides)
    for name in overrides:
        repository.model(name)  # validate the overrides before starting
    run(settings, repository)
    return 0

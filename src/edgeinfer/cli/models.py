"""`edgeinfer models`: list, add, load, unload and the lifecycle actions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgeinfer.cli.client import CliError, add_server_args, request


def cmd_models_list(args: argparse.Namespace) -> int:
    if args.repository is not None:
        from edgeinfer.repository import Repository

        for entry in Repository(args.repository).models():
            selected = {v.version for v in entry.selected()}
            for v in entry.versions:
                mark = "*" if v.version in selected else " "
                print(f"{entry.name}\t{v.version}{mark}\t{v.path}")
        return 0
    rows = request(args, "POST", "/v2/repository/index", {})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'MODEL':<24}{'VERSION':<9}{'STATE':<13}REASON")
    for r in rows:
        print(f"{r['name']:<24}{r.get('version', ''):<9}{r['state']:<13}{r.get('reason', '')}")
    return 0


def cmd_models_add(args: argparse.Namespace) -> int:
    from edgeinfer.repository import add_version
    from edgeinfer.runtime import BACKENDS

    if not args.file.is_file():
        raise CliError(f"{args.file}: no such file")
    by_suffix = {Path(b.files[0]).suffix: b for b in BACKENDS.values()}
    backend = by_suffix.get(args.file.suffix.lower())
    if backend is None:
        raise CliError(f"{args.file}: a model file ends in {', '.join(by_suffix)}")
    files = {backend.files[0]: args.file}
    if backend.files[0] == "model.xml":  # OpenVINO IR: the weights sit beside it
        weights = args.file.with_suffix(".bin")
        if not weights.is_file():
            raise CliError(f"{args.file}: OpenVINO IR needs its weights file {weights}")
        files["model.bin"] = weights
    model_dir = args.repository / args.model
    if not (model_dir / "config.toml").exists():
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "config.toml").write_text(f'backend = "{backend.name}"\n')
    for extra in args.extra or []:
        files[extra.name] = extra
    target = add_version(model_dir, files, args.version)
    print(f"added {args.model} version {target.name} at {target}")
    return 0


def cmd_models_load(args: argparse.Namespace) -> int:
    request(args, "POST", f"/v2/repository/models/{args.model}/load", {})
    print(f"loaded {args.model}")
    return 0


def cmd_models_unload(args: argparse.Namespace) -> int:
    request(args, "POST", f"/v2/repository/models/{args.model}/unload", {})
    print(f"unloaded {args.model}")
    return 0


def _lifecycle(args: argparse.Namespace, action: str, body: dict[str, Any]) -> int:
    status = request(args, "POST", f"/v2/repository/models/{args.model}/{action}", body)
    if getattr(args, "json", False):
        print(json.dumps(status, indent=2))
        return 0
    canary = status.get("canary")
    print(
        f"{args.model}: live v{status['live']}"
        + (f", canary v{canary['version']} at {canary['weight']:.0%}" if canary else "")
        + f", resident {', '.join('v' + v for v in status['resident'])}"
    )
    for f in status.get("load_failures", [])[-3:]:
        print(f"  failed v{f['version']} ({f['reason']}): {f['message']}")
    return 0


def cmd_models_rollback(args: argparse.Namespace) -> int:
    return _lifecycle(args, "rollback", {"version": args.to} if args.to else {})


def cmd_models_canary(args: argparse.Namespace) -> int:
    return _lifecycle(args, "canary", {"version": args.version, "weight": args.weight})


def cmd_models_promote(args: argparse.Namespace) -> int:
    return _lifecycle(args, "promote", {})


def cmd_models_abort(args: argparse.Namespace) -> int:
    return _lifecycle(args, "abort", {})


def cmd_models_status(args: argparse.Namespace) -> int:
    return _lifecycle(args, "status", {})


def add_models(sub: Any) -> None:
    p = sub.add_parser(
        "models",
        help="list, add, load and unload models",
        description="Manage models in a repository or on a running server.",
    )
    msub = p.add_subparsers(dest="models_cmd", required=True, metavar="COMMAND")

    ls = msub.add_parser("list", help="models and versions on a server (or in a repository)")
    add_server_args(ls)
    ls.add_argument("--repository", type=Path, help="list a repository on disk instead")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=cmd_models_list)

    add = msub.add_parser("add", help="publish a model file as a new version (atomically)")
    add.add_argument("repository", type=Path, help="repository folder")
    add.add_argument("model", help="model name (created with a default config if new)")
    add.add_argument(
        "file",
        type=Path,
        help="the model: .onnx, .tflite, .gguf, or OpenVINO .xml (its .bin beside it)",
    )
    add.add_argument("--version", type=int, help="version number (default: next)")
    add.add_argument(
        "--extra",
        type=Path,
        action="append",
        help="another file to place in the version (e.g. tokenizer.json)",
    )
    add.set_defaults(func=cmd_models_add)

    commands = (
        ("load", cmd_models_load, "load or reload a model on a server"),
        ("unload", cmd_models_unload, "unload a model on a server"),
        ("rollback", cmd_models_rollback, "switch back to the previous (or --to) version"),
        ("canary", cmd_models_canary, "send a share of traffic to VERSION"),
        ("promote", cmd_models_promote, "make the canary the live version"),
        ("abort", cmd_models_abort, "stop the canary"),
        ("status", cmd_models_status, "live and canary versions, load failures"),
    )
    for name, func, text in commands:
        c = msub.add_parser(name, help=text)
        c.add_argument("model")
        add_server_args(c)
        if name == "rollback":
            c.add_argument("--to", type=int, help="version to roll back to")
        if name == "canary":
            c.add_argument("version", type=int)
            c.add_argument("--weight", type=float, default=0.1, help="share (default 0.1)")
        if name in ("rollback", "canary", "promote", "abort", "status"):
            c.add_argument("--json", action="store_true", help="print JSON")
        c.set_defaults(func=func)

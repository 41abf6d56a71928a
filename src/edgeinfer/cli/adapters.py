"""`edgeinfer adapters list | add | load | unload | convert`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edgeinfer.cli.client import add_server_args, request


def add_adapters(sub: Any) -> None:
    p = sub.add_parser("adapters", help="LoRA adapters: list, add, load, unload, convert")
    s = p.add_subparsers(dest="adapters_command", required=True)
    ls = s.add_parser("list", help="adapters in a repository")
    ls.add_argument("--repository", type=Path, required=True)
    ls.set_defaults(func=_list)
    add = s.add_parser("add", help="publish an adapter file as <model>/adapters/<name>/<N>/")
    add.add_argument("--repository", type=Path, required=True)
    add.add_argument("model")
    add.add_argument("name")
    add.add_argument("file", type=Path, help="a GGUF LoRA or an .onnx_adapter")
    add.add_argument("--tenant", action="append", default=[], help="grant to (repeatable)")
    add.add_argument("--scale", type=float, default=1.0)
    add.set_defaults(func=_add)
    for name in ("load", "unload"):
        q = s.add_parser(name, help=f"{name} an adapter on a running server (admin key)")
        add_server_args(q)
        q.add_argument("lora_name", help="base_model:adapter_name")
        if name == "load":
            q.add_argument("lora_path")
            q.add_argument("--tenant", action="append", default=[])
        q.set_defaults(func=_remote)
    cv = s.add_parser(
        "convert",
        help="PEFT -> GGUF LoRA / .onnx_adapter, or an ONNX base "
        "graph -> a LoRA-ready graph (--graph)",
    )
    cv.add_argument("source", type=Path, help="a PEFT directory, or with --graph a model.onnx")
    cv.add_argument("--base", type=Path, help="the base model file (model.gguf / model.onnx)")
    cv.add_argument("--out", type=Path, required=True)
    cv.add_argument("--graph", action="store_true", help="rewrite an ONNX base graph")
    cv.add_argument("--stacked", action="store_true", help="with --graph: mixed-adapter batches")
    cv.add_argument("--targets", default="", help="with --graph: MatMul weights (default all)")
    cv.add_argument("--rank", type=int, default=16, help="with --stacked: the largest rank")
    cv.set_defaults(func=_convert)


def _list(args: argparse.Namespace) -> int:
    from edgeinfer.adapters.store import scan
    from edgeinfer.repository import Repository

    repo = Repository(args.repository)
    for model in repo.model_names():
        for name, spec in scan(repo.root / model).items():
            tenants = ",".join(sorted(spec.tenants)) or "*"
            print(f"{model}:{name}\tv{spec.version}\t{spec.kind}\ttenants={tenants}")
    return 0


def _add(args: argparse.Namespace) -> int:
    from edgeinfer.adapters.store import add_adapter
    from edgeinfer.repository import Repository

    # A typo in the model name would otherwise publish an adapter no server ever looks at.
    Repository(args.repository).model(args.model)
    path = add_adapter(args.repository / args.model, args.name, args.file, args.tenant, args.scale)
    print(path)
    return 0


def _remote(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"lora_name": args.lora_name}
    if args.adapters_command == "load":
        body["lora_path"] = str(Path(args.lora_path).resolve())
        if args.tenant:
            body["tenants"] = args.tenant
    reply = request(args, "POST", f"/v1/{args.adapters_command}_lora_adapter", body)
    print(reply if isinstance(reply, str) else json.dumps(reply))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from edgeinfer.adapters.convert import convert_graph, convert_peft
    from edgeinfer.errors import EdgeInferError

    try:
        if args.graph:
            targets = [t for t in args.targets.split(",") if t]
            out = convert_graph(args.source, args.out, targets, args.stacked, args.rank)
        else:
            if args.base is None:
                print("convert: --base MODEL_FILE is required for a PEFT adapter", file=sys.stderr)
                return 2
            out = convert_peft(args.source, args.base, args.out)
    except EdgeInferError as e:
        print(f"convert: {e.message}", file=sys.stderr)
        return 1
    print(json.dumps({"out": str(out)}))
    return 0

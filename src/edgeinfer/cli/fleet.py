"""`edgeinfer fleet set | status | rollback`: desired state for groups of devices, in etcd.

    edgeinfer fleet set MODEL VERSION --group G [--canary V --weight 0.1] [--artifact PATH|URL]
    edgeinfer fleet status [--group G] [--json]
    edgeinfer fleet rollback MODEL --group G [--to V]

The registry is `--registry` or $EDGEINFER_REGISTRY (default etcd://127.0.0.1:2379/edgeinfer).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from edgeinfer.registry.desired import Canary, DesiredError, DesiredModel, FileSource
from edgeinfer.registry.rollout import canary_counts
from edgeinfer.registry.source import EtcdRegistry, RegistryError, parse_url

DEFAULT_REGISTRY = "etcd://127.0.0.1:2379/edgeinfer"


class FleetError(Exception):
    """A user-facing failure of a fleet command."""


def _open(url: str) -> EtcdRegistry:
    try:
        endpoint, prefix, ttl = parse_url(url)
    except ValueError as e:
        raise FleetError(str(e)) from e
    return EtcdRegistry(endpoint, prefix, ttl)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def _sha256_url(url: str) -> str:
    import httpx

    h = hashlib.sha256()
    async with httpx.AsyncClient(timeout=60) as c, c.stream("GET", url) as resp:
        if resp.status_code != 200:
            raise FleetError(f"GET {url} answered {resp.status_code}")
        async for chunk in resp.aiter_bytes():
            h.update(chunk)
    return h.hexdigest()


async def _artifacts(specs: list[str], shas: list[str]) -> dict[str, FileSource]:
    """`[NAME=]PATH_OR_URL` entries -> {name in the version folder: source}. NAME defaults to
    `model.onnx` for .onnx files, else the file's name; `--sha256` values pair up in order
    (needed only to skip downloading a URL here; checked against a local file)."""
    out: dict[str, FileSource] = {}
    for i, spec in enumerate(specs):
        name, sep, src = spec.partition("=")
        if not sep or "://" in name:
            name, src = "", spec
        given = shas[i].lower() if i < len(shas) else ""
        if src.startswith(("http://", "https://")):
            digest = given or await _sha256_url(src)
            base = src.rsplit("/", 1)[-1].split("?")[0]
        else:
            path = Path(src).resolve()
            if not path.is_file():
                raise FleetError(f"artifact {src}: no such file")
            digest = _sha256(path)
            if given and given != digest:
                raise FleetError(f"artifact {src} has sha256 {digest}, not {given}")
            src, base = str(path), path.name
        out[name or ("model.onnx" if base.endswith(".onnx") else base)] = FileSource(src, digest)
    return out


async def _update(
    reg: EtcdRegistry,
    group: str,
    model: str,
    change: Callable[[DesiredModel | None], Awaitable[DesiredModel]],
) -> DesiredModel:
    """Read-modify-write with compare-and-swap, so a concurrent halt or rollout is never lost."""
    for _ in range(5):
        old = await reg.read(group, model)
        new = await change(old.model if old else None)
        if await reg.write(group, model, new, expect=old.mod_revision if old else 0):
            return new
    raise FleetError(f"{group}/{model} kept changing under us; try again")


async def _set(args: argparse.Namespace, reg: EtcdRegistry) -> int:
    if (args.canary is None) != (args.weight is None):
        raise FleetError("--canary and --weight go together")
    canary = Canary(args.canary, args.weight) if args.canary is not None else None
    new_files = await _artifacts(args.artifact or [], args.sha256 or [])
    config = args.config.read_text() if args.config else None
    grants = {}
    for spec in args.adapter or []:
        name, sep, tenants = spec.partition("=")
        if not sep or not name:
            raise FleetError(f"--adapter {spec!r}: expected NAME=TENANT[,TENANT...]")
        grants[name] = tuple(t for t in tenants.split(",") if t)

    async def change(old: DesiredModel | None) -> DesiredModel:
        artifacts = dict(old.artifacts) if old else {}
        if new_files:
            artifacts[canary.version if canary else args.version] = new_files
        previous = old.previous if old else None
        if old is not None and old.version != args.version:
            previous = old.version
        return DesiredModel(
            version=args.version,
            canary=canary,
            artifacts=artifacts,
            adapters={**(old.adapters if old else {}), **grants},
            max_error_rate=args.max_error_rate
            if args.max_error_rate is not None
            else old.max_error_rate
            if old
            else 0.05,
            min_requests=args.min_requests
            if args.min_requests is not None
            else old.min_requests
            if old
            else 20,
            halted="",
            previous=previous,
            config=config if config is not None else old.config if old else "",
        )

    want = await _update(reg, args.group, args.model, change)
    print(
        f"{args.group}/{args.model}: v{want.version}"
        + (f", canary v{canary.version} at {canary.weight:.0%}" if canary else "")
    )
    return 0


async def _rollback(args: argparse.Namespace, reg: EtcdRegistry) -> int:
    async def change(old: DesiredModel | None) -> DesiredModel:
        if old is None:
            raise FleetError(f"{args.group}/{args.model} has no desired state to roll back")
        target = args.to if args.to is not None else old.previous
        if target is None or target == old.version:
            raise FleetError(f"{args.group}/{args.model}: no previous version (give --to N)")
        return old.with_changes(version=target, canary=None, halted="", previous=old.version)

    want = await _update(reg, args.group, args.model, change)
    print(f"{args.group}/{args.model}: rolled back to v{want.version}")
    return 0


async def _status(args: argparse.Namespace, reg: EtcdRegistry) -> int:
    groups = await reg.groups()
    devices = await reg.statuses()
    if args.group:
        groups = {g: m for g, m in groups.items() if g == args.group}
        devices = {d: s for d, s in devices.items() if s.get("group") == args.group}
    if args.json:
        print(
            json.dumps(
                {
                    "desired": {
                        g: {m: d.model.to_json() for m, d in ms.items()} for g, ms in groups.items()
                    },
                    "devices": devices,
                },
                indent=2,
                sort_keys=True,
            )
        )
        return 0
    print(f"{'GROUP':<12}{'MODEL':<16}{'DESIRED':<9}{'CANARY':<14}ROLLOUT")
    for group, models in sorted(groups.items()):
        for name, d in sorted(models.items()):
            print(
                f"{group:<12}{name:<16}{'v' + str(d.model.version):<9}"
                f"{_canary_text(d.model.canary):<14}{_rollout(d.model, devices, group, name)}"
            )
    print()
    print(f"{'DEVICE':<16}{'GROUP':<12}{'HEALTH':<10}{'MODEL':<16}{'LIVE':<6}{'CANARY':<14}ERROR")
    for device, doc in sorted(devices.items()):
        health = "ready" if doc.get("healthy") else "not-ready"
        models = doc.get("models") or {"-": {}}
        for name, m in sorted(models.items()):
            canary = m.get("canary")
            ctext = f"v{canary['version']} @ {canary['weight']:.0%}" if canary else "-"
            print(
                f"{device:<16}{doc.get('group', '?'):<12}{health:<10}{name:<16}"
                f"{'v' + str(m['live']) if m.get('live') else '-':<6}{ctext:<14}"
                f"{m.get('error') or '-'}"
            )
    return 0


def _canary_text(c: Canary | None) -> str:
    return f"v{c.version} @ {c.weight:.0%}" if c else "-"


def _rollout(want: DesiredModel, devices: dict[str, Any], group: str, model: str) -> str:
    if want.canary is None:
        return "-"
    n, errors, k = canary_counts(devices, group, model, want.canary.version)
    rate = f"{errors}/{n} errors on {k} device(s), max {want.max_error_rate:.0%}"
    return f"HALTED: {want.halted}" if want.halted else f"running ({rate})"


def _run(
    func: Callable[[argparse.Namespace, EtcdRegistry], Awaitable[int]],
) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        async def go() -> int:
            reg = _open(args.registry)
            try:
                return await func(args, reg)
            finally:
                await reg.close()

        try:
            return asyncio.run(go())
        except (FleetError, RegistryError, DesiredError, OSError) as e:
            print(f"edgeinfer fleet: error: {e}", file=sys.stderr)
            return 1

    return command


def _add_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="fleet_cmd", required=True, metavar="COMMAND")
    registry = os.environ.get("EDGEINFER_REGISTRY") or DEFAULT_REGISTRY
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--registry",
        default=registry,
        help=f"etcd://HOST:PORT/PREFIX (default: $EDGEINFER_REGISTRY or {DEFAULT_REGISTRY})",
    )

    s = sub.add_parser("set", parents=[common], help="the version a group runs, with a canary")
    s.add_argument("model")
    s.add_argument("version", type=int, help="the live version")
    s.add_argument("--group", required=True)
    s.add_argument("--canary", type=int, metavar="V", help="send a share of traffic to V")
    s.add_argument("--weight", type=float, help="the canary's share, 0..1")
    s.add_argument(
        "--artifact",
        action="append",
        metavar="[NAME=]PATH_OR_URL",
        help="a file of the version being rolled out (the canary's if given); repeatable",
    )
    s.add_argument("--sha256", action="append", help="the artifact's sha256 (in order)")
    s.add_argument("--max-error-rate", type=float, help="halt the canary above this (0.05)")
    s.add_argument("--min-requests", type=int, help="canary requests before judging (20)")
    s.add_argument("--config", type=Path, help="config.toml for devices new to the model")
    s.add_argument(
        "--adapter",
        action="append",
        metavar="NAME=TENANT[,TENANT...]",
        help="grant an adapter to tenants (stored for the devices; repeatable)",
    )
    s.set_defaults(func=_run(_set))

    st = sub.add_parser("status", parents=[common], help="devices, versions and health")
    st.add_argument("--group", help="only this group")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=_run(_status))

    r = sub.add_parser("rollback", parents=[common], help="back to the previous version")
    r.add_argument("model")
    r.add_argument("--group", required=True)
    r.add_argument("--to", type=int, help="version to roll back to (default: the previous)")
    r.set_defaults(func=_run(_rollback))


def add_fleet(sub: Any) -> None:
    """Register `edgeinfer fleet` on the main parser's subcommands."""
    p = sub.add_parser(
        "fleet",
        help="desired state for groups of devices (etcd)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    _add_commands(p)

"""`edgeinfer keys create`: a new API key, stored only as a hash."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


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
    print(
        f"(stored only as a hash in {args.file}; this is the one time it is shown)", file=sys.stderr
    )
    return 0


def add_keys(sub: Any) -> None:
    p = sub.add_parser("keys", help="create API keys for --api-keys")
    ksub = p.add_subparsers(dest="keys_cmd", required=True, metavar="COMMAND")
    c = ksub.add_parser("create", help="make a key, store its hash, print it once")
    c.add_argument("--role", choices=("infer", "admin"), required=True)
    c.add_argument("--tenant", help="bind the key to a tenant")
    c.add_argument("--name", default="key", help="a label for logs")
    c.add_argument("--file", type=Path, required=True, help="the keys file (TOML)")
    c.set_defaults(func=cmd_keys_create)

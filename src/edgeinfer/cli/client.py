"""What commands that talk to a server share: --url / --api-key / --cacert flags (and their
environment variables), one request helper, one-line errors."""

from __future__ import annotations

import argparse
import os
from typing import Any

DEFAULT_URL = os.environ.get("EDGEINFER_URL", "http://127.0.0.1:8000")


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code `code`."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def add_server_args(p: Any, url: bool = True) -> None:
    """--url (unless the caller adds its own), --api-key and --cacert."""
    if url:
        p.add_argument(
            "--url",
            default=DEFAULT_URL,
            help=f"server URL (default: $EDGEINFER_URL or {DEFAULT_URL})",
        )
    p.add_argument(
        "--api-key",
        default=os.environ.get("EDGEINFER_API_KEY"),
        help="bearer token when the server requires one (env EDGEINFER_API_KEY)",
    )
    p.add_argument(
        "--cacert",
        default=os.environ.get("EDGEINFER_CACERT"),
        help="CA bundle that signed the server's TLS certificate (env EDGEINFER_CACERT)",
    )


def headers(args: argparse.Namespace) -> dict[str, str]:
    key = getattr(args, "api_key", None)
    return {"Authorization": f"Bearer {key}"} if key else {}


def verify(args: argparse.Namespace) -> Any:
    """httpx's `verify`: the --cacert bundle, else the system's."""
    return getattr(args, "cacert", None) or True


def request(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    """Send to `args.url + path`; the reply (parsed JSON, or text), or CliError (exit 1) naming what the server
    said or why it could not be reached."""
    import httpx

    url = f"{args.url}{path}"
    try:
        resp = httpx.request(
            method, url, json=body, timeout=300, headers=headers(args), verify=verify(args)
        )
    except httpx.HTTPError as e:
        raise CliError(f"cannot reach the server at {url}: {e}", code=1) from e
    if resp.status_code != 200:
        try:
            doc = resp.json()
            message = doc.get("error", resp.text) if isinstance(doc, dict) else resp.text
        except ValueError:
            message = resp.text
        if isinstance(message, dict):  # OpenAI-style errors
            message = message.get("message", message)
        raise CliError(f"server answered {resp.status_code}: {message}", code=1)
    if not resp.content:
        return None
    if resp.headers.get("content-type", "").startswith("application/json"):
        return resp.json()
    return resp.text  # e.g. the LoRA routes answer plain text, as vLLM's do

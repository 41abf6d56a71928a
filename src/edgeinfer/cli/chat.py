"""`edgeinfer chat MODEL`: chat with a served LLM in the terminal, tokens printed as they stream.

Talks to `/v1/chat/completions` with `stream: true` (server-sent events) and keeps the
conversation in memory. Stdlib-only at import; httpx is imported when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from edgeinfer.cli.client import add_server_args, headers, verify


def add_chat(sub: Any) -> None:
    """Register `edgeinfer chat` on the CLI's subparsers."""
    p = sub.add_parser(
        "chat",
        help="chat with a served LLM in the terminal (streams tokens)",
        description="Chat with a text generation model on a running server. "
        "Type a message and press Enter; an empty line or Ctrl-D quits.",
    )
    p.add_argument("model", help="model name, e.g. llm-demo")
    add_server_args(p)
    p.add_argument("--system", help="a system message that starts the conversation")
    p.add_argument("--max-tokens", type=int, default=256, help="per reply (default: 256)")
    p.add_argument("--temperature", type=float, default=0.7, help="(default: 0.7; 0 = greedy)")
    p.add_argument("--seed", type=int, help="seed for repeatable sampling")
    p.add_argument(
        "--json-schema",
        metavar="FILE",
        help="a JSON schema file: every reply is JSON that validates against it",
    )
    p.add_argument(
        "--tools",
        metavar="FILE",
        help="a JSON file with OpenAI 'tools' (a list of functions): the model may "
        "call them; calls are shown as [tool call] name {arguments}",
    )
    p.add_argument(
        "--tool-choice",
        default="auto",
        metavar="CHOICE",
        help="with --tools: auto (default), required, none, or a function's name",
    )
    p.set_defaults(func=cmd_chat)


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The JSON events of a server-sent event stream, until `data: [DONE]`."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


def stream_reply(
    client: Any,
    url: str,
    body: dict[str, Any],
    out: TextIO,
    calls: list[dict[str, Any]] | None = None,
) -> str:
    """Send one chat request, print the reply as it streams, return it. Tool calls are
    printed as they complete and appended to `calls`."""
    parts: list[str] = []
    calls = [] if calls is None else calls
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            resp.read()
            try:
                message = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = resp.text
            raise ChatError(f"server answered {resp.status_code}: {message}")
        for event in _events(resp.iter_lines()):
            if "error" in event:
                raise ChatError(f"generation failed: {event['error'].get('message')}")
            for choice in event.get("choices", []):
                delta = choice.get("delta", {})
                _tool_deltas(delta.get("tool_calls") or [], calls, out)
                text = delta.get("content") or ""
                parts.append(text)
                out.write(text)
                out.flush()
    out.write("\n")
    return "".join(parts)


def _tool_deltas(deltas: list[dict[str, Any]], calls: list[dict[str, Any]], out: TextIO) -> None:
    """Accumulate streamed tool calls (an id and name, then argument pieces); print each call
    once its arguments are complete JSON."""
    for d in deltas:
        fn = d.get("function") or {}
        if d.get("id"):
            calls.append(
                {
                    "id": d["id"],
                    "type": "function",
                    "function": {"name": fn.get("name", ""), "arguments": ""},
                }
            )
        elif calls:
            calls[-1]["function"]["arguments"] += fn.get("arguments") or ""
            call = calls[-1]["function"]
            try:
                json.loads(call["arguments"])
            except ValueError:
                continue
            out.write(f"[tool call] {call['name']} {call['arguments']}\n")


def _json_file(path: str, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ChatError(f"{what} {path}: {e}") from e


class ChatError(Exception):
    pass


def cmd_chat(args: argparse.Namespace) -> int:
    import httpx

    try:
        extra = _request_extras(args)
    except ChatError as e:
        print(f"edgeinfer: error: {e}", file=sys.stderr)
        return 2
    messages: list[dict[str, Any]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    timeout = httpx.Timeout(600, connect=10)
    with httpx.Client(timeout=timeout, headers=headers(args), verify=verify(args)) as client:
        return _converse(client, args, messages, extra)


def _request_extras(args: argparse.Namespace) -> dict[str, Any]:
    """The request fields given by --json-schema and --tools, the same for every turn."""
    extra: dict[str, Any] = {}
    if args.json_schema:
        schema = _json_file(args.json_schema, "--json-schema")
        extra["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "reply", "schema": schema},
        }
    if args.tools:
        extra["tools"] = _json_file(args.tools, "--tools")
        choice = args.tool_choice
        extra["tool_choice"] = (
            choice
            if choice in ("auto", "required", "none")
            else {"type": "function", "function": {"name": choice}}
        )
    return extra


def _converse(
    client: Any, args: argparse.Namespace, messages: list[dict[str, Any]], extra: dict[str, Any]
) -> int:
    """Read a line, stream the reply, repeat until an empty line or end of input."""
    import httpx

    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stdout.write("> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line.strip():
            return 0
        messages.append({"role": "user", "content": line.rstrip("\n")})
        body = {
            "model": args.model,
            "messages": messages,
            "stream": True,
            "max_tokens": args.max_tokens,
            "temperature": args.temperature,
            **extra,
        }
        if args.seed is not None:
            body["seed"] = args.seed
        calls: list[dict[str, Any]] = []
        try:
            reply = stream_reply(client, args.url, body, sys.stdout, calls)
        except httpx.HTTPError as e:
            print(f"edgeinfer: error: cannot reach the server at {args.url}: {e}", file=sys.stderr)
            return 1
        except ChatError as e:
            print(f"edgeinfer: error: {e}", file=sys.stderr)
            return 1
        messages.append(
            {
                "role": "assistant",
                "content": reply or None,
                **({"tool_calls": calls} if calls else {}),
            }
        )

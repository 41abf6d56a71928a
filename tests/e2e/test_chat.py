"""`edgeinfer chat` as a user runs it: a real server with the tiny demo LLM, the CLI on a pipe."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import llama_cpp  # noqa: F401  (missing: these tests fail, never skip)
import pytest

from tests.helpers import ServerProcess, serve

EDGEINFER = [sys.executable, "-m", "edgeinfer.cli"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from edgeinfer.demo.gguf import build_llm_demo

    root = tmp_path_factory.mktemp("chat-repo")
    build_llm_demo(root / "llm-demo", tmp_path_factory.mktemp("scratch"))
    with serve(root, tmp_path_factory.mktemp("chat-logs") / "server.log") as s:
        yield s


def chat(server: ServerProcess, stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGEINFER, "chat", "llm-demo", "--url", server.url, *args],
                          input=stdin, capture_output=True, text=True, timeout=120)  # fmt: skip


def reply(server: ServerProcess, messages: list[dict[str, str]]) -> str:
    body = {"model": "llm-demo", "messages": messages, "max_tokens": 12, "temperature": 0}
    r = httpx.post(server.url + "/v1/chat/completions", json=body)
    return str(r.json()["choices"][0]["message"]["content"])


def test_chat_streams_replies_and_keeps_the_conversation(server: ServerProcess) -> None:
    proc = chat(server, "Hello!\nAnd then?\n", "--temperature", "0", "--max-tokens", "12")
    assert proc.returncode == 0, proc.stderr
    first = reply(server, [{"role": "user", "content": "Hello!"}])
    second = reply(server, [{"role": "user", "content": "Hello!"},
                            {"role": "assistant", "content": first},
                            {"role": "user", "content": "And then?"}])  # fmt: skip
    assert proc.stdout == f"{first}\n{second}\n"


def test_chat_reports_server_errors(server: ServerProcess) -> None:
    proc = chat(server, "Hi\n", "--max-tokens", "100000")
    assert proc.returncode == 1
    assert "server answered 400" in proc.stderr and "maximum context length" in proc.stderr
    proc = subprocess.run([*EDGEINFER, "chat", "nope", "--url", server.url], input="Hi\n",
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 1 and "404" in proc.stderr


def test_chat_without_a_server_says_so(tmp_path: Path) -> None:
    proc = subprocess.run([*EDGEINFER, "chat", "llm-demo", "--url", "http://127.0.0.1:9"],
                          input="Hi\n", capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 1 and "cannot reach the server" in proc.stderr


def test_chat_with_a_json_schema_prints_valid_json(server: ServerProcess, tmp_path: Path) -> None:
    import json

    import jsonschema

    schema = {"type": "object", "properties": {"on": {"type": "boolean"},
                                               "relay": {"enum": [1, 2, 3]}},
              "required": ["on", "relay"], "additionalProperties": False}  # fmt: skip
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    proc = chat(server, "Switch relay 2 on\n", "--json-schema", str(tmp_path / "schema.json"),
                "--seed", "1", "--max-tokens", "60")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    jsonschema.validate(json.loads(proc.stdout), schema)
    proc = chat(server, "Hi\n", "--json-schema", str(tmp_path / "missing.json"))
    assert proc.returncode == 2 and "--json-schema" in proc.stderr and "missing.json" in proc.stderr


def test_chat_shows_tool_calls(server: ServerProcess, tmp_path: Path) -> None:
    import json

    tools = [{"type": "function", "function": {"name": "switch_relay", "parameters": {
        "type": "object", "properties": {"relay": {"enum": [1, 2]}, "on": {"type": "boolean"}},
        "required": ["relay", "on"], "additionalProperties": False}}}]  # fmt: skip
    (tmp_path / "tools.json").write_text(json.dumps(tools))
    seen = set()
    for seed, choice in [(0, "required"), (1, "switch_relay"), (2, "auto")]:
        proc = chat(server, "Switch relay 2 on\n", "--tools", str(tmp_path / "tools.json"),
                    "--tool-choice", choice, "--seed", str(seed), "--max-tokens", "80",
                    "--temperature", "1")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        body = {"model": "llm-demo", "messages": [{"role": "user", "content": "Switch relay 2 on"}],
                "tools": tools, "seed": seed, "max_tokens": 80, "temperature": 1,
                "tool_choice": choice if choice != "switch_relay" else
                {"type": "function", "function": {"name": choice}}}  # fmt: skip
        message = httpx.post(server.url + "/v1/chat/completions", json=body).json()["choices"][0]["message"]  # fmt: skip
        if message.get("tool_calls"):
            fn = message["tool_calls"][0]["function"]
            assert f"[tool call] switch_relay {fn['arguments']}\n" in proc.stdout
            seen.add("call")
        else:
            assert proc.stdout == message["content"] + "\n"
            seen.add("text")
    assert seen == {"call", "text"}

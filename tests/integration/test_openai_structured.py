"""Structured outputs, tool calling, logit_bias and several choices on a real server, through the
official `openai` client, with the demo LLM.

The demo model's weights are random: it samples like an adversary, so every reply that a JSON
schema constrains and that ends with finish_reason "stop" must still parse and validate.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pydantic
import pytest

from tests.helpers import ServerProcess, serve

MODEL = "llm-demo"
SCHEMA = {
    "type": "object",
    "properties": {
        "device": {"type": "string", "enum": ["relay", "sensor", "camera"]},
        "on": {"type": "boolean"},
        "level": {"type": "integer", "minimum": 0, "maximum": 100},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
    },
    "required": ["device", "on", "level", "tags"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {
        "name": "read_sensor", "description": "Read a sensor",
        "parameters": {"type": "object", "properties": {
            "sensor": {"type": "string", "enum": ["temperature", "humidity"]}},
            "required": ["sensor"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "switch_relay", "description": "Switch a relay",
        "parameters": {"type": "object", "properties": {
            "relay": {"type": "integer", "minimum": 1, "maximum": 4}, "on": {"type": "boolean"}},
            "required": ["relay", "on"], "additionalProperties": False}}},
]  # fmt: skip
ARGS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
USER = [{"role": "user", "content": "Turn on relay 2 and read the temperature."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from edgeinfer.demo.gguf import build_llm_demo

    root = tmp_path_factory.mktemp("llm-repo")
    build_llm_demo(root / MODEL, tmp_path_factory.mktemp("scratch"))
    with serve(root, tmp_path_factory.mktemp("logs") / "server.log") as s:
        yield s


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def _json_schema(schema: dict[str, object]) -> dict[str, object]:
    return {"type": "json_schema", "json_schema": {"name": "state", "schema": schema,
                                                   "strict": True}}  # fmt: skip


def test_json_schema_replies_validate_under_random_weights(client: openai.OpenAI) -> None:
    stops = 0
    for seed in range(12):
        r = client.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=80, seed=seed, temperature=1.0,
            response_format=_json_schema(SCHEMA))  # type: ignore[arg-type]  # fmt: skip
        choice = r.choices[0]
        if choice.finish_reason == "stop":
            jsonschema.validate(json.loads(choice.message.content or ""), SCHEMA)
            stops += 1
        else:
            assert choice.finish_reason == "length"
    assert stops >= 6  # the schema's strings are short: most replies complete


def test_json_object_on_completions_and_length_cut(client: openai.OpenAI) -> None:
    for seed in range(6):
        r = client.completions.create(model=MODEL, prompt="JSON:", max_tokens=60, seed=seed,
                                      extra_body={"response_format": {"type": "json_object"}})  # fmt: skip
        if r.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(r.choices[0].text), dict)
    short = client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=3, seed=1,
        response_format=_json_schema(SCHEMA))  # type: ignore[arg-type]  # fmt: skip
    assert short.choices[0].finish_reason == "length"
    assert short.usage is not None and short.usage.completion_tokens == 3


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    class Relay(pydantic.BaseModel):
        relay: int = pydantic.Field(ge=1, le=4)
        on: bool

    r = client.chat.completions.parse(model=MODEL, messages=USER, max_tokens=40, seed=3,
                                      response_format=Relay)  # type: ignore[arg-type]  # fmt: skip
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Relay) and 1 <= parsed.relay <= 4


def test_streamed_structured_reply_is_the_same_json(client: openai.OpenAI) -> None:
    kw = {"model": MODEL, "messages": USER, "max_tokens": 80, "temperature": 0,
          "response_format": _json_schema(SCHEMA)}  # fmt: skip
    whole = client.chat.completions.create(**kw)  # type: ignore[call-overload]
    chunks = list(client.chat.completions.create(stream=True, **kw))  # type: ignore[call-overload]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content


def check_calls(calls: list[object], names: set[str] | None = None) -> None:
    assert calls
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function"  # type: ignore[attr-defined]
        fn = call.function  # type: ignore[attr-defined]
        assert fn.name in (names or ARGS)
        jsonschema.validate(json.loads(fn.arguments), ARGS[fn.name])


def test_required_and_named_tool_choice_always_call(client: openai.OpenAI) -> None:
    for seed in range(6):
        r = client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, seed=seed,
                                           tool_choice="required", max_tokens=120)  # type: ignore[arg-type]  # fmt: skip
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        check_calls(choice.message.tool_calls or [])
    named = {"type": "function", "function": {"name": "switch_relay"}}
    r = client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, seed=0,
                                       tool_choice=named, max_tokens=120)  # type: ignore[arg-type]  # fmt: skip
    calls = r.choices[0].message.tool_calls or []
    assert len(calls) == 1
    check_calls(calls, {"switch_relay"})


def test_auto_answers_or_calls_and_none_answers_in_text(client: openai.OpenAI) -> None:
    for seed in range(6):
        r = client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, seed=seed,
                                           max_tokens=120)  # type: ignore[arg-type]  # fmt: skip
        choice = r.choices[0]
        if choice.finish_reason == "tool_calls":
            check_calls(choice.message.tool_calls or [])
        else:
            assert choice.message.tool_calls is None and isinstance(choice.message.content, str)
    r = client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, seed=0,
                                       tool_choice="none", max_tokens=8)  # type: ignore[arg-type]  # fmt: skip
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason == "length"


def test_tool_result_round_trip(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, seed=1,
                                           tool_choice="required", max_tokens=120)  # type: ignore[arg-type]  # fmt: skip
    message = first.choices[0].message
    calls = message.tool_calls or []
    history = [*USER, message.model_dump(exclude_none=True)]
    history += [{"role": "tool", "tool_call_id": c.id, "content": "21.5"} for c in calls]
    second = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, seed=1,
                                            max_tokens=40)  # type: ignore[arg-type]  # fmt: skip
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert second.usage is not None and second.usage.prompt_tokens > first.usage.prompt_tokens  # type: ignore[union-attr]


def test_streamed_tool_calls_arrive_as_openai_deltas(client: openai.OpenAI) -> None:
    kw = {"model": MODEL, "messages": USER, "tools": TOOLS, "tool_choice": "required",
          "max_tokens": 120, "temperature": 0}  # fmt: skip
    whole = client.chat.completions.create(**kw)  # type: ignore[call-overload]
    chunks = list(client.chat.completions.create(stream=True, **kw))  # type: ignore[call-overload]
    calls: dict[int, dict[str, str]] = {}
    for c in chunks:
        for d in c.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(d.index, {"name": "", "arguments": ""})
            entry["name"] += d.function.name or "" if d.function else ""
            entry["arguments"] += d.function.arguments or "" if d.function else ""
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    expected = [(t.function.name, t.function.arguments) for t in whole.choices[0].message.tool_calls or []]  # fmt: skip
    assert [(calls[k]["name"], calls[k]["arguments"]) for k in sorted(calls)] == expected


def test_logit_bias_forces_and_bans_a_token(client: openai.OpenAI) -> None:
    def tokens(bias: dict[str, int]) -> list[str]:
        r = client.completions.create(model=MODEL, prompt="Hello", max_tokens=6, temperature=0,
                                      logit_bias=bias, logprobs=0)  # fmt: skip
        assert r.choices[0].logprobs is not None
        return r.choices[0].logprobs.tokens or []

    forced = tokens({"300": 100})
    assert len(forced) == 6 and len(set(forced)) == 1 and forced[0]
    assert forced[0] not in tokens({"300": -100})
    assert tokens({}) != forced


def test_n_returns_independent_choices(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=USER, n=3, max_tokens=12, seed=7)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) > 1
    assert r.usage is not None and r.usage.completion_tokens == 36
    again = client.chat.completions.create(model=MODEL, messages=USER, n=3, max_tokens=12, seed=7)
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]
    chunks = list(client.completions.create(model=MODEL, prompt="Hi", n=2, max_tokens=5,
                                            stream=True, seed=7))  # fmt: skip
    texts = ["", ""]
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] += ch.text
    whole = client.completions.create(model=MODEL, prompt="Hi", n=2, max_tokens=5, seed=7)
    assert texts == [c.text for c in whole.choices]


@pytest.mark.parametrize(("body", "param", "says"), [
    ({"n": 9}, "n", "'n'"),
    ({"n": 0}, "n", "'n'"),
    ({"logit_bias": {"x": 1}}, "logit_bias", "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias", "logit_bias"),
    ({"response_format": {"type": "xml"}}, "response_format", "response_format"),
    ({"response_format": _json_schema({"not": {"type": "string"}})}, None, '"not"'),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools", "bad name"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice", "nope"),
    ({"tool_choice": "required"}, "tool_choice", "tools"),
    ({"functions": [{"name": "f"}]}, "functions", "functions"),
    ({"max_completion_tokens": "many"}, "max_completion_tokens", "max_completion_tokens"),
])  # fmt: skip
def test_bad_parameters_are_400_naming_them(server: ServerProcess, body: dict[str, object],
                                            param: str | None, says: str) -> None:  # fmt: skip
    r = httpx.post(server.url + "/v1/chat/completions",
                   json={"model": MODEL, "messages": USER, **body})  # fmt: skip
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and says in error["message"], error


def test_logit_bias_out_of_vocabulary_is_400(server: ServerProcess) -> None:
    r = httpx.post(server.url + "/v1/completions", json={
        "model": MODEL, "prompt": "Hi", "logit_bias": {"100000": 5}})  # fmt: skip
    assert r.status_code == 400 and "logit_bias" in r.json()["error"]["message"]


def test_triton_generate_takes_response_format(server: ServerProcess, tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"],
              "additionalProperties": False}  # fmt: skip
    r = httpx.post(server.url + f"/v2/models/{MODEL}/generate", json={
        "text_input": "State:", "parameters": {"max_tokens": 30, "temperature": 0,
                                               "response_format": json.dumps(_json_schema(schema))}})  # fmt: skip
    assert r.status_code == 200, r.text
    jsonschema.validate(json.loads(r.json()["text_output"]), schema)


def test_an_answer_beside_tools_streams_as_it_comes(client: openai.OpenAI) -> None:
    kw = {"model": MODEL, "messages": USER, "tools": TOOLS, "max_tokens": 60, "temperature": 0}
    whole = client.chat.completions.create(**kw)  # type: ignore[call-overload]
    chunks = list(client.chat.completions.create(stream=True, **kw))  # type: ignore[call-overload]
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    if whole.choices[0].message.tool_calls:
        pytest.fail("llm-demo answered with a call: pick another prompt for this test")
    assert "".join(pieces) == whole.choices[0].message.content
    assert len(pieces) > 5  # token by token, not in one piece at the end
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_the_clients_stream_helper_assembles_calls_and_parsed_replies(
    client: openai.OpenAI,
) -> None:
    class Relay(pydantic.BaseModel):
        relay: int = pydantic.Field(ge=1, le=4)
        on: bool

    with client.chat.completions.stream(model=MODEL, messages=USER, max_tokens=40, seed=3,
                                        response_format=Relay) as stream:  # type: ignore[arg-type]  # fmt: skip
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Relay)
    named = {"type": "function", "function": {"name": "read_sensor"}}
    with client.chat.completions.stream(model=MODEL, messages=USER, tools=TOOLS, seed=0,
                                        tool_choice=named, max_tokens=120) as stream:  # type: ignore[arg-type]  # fmt: skip
        final = stream.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    check_calls(final.choices[0].message.tool_calls or [], {"read_sensor"})

"""Tool calling in a model's own format, on a real server through the `openai` client: tiny
random-weight Llama GGUFs carrying Qwen2.5's chat template (Hermes-style `<tool_call>`) and
Llama 3.2's (a JSON call with "parameters", its turn markers as control tokens).

Random weights sample like an adversary: every constrained reply must still be well-formed calls
whose arguments validate. The prompt is checked against the template rendered here as
transformers renders it: a raw completion of that text gives the same prompt tokens and the same
greedy reply as the chat request.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from typing import Any

import jinja2.sandbox
import jsonschema
import openai
import pytest

from edgeinfer.runtime.gguf_writer import BOS
from tests.helpers import ServerProcess, serve
from tests.integration.test_openai_structured import ARGS, TOOLS, USER, check_calls
from tests.tool_templates import LLAMA3_SPECIALS, LLAMA32, QWEN25

# Each model: its template, control tokens beside ChatML's, and how it renders a tool result.
MODELS = {
    "qwen-like": (QWEN25, (), "<|im_start|>user\n<tool_response>\n21.5\n</tool_response>"),
    "llama-like": (
        LLAMA32,
        LLAMA3_SPECIALS,
        '<|start_header_id|>ipython<|end_header_id|>\n\n"21.5"<|eot_id|>',
    ),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from edgeinfer.demo.gguf import LLM_DEMO_CONFIG
    from edgeinfer.repository.manifest import add_version
    from edgeinfer.runtime.gguf_writer import build_gguf

    root = tmp_path_factory.mktemp("repo")
    for name, (template, specials, _) in MODELS.items():
        path = tmp_path_factory.mktemp("scratch") / "model.gguf"
        build_gguf(path, "tiny", "f32", seed=0, chat_template=template, specials=specials)
        (root / name).mkdir()
        # Llama's template writes the tools indented: 1300 prompt tokens with this vocabulary.
        config = LLM_DEMO_CONFIG.replace("context_length = 1024", "context_length = 2048")
        (root / name / "config.toml").write_text(config)
        add_version(root / name, {"model.gguf": path}, version=1)
    with serve(root, tmp_path_factory.mktemp("logs") / "server.log") as s:
        yield s


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(params=list(MODELS))
def model(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _chat(client: openai.OpenAI, model: str, **kw: Any) -> Any:
    return client.chat.completions.create(model=model, **kw)


def test_required_always_calls_and_parallel_false_calls_once(
    client: openai.OpenAI, model: str
) -> None:
    counts = []
    for seed in range(6):
        r = _chat(client, model, messages=USER, tools=TOOLS, tool_choice="required", seed=seed,
                  max_tokens=200)  # fmt: skip
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        check_calls(choice.message.tool_calls or [])
        counts.append(len(choice.message.tool_calls or []))
        single = _chat(client, model, messages=USER, tools=TOOLS, tool_choice="required", seed=seed,
                       max_tokens=200, parallel_tool_calls=False)  # fmt: skip
        assert single.choices[0].finish_reason == "tool_calls"
        assert len(single.choices[0].message.tool_calls or []) == 1
        check_calls(single.choices[0].message.tool_calls or [])
    assert max(counts) <= 8


def test_named_choice_calls_that_function(client: openai.OpenAI, model: str) -> None:
    named = {"type": "function", "function": {"name": "switch_relay"}}
    for seed in range(3):
        r = _chat(client, model, messages=USER, tools=TOOLS, tool_choice=named, seed=seed,
                  max_tokens=120)  # fmt: skip
        calls = r.choices[0].message.tool_calls or []
        assert r.choices[0].finish_reason == "tool_calls" and len(calls) == 1
        check_calls(calls, {"switch_relay"})


def test_auto_answers_in_text_or_calls_and_none_answers(client: openai.OpenAI, model: str) -> None:
    for seed in range(6):
        r = _chat(client, model, messages=USER, tools=TOOLS, seed=seed, max_tokens=60)
        choice = r.choices[0]
        if choice.message.tool_calls:
            check_calls(choice.message.tool_calls)
        else:
            assert "<tool_call>" not in (choice.message.content or "")
    r = _chat(client, model, messages=USER, tools=TOOLS, tool_choice="none", seed=0, max_tokens=8)
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason == "length"


def test_streamed_calls_equal_the_whole_reply(client: openai.OpenAI, model: str) -> None:
    kw = {"messages": USER, "tools": TOOLS, "tool_choice": "required", "max_tokens": 200,
          "temperature": 0}  # fmt: skip
    whole = _chat(client, model, **kw)
    chunks = list(_chat(client, model, stream=True, **kw))
    calls: dict[int, list[str]] = {}
    for c in chunks:
        for d in c.choices[0].delta.tool_calls or [] if c.choices else []:
            entry = calls.setdefault(d.index, ["", ""])
            entry[0] += d.function.name or ""
            entry[1] += d.function.arguments or ""
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    expected = [
        (t.function.name, t.function.arguments) for t in whole.choices[0].message.tool_calls
    ]
    assert [tuple(v) for _, v in sorted(calls.items())] == expected


def _render(template: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
    """The prompt as transformers' apply_chat_template renders `template`."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(template).render(messages=messages, tools=tools,
                                            add_generation_prompt=True, bos_token=BOS)  # fmt: skip


def test_round_trip_renders_the_templates_own_tool_markup(
    client: openai.OpenAI, model: str
) -> None:
    first = _chat(client, model, messages=USER, tools=TOOLS, tool_choice="required", seed=1,
                  max_tokens=200)  # fmt: skip
    calls = first.choices[0].message.tool_calls or []
    assert calls
    history: list[dict[str, Any]] = [*USER, first.choices[0].message.model_dump(exclude_none=True)]
    history += [{"role": "tool", "tool_call_id": c.id, "content": "21.5"} for c in calls]
    second = _chat(client, model, messages=history, tools=TOOLS, tool_choice="none", temperature=0,
                   max_tokens=12)  # fmt: skip
    shaped = [
        *USER,
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": c.function.name,
                                              "arguments": json.loads(c.function.arguments)}}
            for c in calls]},
        *({"role": "tool", "content": "21.5"} for _ in calls),
    ]  # fmt: skip
    template, _, result_markup = MODELS[model]
    prompt = _render(template, shaped, TOOLS)
    assert result_markup in prompt
    raw = client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=12)
    assert second.usage is not None and raw.usage is not None
    assert second.usage.prompt_tokens == raw.usage.prompt_tokens
    assert second.choices[0].message.content == raw.choices[0].text
    assert set(ARGS) >= {c.function.name for c in calls}


def test_an_answer_beside_tools_streams_as_it_comes(client: openai.OpenAI, model: str) -> None:
    kw = {"messages": USER, "tools": TOOLS, "max_tokens": 40, "temperature": 0}
    whole = _chat(client, model, **kw)
    chunks = list(_chat(client, model, stream=True, **kw))
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert whole.choices[0].message.tool_calls is None  # random weights at temperature 0: text
    assert "".join(pieces) == whole.choices[0].message.content and len(pieces) > 10
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason == "length"


def test_auto_with_response_format_answers_in_that_schema_or_calls(
    client: openai.OpenAI, model: str
) -> None:
    from tests.integration.test_openai_structured import SCHEMA

    fmt = {"type": "json_schema", "json_schema": {"name": "state", "schema": SCHEMA}}
    complete = 0
    for seed in range(4):
        r = _chat(client, model, messages=USER, tools=TOOLS, seed=seed, max_tokens=120,
                  response_format=fmt)  # fmt: skip
        choice = r.choices[0]
        if choice.message.tool_calls:
            check_calls(choice.message.tool_calls)
            complete += 1
        elif choice.finish_reason == "stop":
            jsonschema.validate(json.loads(choice.message.content or ""), SCHEMA)
            complete += 1
    assert complete  # the schema's strings are short: some replies end on their own

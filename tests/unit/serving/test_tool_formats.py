"""Models' own tool formats: which templates speak which, the prompt's shape, reading replies and
streaming the answer beside them."""

from __future__ import annotations

import json

import pytest

from edgeinfer.errors import InvalidParameter
from edgeinfer.runtime.gguf_writer import CHAT_TEMPLATE
from edgeinfer.serving.tool_formats import (
    HERMES,
    LLAMA3,
    AnswerStream,
    Tool,
    ToolSpec,
    detect,
    native_plan,
    parse,
)
from tests.tool_templates import QWEN25

READ = Tool("read", "Read a sensor", {"type": "object", "properties": {"s": {"enum": ["t", "h"]}}})
LLAMA32_PART = (
    '{{- "Given the following functions, please respond with a JSON for a function call " }}'
    '{{- \'Respond in the format {"name": function name, "parameters": dictionary of argument '
    "name and its value}.' }}"
)


def _spec(choice: str = "auto", messages: list[dict[str, object]] | None = None) -> ToolSpec:
    return ToolSpec((READ,), choice, True, messages or [{"role": "user", "content": "hi"}])


def test_templates_name_their_format() -> None:
    assert detect(QWEN25) == HERMES
    assert detect(LLAMA32_PART) == LLAMA3
    assert detect("{{ '<|python_tag|>' }}") == LLAMA3
    assert detect(CHAT_TEMPLATE) == ""  # plain ChatML: the generic format


def test_past_calls_reach_the_template_with_arguments_as_objects() -> None:
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function",
         "function": {"name": "read", "arguments": '{"s": "t"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21.5"},
    ]  # fmt: skip
    plan = native_plan(HERMES, _spec("required", history))
    assert plan.messages[1]["tool_calls"][0]["function"]["arguments"] == {"s": "t"}
    assert plan.messages[2] == {"role": "tool", "content": "21.5", "tool_call_id": "call_1"}
    assert plan.tools == [{"type": "function", "function": {"name": "read",
                           "description": "Read a sensor", "parameters": READ.parameters}}]  # fmt: skip
    assert plan.constraint is not None and plan.format == HERMES
    none = native_plan(HERMES, _spec("none", history))
    assert none.constraint is None and none.format == "" and none.tools
    with pytest.raises(InvalidParameter, match="tool_call_id"):
        native_plan(HERMES, _spec("auto", [{"role": "tool", "content": "x"}]))


def test_hermes_replies_become_calls_after_the_text() -> None:
    reply = ('Let me look.\n<tool_call>\n{"name": "read", "arguments": {"s": "t"}}\n</tool_call>\n'
             '<tool_call>\n{"name": "read", "arguments": {"s": "h"}}\n</tool_call>')  # fmt: skip
    content, calls, finish = parse(HERMES, reply, "stop")
    assert content == "Let me look." and finish == "tool_calls" and calls is not None
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"s": "t"}, {"s": "h"}]
    cut = reply[: reply.rindex('"h"')]  # max_tokens inside the second call: the first is kept
    content, calls, finish = parse(HERMES, cut, "length")
    assert calls is not None and len(calls) == 1 and finish == "length"
    assert parse(HERMES, "Just text", "stop") == ("Just text", None, "stop")


def test_llama3_replies_are_one_json_call_or_text() -> None:
    content, calls, finish = parse(LLAMA3, '{"name": "read", "parameters": {"s": "t"}}', "stop")
    assert content is None and finish == "tool_calls" and calls is not None
    assert calls[0]["function"] == {"name": "read", "arguments": '{"s":"t"}'}
    assert parse(LLAMA3, "It is warm.", "stop") == ("It is warm.", None, "stop")
    assert parse(LLAMA3, '{"name": "read", "param', "length")[1] is None


@pytest.mark.parametrize("cut", range(1, 12))
def test_hermes_answer_streams_up_to_the_call_whatever_the_chunks(cut: int) -> None:
    reply = 'Hi there  \n<tool_call>\n{"name": "read"'
    stream = AnswerStream(HERMES)
    pieces = [stream.push(reply[i : i + cut]) for i in range(0, len(reply), cut)]
    assert "".join(pieces) == "Hi there"
    text = AnswerStream(HERMES)
    assert "".join(text.push(p) for p in ["a <tool", "_cal", "l is not", " here  "]) == (
        "a <tool_call is not here"
    )


def test_llama3_answer_streams_unless_it_is_a_call() -> None:
    text = AnswerStream(LLAMA3)
    assert [text.push(p) for p in ["", "It ", "is {warm}"]] == ["", "It ", "is {warm}"]
    call = AnswerStream(LLAMA3)
    assert [call.push(p) for p in ['{"name"', ": 1}"]] == ["", ""]


@pytest.mark.parametrize("kind", [HERMES, LLAMA3])
@pytest.mark.parametrize("choice", ["auto", "required", "read"])
@pytest.mark.parametrize("response", [None, {"type": "object"}])
def test_every_grammar_compiles(kind: str, choice: str, response: dict[str, str] | None) -> None:
    import llguidance

    spec = ToolSpec((READ, Tool("ping", "", {})), choice, True, [], response)
    plan = native_plan(kind, spec)
    assert plan.constraint is not None
    grammar = llguidance.LLMatcher.grammar_from_lark(plan.constraint.lark)
    assert llguidance.LLMatcher.validate_grammar(grammar, None) == ""

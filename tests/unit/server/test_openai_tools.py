"""Tool calling in the generic format: request shaping and reply parsing."""

from __future__ import annotations

import json

import jsonschema
import pytest

from edgeinfer.errors import InvalidParameter
from edgeinfer.server.openai_tools import parse_reply, plan

TOOLS = [{"type": "function", "function": {"name": "read", "parameters": {
    "type": "object", "properties": {"s": {"enum": ["t", "h"]}}, "required": ["s"]}}},
    {"type": "function", "function": {"name": "ping"}}]  # fmt: skip
USER = [{"role": "user", "content": "hi"}]


def test_required_schema_accepts_only_calls_of_listed_tools() -> None:
    p = plan({"tools": TOOLS, "tool_choice": "required"}, USER, None)
    assert p.envelope and p.constraint is not None
    schema = p.constraint.schema
    jsonschema.validate({"tool_calls": [{"name": "read", "arguments": {"s": "t"}},
                                        {"name": "ping", "arguments": {}}]}, schema)  # fmt: skip
    for bad in ({"response": "x"}, {"tool_calls": []},
                {"tool_calls": [{"name": "read", "arguments": {"s": "x"}}]},
                {"tool_calls": [{"name": "other", "arguments": {}}]}):  # fmt: skip
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    assert p.messages[0]["role"] == "system" and '"read"' in p.messages[0]["content"]


def test_named_choice_and_no_parallel_calls_allow_one_call() -> None:
    named = {"type": "function", "function": {"name": "ping"}}
    p = plan({"tools": TOOLS, "tool_choice": named}, USER, None)
    assert p.constraint is not None
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"tool_calls": [{"name": "read", "arguments": {"s": "t"}}]},
                            p.constraint.schema)  # fmt: skip
    p = plan({"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False}, USER, None)
    assert p.constraint is not None
    two = {"tool_calls": [{"name": "ping", "arguments": {}}] * 2}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(two, p.constraint.schema)


def test_auto_also_allows_an_answer_and_none_sends_no_tools() -> None:
    p = plan({"tools": TOOLS}, USER, None)
    assert p.constraint is not None
    jsonschema.validate({"response": "hello"}, p.constraint.schema)
    p = plan({"tools": TOOLS, "tool_choice": "none"}, USER, None)
    assert p.constraint is None and p.messages == USER and not p.envelope


def test_history_with_calls_and_results_becomes_alternating_turns() -> None:
    messages = [*USER, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "ping", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "pong"},
        {"role": "user", "content": "and?"}]  # fmt: skip
    p = plan({"tools": TOOLS, "tool_choice": "none"}, messages, None)
    assert [m["role"] for m in p.messages] == ["user", "assistant", "user"]
    assert json.loads(p.messages[1]["content"]) == {"tool_calls": [{"name": "ping",
                                                                    "arguments": {}}]}  # fmt: skip
    assert '"tool_response"' in p.messages[2]["content"] and "and?" in p.messages[2]["content"]


def test_replies_become_tool_calls_or_content() -> None:
    content, calls, finish = parse_reply('{"tool_calls": [{"name": "read", "arguments": '
                                         '{"s": "t"}}]}', "stop")  # fmt: skip
    assert content is None and finish == "tool_calls" and calls is not None
    assert calls[0]["function"] == {"name": "read", "arguments": '{"s":"t"}'}
    assert calls[0]["id"].startswith("call_")
    assert parse_reply('{"response": "hi \\"you\\""}', "stop") == ('hi "you"', None, "stop")
    assert parse_reply('{"response": "cut here \\u00', "length") == ("cut here ", None, "length")


@pytest.mark.parametrize(("doc", "param"), [
    ({"tools": "x"}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools"),
    ({"tools": TOOLS + TOOLS}, "tools"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"function_call": "auto"}, "function_call"),
])  # fmt: skip
def test_bad_tool_parameters_name_the_parameter(doc: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidParameter) as e:
        plan(doc, USER, None)
    assert e.value.param == param


@pytest.mark.parametrize("answer", ["plain", 'quote " and \\ back', "tab\tnew\nline", "é 😀 \x01"])
def test_an_answer_streams_piece_by_piece_whatever_the_cuts(answer: str) -> None:
    from edgeinfer.server.openai_tools import AnswerStream

    reply = json.dumps({"response": answer})  # escapes: \", \\, \n, \u00e9, surrogate pairs
    for size in (1, 2, 3, 7):
        stream = AnswerStream()
        out = "".join(stream.push(reply[k : k + size]) for k in range(0, len(reply), size))
        assert out == answer
    assert AnswerStream().push('{"tool_calls": [{"name": "x"') == ""


def test_a_reply_cut_inside_its_calls_keeps_the_complete_ones() -> None:
    cut = ('{"tool_calls": [{"name": "read", "arguments": {"s": "t"}}, {"name": "ping", '
           '"arguments": {}}, {"name": "read", "argu')  # fmt: skip
    content, calls, finish = parse_reply(cut, "length")
    assert content is None and finish == "length" and calls is not None
    assert [c["function"]["name"] for c in calls] == ["read", "ping"]
    content, calls, _ = parse_reply('{"tool_calls": [{"name": "re', "length")
    assert calls is None and content == '{"tool_calls": [{"name": "re'

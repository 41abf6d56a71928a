"""OpenAI structured outputs and tool calling, translated for the generation core.

`response_format` (`json_object`, `json_schema`) becomes a JsonConstraint: decoding is masked so
the reply is JSON that validates against the schema (serving/constrain.py).

A model whose chat template has its own tool format (Qwen's `<tool_call>`, Llama 3's JSON) gets
that one (serving/tool_formats.py). Every other model gets a generic format: the tool list and the
reply format go into the system prompt, and the reply is constrained to one JSON object,
`{"tool_calls": [{"name": ..., "arguments": {...}}, ...]}` to call tools or (with
`tool_choice: "auto"`) `{"response": "..."}` to answer, so `required` and a named function
always yield a valid call whose arguments match the function's schema, whatever the model. Earlier
calls and `role: "tool"` results in the conversation are written back in the same format (tool
results as user turns), which any chat template renders (Gemma's refuses roles other than user and
assistant). The reply becomes `tool_calls` (ids, arguments as a JSON string) with
`finish_reason: "tool_calls"`, or plain `content`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import orjson

from edgeinfer.errors import InvalidParameter
from edgeinfer.serving.constrain import JsonConstraint
from edgeinfer.serving.tool_formats import MAX_PARALLEL_CALLS, Tool, ToolSpec, new_call, past_call

MAX_TOOLS = 64
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_NO_ARGUMENTS = {"type": "object", "properties": {}}


def response_format(doc: dict[str, Any]) -> JsonConstraint | None:
    """The constraint `response_format` asks for (None for text)."""
    fmt = doc.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return JsonConstraint({"type": "object"})
    if kind != "json_schema":
        raise InvalidParameter(
            "response_format",
            "'response_format.type' must be 'text', 'json_object' or 'json_schema'",
        )
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise InvalidParameter(
            "response_format",
            "'response_format.json_schema' must be an object with a string 'name' and a 'schema'",
        )
    schema = spec.get("schema", {})
    if not isinstance(schema, dict):
        raise InvalidParameter(
            "response_format",
            "'response_format.json_schema.schema' must be an object (a JSON schema)",
        )
    return JsonConstraint(schema, "response_format")


@dataclass(frozen=True)
class ToolPlan:
    """What a request's tools change: the messages the model sees and the reply's constraint
    in the generic format, and the tools for a model that has its own format (the engine
    picks it from the chat template of the model version that serves the request)."""

    messages: list[dict[str, Any]]
    constraint: JsonConstraint | None
    envelope: bool  # the reply is the generic JSON object (parse it with `parse_reply`)
    spec: ToolSpec | None = None


def _tools(raw: Any) -> list[Tool]:
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_TOOLS:
        raise InvalidParameter("tools", f"'tools' must be a list of at most {MAX_TOOLS} functions")
    out = []
    for t in raw:
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidParameter(
                "tools",
                "each tool must be {'type': 'function', 'function': "
                "{'name': ..., 'parameters': {...}}}",
            )
        if not _NAME.match(fn["name"]):
            raise InvalidParameter(
                "tools", f"tool name {fn['name']!r} must be 1-64 letters, digits, '_' or '-'"
            )
        params = fn.get("parameters") or _NO_ARGUMENTS
        if not isinstance(params, dict):
            raise InvalidParameter(
                "tools", f"tool {fn['name']!r}: 'parameters' must be a JSON schema"
            )
        out.append(Tool(fn["name"], str(fn.get("description") or ""), params))
    if len({t.name for t in out}) != len(out):
        raise InvalidParameter("tools", "tool names must be unique")
    return out


def _choice(raw: Any, tools: list[Tool]) -> str:
    """'none', 'auto', 'required' or the name of the function to call."""
    if raw is None:
        return "auto" if tools else "none"
    if raw in ("none", "auto", "required"):
        if raw != "none" and not tools:
            raise InvalidParameter("tool_choice", f"tool_choice {raw!r} needs 'tools'")
        return str(raw)
    fn = raw.get("function") if isinstance(raw, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise InvalidParameter(
            "tool_choice",
            "'tool_choice' must be 'none', 'auto', 'required' or "
            "{'type': 'function', 'function': {'name': ...}}",
        )
    if name not in {t.name for t in tools}:
        raise InvalidParameter(
            "tool_choice", f"tool_choice names {name!r}, which is not in 'tools'"
        )
    return name


def _schema(
    tools: list[Tool], choice: str, parallel: bool, response: dict[str, Any] | None
) -> dict[str, Any]:
    chosen = [t for t in tools if choice in ("auto", "required", t.name)]
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": t.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in chosen
    ]
    items = calls[0] if len(calls) == 1 else {"anyOf": calls}
    most = MAX_PARALLEL_CALLS if parallel and choice in ("auto", "required") else 1
    call = {
        "type": "object",
        "required": ["tool_calls"],
        "additionalProperties": False,
        "properties": {
            "tool_calls": {"type": "array", "items": items, "minItems": 1, "maxItems": most}
        },
    }
    if choice != "auto":
        return call
    answer = {
        "type": "object",
        "properties": {"response": response or {"type": "string"}},
        "required": ["response"],
        "additionalProperties": False,
    }
    return {"anyOf": [call, answer]}


def _instructions(tools: list[Tool], choice: str) -> str:
    listing = orjson.dumps(
        [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in tools]
    ).decode()
    call = '{"tool_calls": [{"name": "<tool name>", "arguments": {<its arguments>}}]}'
    if choice == "auto":
        how = f'{call} to call tools, or {{"response": "<your reply>"}} to answer directly.'
    elif choice == "required":
        how = f"{call} to call one or more tools."
    else:
        how = f"{call} to call the tool {choice}."
    return (
        f"You can call these tools (the JSON schema of each one's arguments):\n{listing}\n"
        f"Reply with one JSON object and nothing else: {how}"
    )


def _history(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Earlier tool calls and tool results written in the generic format, as user/assistant
    turns (consecutive user turns merged, as templates that need alternation expect)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role, content = m["role"], m["content"]
        if role == "assistant" and m.get("tool_calls"):
            content = orjson.dumps(
                {"tool_calls": [_past_call(c) for c in m["tool_calls"]]}
            ).decode()
            m = {"role": "assistant", "content": content}
        elif role == "tool":
            if not isinstance(m.get("tool_call_id"), str):
                raise InvalidParameter("messages", "a 'tool' message needs a string 'tool_call_id'")
            result = {"tool_call_id": m["tool_call_id"], "content": content}
            m = {"role": "user", "content": orjson.dumps({"tool_response": result}).decode()}
        if out and m["role"] == "user" and out[-1]["role"] == "user":
            out[-1] = {"role": "user", "content": out[-1]["content"] + "\n" + m["content"]}
        else:
            out.append(m)
    return out


def _past_call(call: Any) -> dict[str, Any]:
    name, arguments = past_call(call)
    return {"name": name, "arguments": arguments}


def plan(
    doc: dict[str, Any], messages: list[dict[str, Any]], fmt: JsonConstraint | None
) -> ToolPlan:
    """Validate `tools`, `tool_choice` and `parallel_tool_calls` and shape the request."""
    for old in ("functions", "function_call"):
        if doc.get(old) is not None:
            raise InvalidParameter(old, f"'{old}' is deprecated: use 'tools' and 'tool_choice'")
    tools = _tools(doc.get("tools"))
    choice = _choice(doc.get("tool_choice"), tools)
    parallel = doc.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise InvalidParameter("parallel_tool_calls", "'parallel_tool_calls' must be a boolean")
    spec = None
    history = any(m["role"] == "tool" or m.get("tool_calls") for m in messages)
    if tools or history:
        spec = ToolSpec(tuple(tools), choice, parallel, messages, fmt.schema if fmt else None)
    if history:
        messages = _history(messages)
    if choice == "none":
        return ToolPlan(messages, fmt, False, spec)
    text = _instructions(tools, choice)
    if messages[0]["role"] == "system":
        messages = [
            {**messages[0], "content": messages[0]["content"] + "\n\n" + text},
            *messages[1:],
        ]
    else:
        messages = [{"role": "system", "content": text}, *messages]
    schema = _schema(tools, choice, parallel, fmt.schema if fmt else None)
    return ToolPlan(messages, JsonConstraint(schema, "tools"), True, spec)


def parse_reply(
    text: str,
    finish_reason: str | None,
) -> tuple[str | None, list[dict[str, Any]] | None, str | None]:
    """(content, tool_calls, finish_reason) of a reply in the generic format. A reply cut by
    max_tokens keeps what is complete: the calls before the cut (finish_reason stays "length")
    or the answer so far."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        if calls := _complete_calls(text):
            return None, calls, finish_reason
        return _partial_response(text), None, finish_reason
    if isinstance(doc, dict) and isinstance(doc.get("tool_calls"), list):
        calls = [_call(c) for c in doc["tool_calls"]]
        return None, calls, "tool_calls" if finish_reason == "stop" else finish_reason
    if isinstance(doc, dict) and "response" in doc:
        answer = doc["response"]
        return (
            answer if isinstance(answer, str) else orjson.dumps(answer).decode(),
            None,
            finish_reason,
        )
    return text, None, finish_reason


def _call(c: dict[str, Any]) -> dict[str, Any]:
    return new_call(c["name"], c["arguments"])


_CALLS_HEAD = '{"tool_calls": ['


def _complete_calls(text: str) -> list[dict[str, Any]]:
    """The calls that are complete in a reply cut inside its `tool_calls` list."""
    if not text.startswith(_CALLS_HEAD):
        return []
    decoder, pos = json.JSONDecoder(), len(_CALLS_HEAD)
    out: list[dict[str, Any]] = []
    while True:
        try:
            call, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return out
        if not isinstance(call, dict) or "name" not in call or "arguments" not in call:
            return out
        out.append(_call(call))
        if not text.startswith(", ", pos):
            return out
        pos += 2


_RESPONSE_HEAD = '{"response": "'


class AnswerStream:
    """The answer of a reply in the generic format as it streams: text in, the newly decoded
    part of `{"response": "...` out (nothing for a tool call). Each piece is decoded once, so
    streaming a long answer costs time proportional to its length."""

    def __init__(self) -> None:
        self._raw = ""
        self._pos = 0  # start of the raw text not yet decoded; -1: not an answer

    def push(self, text: str) -> str:
        self._raw += text
        if self._pos == 0:
            if not self._raw.startswith(_RESPONSE_HEAD[: len(self._raw)]):
                self._pos = -1
            elif len(self._raw) >= len(_RESPONSE_HEAD):
                self._pos = len(_RESPONSE_HEAD)
        if self._pos <= 0:
            return ""
        body = self._raw[self._pos :]
        for cut in range(min(6, len(body)) + 1):  # an escape sequence may be cut in the middle
            piece = body[: len(body) - cut]
            try:
                answer = orjson.loads('"' + piece + '"')
            except orjson.JSONDecodeError:
                continue
            self._pos += len(piece)
            return str(answer)
        return ""


def _partial_response(text: str) -> str:
    """The answer so far of a reply cut inside `{"response": "...`; other cut replies as they
    are (a cut tool call cannot be run)."""
    if not text.startswith(_RESPONSE_HEAD):
        return text
    return AnswerStream().push(text)

"""Tool calling in the model's own format, when its chat template has one.

A model tuned for tool calling learned one format: its chat template renders the tools, and its
replies call them with fixed markup. Held to a format it never saw, a model drifts out of
distribution (llguidance's docs/toolcalls.md), so templates that have a format get it; the others
get the generic JSON format (server/openai_tools.py). Two families cover most small edge models,
told apart by the template's source as llama.cpp's common/chat.cpp does:

- "hermes" (Qwen2.5, Qwen3, Hermes 2/3, SmolLM3): the template renders `tools` and writes
  `<tool_call>`; a reply is text, then one or more
  `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`;
- "llama3" (Llama 3.1-3.3): the template writes `<|python_tag|>` or asks for
  `{"name": function name, "parameters": ...}`; a reply is one `{"name": ..., "parameters": {...}}`
  (their templates refuse several calls in one turn).

The template gets `tools` as transformers' apply_chat_template passes them, earlier calls as
assistant `tool_calls` whose arguments are objects (the templates `tojson` them) and tool results as
`role: "tool"` messages, which each template renders its own way (Qwen as
`<tool_response>` in a user turn, Llama as an `ipython` turn). Decoding follows a Lark grammar
that embeds each tool's argument schema, so `required` and a named choice always yield calls
whose arguments validate; with `auto` the model may answer in text (which cannot hold the call
markup) or call.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from edgeinfer.errors import InvalidParameter
from edgeinfer.serving.constrain import JSON_OPTIONS, LarkConstraint, closed

GENERIC, HERMES, LLAMA3 = "generic", "hermes", "llama3"
MAX_PARALLEL_CALLS = 8
_TAG = "<tool_call>"
_PYTHON_TAG = "<|python_tag|>"


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolSpec:
    """A chat request's validated tools, for a model whose template has its own format."""

    tools: tuple[Tool, ...]
    choice: str  # "none", "auto", "required" or the name of the function to call
    parallel: bool
    messages: list[dict[str, Any]]  # as the client sent them (contents as text)
    response: dict[str, Any] | None = None  # response_format's schema, for an answer


@dataclass(frozen=True)
class NativePlan:
    messages: list[dict[str, Any]]  # in the shape the template reads
    tools: list[dict[str, Any]] | None  # the template's `tools`
    constraint: LarkConstraint | None  # None with tool_choice "none"
    format: str  # how to read the reply: HERMES, LLAMA3, or "" (plain text)


@functools.lru_cache(maxsize=16)  # a str caches its hash: a model's template is looked up once
def detect(template: str) -> str:
    """The tool-call format a chat template's source speaks, or "" when it has none."""
    if _TAG in template and "tools" in template:
        return HERMES
    if _PYTHON_TAG in template or "Given the following functions" in template:
        return LLAMA3
    if '{"name": function name, "parameters"' in template:
        return LLAMA3
    return ""


def native_plan(kind: str, spec: ToolSpec) -> NativePlan:
    """The prompt's messages and tools, and the reply's grammar, in format `kind`."""
    messages = [_native_message(m) for m in spec.messages]
    tools = [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
        }
        for t in spec.tools
    ]
    if spec.choice == "none" or not tools:
        return NativePlan(messages, tools or None, None, "")
    lark = _hermes_grammar(spec) if kind == HERMES else _llama3_grammar(spec)
    return NativePlan(messages, tools, LarkConstraint(lark), kind)


def _native_message(m: dict[str, Any]) -> dict[str, Any]:
    if m["role"] == "assistant" and m.get("tool_calls"):
        calls = m["tool_calls"]
        if not isinstance(calls, list):
            raise InvalidParameter("messages", "an assistant's 'tool_calls' must be a list")
        native = []
        for c in calls:
            name, args = past_call(c)
            call_id = c.get("id") if isinstance(c.get("id"), str) else None
            fn = {"name": name, "arguments": args}
            native.append({"id": call_id, "type": "function", "function": fn})
        return {"role": "assistant", "content": m["content"], "tool_calls": native}
    if m["role"] == "tool":
        if not isinstance(m.get("tool_call_id"), str):
            raise InvalidParameter("messages", "a 'tool' message needs a string 'tool_call_id'")
        return {"role": "tool", "content": m["content"], "tool_call_id": m["tool_call_id"]}
    return m


def past_call(call: Any) -> tuple[str, Any]:
    """(name, arguments as JSON) of an earlier call the client sent back."""
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise InvalidParameter("messages", "an assistant 'tool_calls' entry needs 'function.name'")
    args = fn.get("arguments") or "{}"
    try:
        parsed = orjson.loads(args) if isinstance(args, str) else args
    except orjson.JSONDecodeError as e:
        raise InvalidParameter("messages", f"tool call arguments are not JSON: {e}") from e
    return fn["name"], parsed


# ---- grammars ---------------------------------------------------------------------------------
def _body(spec: ToolSpec, arguments: str) -> str:
    """`%json` of one call to a function `tool_choice` allows, arguments under `arguments`."""
    calls = [
        closed(
            {
                "type": "object",
                "properties": {"name": {"const": t.name}, arguments: t.parameters},
                "required": ["name", arguments],
                "additionalProperties": False,
            }
        )
        for t in spec.tools
        if spec.choice in ("auto", "required", t.name)
    ]
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return "%json " + json.dumps({**schema, "x-guidance": JSON_OPTIONS})


def _answer(spec: ToolSpec, text: str) -> str:
    """The rule of an answer in text (`text`: a terminal) or, with response_format, in JSON."""
    if spec.response is not None:
        return "answer: %json " + json.dumps({**spec.response, "x-guidance": JSON_OPTIONS})
    return f"answer: TEXT\nTEXT: {text}"


def _hermes_grammar(spec: ToolSpec) -> str:
    most = MAX_PARALLEL_CALLS if spec.parallel and spec.choice in ("auto", "required") else 1
    more = f'("\\n" call){{0,{most - 1}}}' if most > 1 else ""
    rules = [
        f'call: "{_TAG}\\n" body "\\n</tool_call>"',
        f"body: {_body(spec, 'arguments')}",
    ]
    if spec.choice != "auto":
        return "\n".join([f"start: call {more}", *rules])
    if spec.response is not None:  # an answer in JSON, or calls
        return "\n".join([f"start: answer | call {more}", _answer(spec, ""), *rules])
    # Text, then calls: the lazy `head` ends at the first tag; an answer cannot hold one.
    return "\n".join(
        [
            f'start: answer | head "\\n" body "\\n</tool_call>" {more}',
            f"head[lazy]: /(?s:.*){_TAG}/",
            _answer(spec, f"/(?s:.*)/ & ~/(?s:.*){_TAG}(?s:.*)/"),
            *rules,
        ]
    )


def _llama3_grammar(spec: ToolSpec) -> str:
    body = f"body: {_body(spec, 'parameters')}"
    if spec.choice != "auto":
        return f"start: body\n{body}"
    # As Meta's format has it: a call is the whole reply, so an answer cannot start with "{".
    return "\n".join(["start: answer | body", _answer(spec, "/(?s:([^{].*)?)/"), body])


# ---- replies ----------------------------------------------------------------------------------
def new_call(name: str, arguments: Any) -> dict[str, Any]:
    """An OpenAI `tool_calls` entry (arguments as a JSON string) with a fresh id."""
    return {
        "id": "call_" + uuid.uuid4().hex[:24],
        "type": "function",
        "function": {"name": name, "arguments": orjson.dumps(arguments).decode()},
    }


def parse(
    kind: str, text: str, finish_reason: str | None
) -> tuple[str | None, list[dict[str, Any]] | None, str | None]:
    """(content, tool_calls, finish_reason) of a reply in format `kind`. A reply cut by
    max_tokens keeps the calls complete before the cut (finish_reason stays "length"); a reply
    without a complete call is content."""
    content, calls = _hermes_calls(text) if kind == HERMES else _llama3_calls(text)
    if not calls:
        return text, None, finish_reason
    return content, calls, "tool_calls" if finish_reason == "stop" else finish_reason


_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def _hermes_calls(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    start = text.find(_TAG)
    if start < 0:
        return text, []
    calls = []
    for m in _BLOCK.finditer(text, start):
        call = _json_call(m.group(1), "arguments")
        if call is None:
            break
        calls.append(call)
    return text[:start].rstrip() or None, calls


def _llama3_calls(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    body = text.removeprefix(_PYTHON_TAG)
    call = _json_call(body, "parameters") if body.startswith("{") else None
    return (None, [call]) if call is not None else (text, [])


def _json_call(text: str, arguments: str) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
        return None
    args = doc.get(arguments, doc.get("arguments"))
    return new_call(doc["name"], args) if isinstance(args, dict) else None


class AnswerStream:
    """The answer part of a reply in format `kind` as it streams: text in, the text that is
    surely answer out. Hermes: text before the first `<tool_call>` (a suffix that may begin
    one, and trailing whitespace, is held back until what follows shows); Llama 3: a reply
    that starts with `{` is a call, and nothing of it streams. Holds only the undecided tail."""

    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._tail = ""
        self._done = False  # a call began: no more answer

    def push(self, text: str) -> str:
        if self._done:
            return ""
        if self._kind == "text":  # a Llama 3 answer: all of it streams
            return text
        tail = self._tail + text
        if self._kind == LLAMA3:
            if tail:
                self._done = tail.startswith(("{", _PYTHON_TAG))
                self._kind = "text"
            return "" if self._done else tail
        at = tail.find(_TAG)
        if at >= 0:
            self._done = True
            return tail[:at].rstrip()
        keep = next((k for k in range(len(_TAG) - 1, 0, -1) if tail.endswith(_TAG[:k])), 0)
        out = tail[: len(tail) - keep].rstrip()
        self._tail = tail[len(out) :]
        return out

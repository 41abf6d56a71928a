"""A generation request's prompt tokens: size checked before any work, long prompts tokenized
(and chat templates rendered) off the event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

from edgeinfer.errors import InvalidParameter
from edgeinfer.serving.llm_loop import GenerateRequest
from edgeinfer.serving.sampling import MAX_STOPS, SamplingParams
from edgeinfer.serving.tool_formats import NativePlan, detect, native_plan

# Prompts up to this many characters are tokenized on the event loop: a thread handoff costs
# more than their tokenizing (a few microseconds per kilobyte).
_INLINE_PROMPT_CHARS = 4096


async def native_tools(model: Any, request: GenerateRequest) -> tuple[GenerateRequest, NativePlan]:
    """The request in the tool format of the model's chat template, when it has one (the
    generic format the server wrote stays otherwise: an empty plan)."""
    spec = request.tools
    kind = detect(model.chat_template) if spec is not None else ""
    if spec is None or not kind:
        return request, NativePlan(request.messages or [], None, None, "")
    plan = await asyncio.to_thread(native_plan, kind, spec)  # linear in the tools' schemas
    constraint = plan.constraint or request.constraint  # tool_choice "none": response_format
    return dataclasses.replace(request, messages=plan.messages, constraint=constraint), plan


async def prompt_tokens(
    model: Any,
    request: GenerateRequest,
    context_length: int,
    tools: list[dict[str, Any]] | None = None,
) -> list[int]:
    """The request's prompt tokens (`tools` for the chat template, in its own tool format).
    No token stands for more than `model.max_token_bytes`
    bytes, so text longer than context_length times that cannot fit: it is refused before it
    is rendered or tokenized (counted in characters, each at least one byte, so no encoding
    is needed to tell; the tokenizing that passes is bounded by 4 bytes a character)."""
    limit = context_length * model.max_token_bytes
    if request.messages is not None:
        param, size = "messages", sum(_text_chars(m) for m in request.messages)
    elif isinstance(request.prompt, str):
        param, size = "prompt", len(request.prompt)
    else:
        return list(request.prompt or []) or [model.bos]
    if size > limit:
        raise InvalidParameter(
            param,
            f"the {param} is too long: this model's context holds "
            f"{context_length} tokens, at most {limit} bytes of text",
        )
    if request.messages is not None:
        work = functools.partial(model.chat_tokens, request.messages, tools)
    else:
        work = functools.partial(model.tokenize, request.prompt)
    tokens = work() if size <= _INLINE_PROMPT_CHARS else await asyncio.to_thread(work)
    return tokens or [model.bos]


def _text_chars(message: Mapping[str, Any]) -> int:
    return sum(len(v) for v in message.values() if isinstance(v, str))


def reply_params(model: Any, request: GenerateRequest) -> SamplingParams:
    """The request's sampling settings, plus the stop strings of the model's chat format for a
    chat (a base model's transcript ends its reply where the next "User:" line would start)."""
    stops = model.chat_format.stops if request.messages is not None else ()
    params = request.params
    if not stops or set(stops) <= set(params.stop):
        return params
    merged = tuple(dict.fromkeys(params.stop + stops))[:MAX_STOPS]
    return dataclasses.replace(params, stop=merged)

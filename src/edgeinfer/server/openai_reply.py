"""Shaping generations as OpenAI replies: completions, chat completions, SSE chunks, several
choices (`n`), logprobs and tool calls.

Stream first: the generations' chunks arrive as one stream of (choice index, chunk) pairs; SSE
events are made from it, and the non-streaming reply is collected from the same pairs.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeinfer.server.openai_tools import AnswerStream, parse_reply
from edgeinfer.serving import tool_formats
from edgeinfer.serving.llm_loop import GenChunk, GenerationStream
from edgeinfer.serving.sampling import TokenLogprob
from edgeinfer.serving.tool_formats import GENERIC


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def completion_logprobs(lps: list[TokenLogprob], offset: int) -> dict[str, Any]:
    tokens, offsets = [], []
    for lp in lps:
        offsets.append(offset)
        tokens.append(_text(lp.piece))
        offset += len(tokens[-1])
    return {
        "tokens": tokens,
        "token_logprobs": [lp.logprob for lp in lps],
        "top_logprobs": [
            {_text(p): v for p, (_, v) in zip(lp.top_pieces, lp.top, strict=True)} for lp in lps
        ],
        "text_offset": offsets,
    }


def chat_logprobs(lps: list[TokenLogprob]) -> dict[str, Any]:
    def entry(piece: bytes, logprob: float) -> dict[str, Any]:
        return {"token": _text(piece), "logprob": logprob, "bytes": list(piece)}

    return {
        "content": [
            {
                **entry(lp.piece, lp.logprob),
                "top_logprobs": [
                    entry(p, v) for p, (_, v) in zip(lp.top_pieces, lp.top, strict=True)
                ],
            }
            for lp in lps
        ]
    }


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's usage; `cached_tokens`: prompt tokens served from the prefix cache."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


async def merged(streams: Sequence[GenerationStream]) -> AsyncIterator[tuple[int, GenChunk]]:
    """The chunks of several generations as they come, tagged with their index. Leaving the
    iteration (or an error in one) cancels them all."""
    if len(streams) == 1:
        async for c in streams[0]:
            yield 0, c
        return
    queue: asyncio.Queue[tuple[int, GenChunk | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, stream: GenerationStream) -> None:
        try:
            async for c in stream:
                queue.put_nowait((i, c))
        except Exception as e:  # handed to the reader
            queue.put_nowait((i, e))
        queue.put_nowait((i, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(tasks)
        while left:
            i, item = await queue.get()
            if item is None:
                left -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        for s in streams:
            s.cancel()


@dataclass
class _Choice:
    parts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    last: GenChunk | None = None


class Reply:
    """One request's reply: `n` choices of a completion or chat completion. With `tools` (the
    format: GENERIC or a model's own, serving/tool_formats.py) the chat reply is read into
    `tool_calls` or `content`."""

    def __init__(
        self,
        chat: bool,
        model: str,
        include_usage: bool,
        n: int = 1,
        tools: str = "",
        logprobs: bool = False,
    ) -> None:
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage
        self.object = "chat.completion" if chat else "text_completion"
        self.n = n
        self.tools = tools
        self.logprobs = logprobs

    def _head(self, obj: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
        }

    def _usage(self, lasts: Sequence[GenChunk | None]) -> dict[str, Any]:
        done = [c for c in lasts if c is not None]
        prompt, cached = (done[0].prompt_tokens, done[0].cached_tokens) if done else (0, 0)
        return usage(prompt, sum(c.completion_tokens for c in done), cached)

    def _message(self, text: str, finish: str | None) -> tuple[dict[str, Any], str | None]:
        if not self.tools:
            return {"role": "assistant", "content": text}, finish
        if self.tools == GENERIC:
            content, calls, finish = parse_reply(text, finish)
        else:
            content, calls, finish = tool_formats.parse(self.tools, text, finish)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        return message, finish

    def _answer_stream(self) -> AnswerStream | tool_formats.AnswerStream:
        return AnswerStream() if self.tools == GENERIC else tool_formats.AnswerStream(self.tools)

    async def whole(self, pairs: AsyncIterator[tuple[int, GenChunk]]) -> dict[str, Any]:
        """The non-streaming reply, collected from the chunks."""
        choices = [_Choice() for _ in range(self.n)]
        async for i, c in pairs:
            choices[i].parts.append(c.text)
            choices[i].logprobs += c.logprobs or []
            choices[i].last = c
        out = []
        for i, ch in enumerate(choices):
            text = "".join(ch.parts)
            finish = ch.last.finish_reason if ch.last else None
            lps = ch.logprobs if self.logprobs else None
            choice: dict[str, Any] = {"index": i}
            if self.chat:
                choice["message"], finish = self._message(text, finish)
                choice["logprobs"] = chat_logprobs(lps) if lps is not None else None
            else:
                choice["text"] = text
                choice["logprobs"] = completion_logprobs(lps, 0) if lps is not None else None
            choice["finish_reason"] = finish
            out.append(choice)
        return {
            **self._head(self.object),
            "choices": out,
            "usage": self._usage([c.last for c in choices]),
        }

    async def events(self, pairs: AsyncIterator[tuple[int, GenChunk]]) -> AsyncIterator[Any]:
        """SSE events: a role chunk per choice (chat), then the text as it comes; with tools, an
        answer streams as it comes and tool calls are sent once complete (OpenAI's deltas)."""
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        extra = {"usage": None} if self.include_usage else {}
        if self.chat:
            for i in range(self.n):
                first = {
                    "index": i,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
                yield {**self._head(obj), "choices": [first], **extra}
        offsets = [0] * self.n
        held: list[list[str]] = [[] for _ in range(self.n)]
        answers = [self._answer_stream() for _ in range(self.n)]
        lasts: list[GenChunk | None] = [None] * self.n
        async for i, c in pairs:
            lasts[i] = c
            if self.tools:
                held[i].append(c.text)
                if c.finish_reason is None:
                    if piece := answers[i].push(c.text):
                        offsets[i] += len(piece)
                        yield {
                            **self._head(obj),
                            "choices": [
                                {
                                    "index": i,
                                    "logprobs": None,
                                    "delta": {"content": piece},
                                    "finish_reason": None,
                                }
                            ],
                            **extra,
                        }
                    continue
                text = "".join(held[i])
                for delta in self._tool_deltas(i, text, c.finish_reason, offsets[i]):
                    yield {**self._head(obj), "choices": [delta], **extra}
                continue
            if not (c.text or c.finish_reason or (self.logprobs and c.logprobs)):
                continue  # held back (a possible stop string or an incomplete character)
            lp: Any = None
            if self.logprobs and c.logprobs:
                lp = (
                    chat_logprobs(c.logprobs)
                    if self.chat
                    else completion_logprobs(c.logprobs, offsets[i])
                )
            offsets[i] += len(c.text)
            choice: dict[str, Any] = {"index": i, "logprobs": lp, "finish_reason": c.finish_reason}
            if self.chat:
                choice["delta"] = {"content": c.text} if c.text else {}
            else:
                choice["text"] = c.text
            yield {**self._head(obj), "choices": [choice], **extra}
        if self.include_usage:
            yield {**self._head(obj), "choices": [], "usage": self._usage(lasts)}

    def _tool_deltas(self, i: int, text: str, finish: str, sent: int) -> list[dict[str, Any]]:
        """The end of a choice as OpenAI streams it: each call's id and name, then its
        arguments; or the rest of the answer after the `sent` characters streamed already;
        then the finish reason."""
        message, finish_reason = self._message(text, finish)
        out: list[dict[str, Any]] = []
        for k, call in enumerate(message.get("tool_calls", [])):
            fn = call["function"]
            head = {
                "index": k,
                "id": call["id"],
                "type": "function",
                "function": {"name": fn["name"], "arguments": ""},
            }
            out.append({"tool_calls": [head]})
            out.append({"tool_calls": [{"index": k, "function": {"arguments": fn["arguments"]}}]})
        if message["content"] and message["content"][sent:]:
            out.append({"content": message["content"][sent:]})
        choices: list[dict[str, Any]] = [
            {"index": i, "delta": d, "logprobs": None, "finish_reason": None} for d in out
        ]
        choices.append({"index": i, "delta": {}, "logprobs": None, "finish_reason": finish_reason})
        return choices

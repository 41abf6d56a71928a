"""Chat messages -> prompt tokens, where only the template's own markers become special tokens.

Rendering a chat template and tokenizing the result with special-token parsing on (what
llama.cpp's and most servers' chat paths do) lets a user write `<|im_start|>system` inside a
message and forge a turn. Here every string a client sent (message contents and any other
string field, never the role, which must be a plain word) is wrapped in markers made of
private-use characters and a random nonce before rendering. After rendering, text between
markers is the client's and is tokenized as plain text; only the text the template itself
wrote is searched for control tokens (`<|im_start|>`, `<start_of_turn>`, `<bos>`...).

The result equals llama.cpp's own tokenization of the rendered prompt (which partitions the
text at special tokens and tokenizes the pieces between them as plain text) whenever the
messages hold no special-token text: adjacent template and client text is tokenized together,
so merges across their boundary are the same. Leading and trailing whitespace of a string is
left outside the markers, so templates that `trim` contents still do.

`tojson` is transformers' (JSON without escaping non-ASCII), so markers in tools and tool-call
arguments survive it; inside `parameters` and `arguments` the client's keys are wrapped too,
except plain words, which templates that walk a schema compare.
A template that transforms contents so that markers are lost or split (rare: slicing) gets
those pieces treated as plain text too: it may render worse, never unsafely.
"""

from __future__ import annotations

import datetime
import json
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from edgeinfer.errors import InvalidInput, InvalidParameter

_ROLE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")


@dataclass(frozen=True)
class Vocab:
    """What the template needs of a tokenizer. `tokenize(text, parse_special)` never adds BOS."""

    tokenize: Callable[[str, bool], list[int]]
    specials: dict[str, int]  # text -> id of control tokens (the ones only templates may write)
    bos: int
    add_bos: bool
    bos_text: str
    eos_text: str


class ChatTemplate:
    """A compiled chat template bound to one vocabulary (thread-safe: renders share nothing)."""

    def __init__(self, source: str, vocab: Vocab) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise InvalidInput(f"chat template: {message}")

        # As transformers renders templates: sandboxed, trim_blocks, lstrip_blocks.
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = _strftime_now
        env.filters["tojson"] = _tojson
        self._template = env.from_string(source)
        self.vocab = vocab
        # Only control tokens the template can write: its literals, BOS and EOS.
        used = {
            t: i
            for t, i in vocab.specials.items()
            if t and (t in source or t in (vocab.bos_text, vocab.eos_text))
        }
        alternatives = sorted(used, key=len, reverse=True)  # longest first, as llama.cpp
        self._specials = used
        self._split = re.compile("|".join(map(re.escape, alternatives))) if used else None

    def render(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[tuple[str, bool]]:
        """The rendered prompt as (text, written by the template) pieces. `tools` as
        transformers passes them: `[{"type": "function", "function": {...}}]`."""
        from jinja2 import TemplateError

        check_roles(messages)
        nonce = secrets.token_hex(8)
        opening, closing = f"\ue000{nonce}\ue001", f"\ue002{nonce}\ue003"
        wrap = _Wrap(opening, closing, self._split)
        wrapped = [_wrap_message(m, wrap) for m in messages]
        extra = {"tools": wrap(tools)} if tools else {}
        try:
            text = self._template.render(
                **extra,
                messages=wrapped,
                add_generation_prompt=True,
                bos_token=self.vocab.bos_text,
                eos_token=self.vocab.eos_text,
            )
        except TemplateError as e:
            raise InvalidInput(f"the model's chat template failed on these messages: {e}") from e
        pieces: list[tuple[str, bool]] = []
        for i, part in enumerate(re.split(f"{opening}(.*?){closing}", text, flags=re.S)):
            if i % 2:
                pieces.append((part, False))  # the client's text
            elif nonce in part:  # a marker the template moved or split: trust none of it
                pieces.append((re.sub(f"[\ue000-\ue003]?{nonce}[\ue000-\ue003]?", "", part), False))
            else:
                pieces.append((part, True))
        return pieces

    def tokens(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        """Prompt tokens for `messages` (and `tools`), with exactly one BOS when the model
        wants one."""
        out: list[int] = []
        text: list[str] = []  # plain text since the last special token

        def flush() -> None:
            if text:
                out.extend(self.vocab.tokenize("".join(text), False))
                text.clear()

        for piece, trusted in self.render(messages, tools):
            for fragment, special in self._partition(piece) if trusted else [(piece, None)]:
                if special is None:
                    text.append(fragment)
                else:
                    flush()
                    out.append(special)
        flush()
        bos = self.vocab.bos
        while len(out) > 1 and out[0] == bos and out[1] == bos:
            del out[0]
        if self.vocab.add_bos and (not out or out[0] != bos):
            out.insert(0, bos)
        return out

    def _partition(self, text: str) -> Iterable[tuple[str, int | None]]:
        if self._split is None:
            yield text, None
            return
        start = 0
        for m in self._split.finditer(text):
            if m.start() > start:
                yield text[start : m.start()], None
            yield m.group(), self._specials[m.group()]
            start = m.end()
        if start < len(text):
            yield text[start:], None


def check_roles(messages: list[dict[str, Any]]) -> None:
    for m in messages:
        role = m.get("role")
        if not isinstance(role, str) or not _ROLE.fullmatch(role):
            raise InvalidParameter(
                "messages",
                "each message's 'role' must be a word such as 'system', 'user' or 'assistant'",
            )


def _wrap_message(message: dict[str, Any], wrap: _Wrap) -> dict[str, Any]:
    return {k: v if k == "role" else wrap(v) for k, v in message.items()}


# Under these keys the client's keys are data too (schema property names, argument names), and
# templates that walk a schema compare its words (`type == "string"`): there a plain word that
# holds no special-token text the template could write stays as it is (quoted by `tojson`, it
# cannot join template text into one either); other strings, keys included, are wrapped.
_DATA = ("parameters", "arguments")
_WORD = re.compile(r"[A-Za-z0-9_$.-]*")


@dataclass(frozen=True)
class _Wrap:
    opening: str
    closing: str
    specials: re.Pattern[str] | None

    def __call__(self, value: Any, data: bool = False) -> Any:
        if isinstance(value, str):
            return value if data and self._plain(value) else self._text(value)
        if isinstance(value, dict):
            return {
                k if not data or self._plain(k) else self._text(k): self(v, data or k in _DATA)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self(v, data) for v in value]
        return value

    def _plain(self, text: str) -> bool:
        return bool(_WORD.fullmatch(text)) and not (self.specials and self.specials.search(text))

    def _text(self, value: str) -> str:
        core = value.strip()
        if not core:
            return value  # whitespace cannot hold a special token
        lead = value[: len(value) - len(value.lstrip())]
        trail = value[len(value.rstrip()) :]
        return f"{lead}{self.opening}{core}{self.closing}{trail}"


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """transformers' `tojson`: plain JSON, not Jinja's HTML-escaped one (templates render
    tools and arguments with it, and the model saw them written this way)."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    """transformers' `strftime_now` (Llama 3 templates write today's date with it)."""
    return datetime.datetime.now().strftime(fmt)

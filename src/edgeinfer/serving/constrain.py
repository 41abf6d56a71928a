"""Constrained decoding: a JSON schema (or any JSON object) turned into a per-sequence token mask.

The grammar engine is llguidance (Rust, used by vLLM, SGLang and llama.cpp): it compiles a JSON
schema into a grammar lazily, without a pass over the vocabulary up front, and computes the
next token's mask in about 0.1-0.2 ms even at Gemma's 262k-token vocabulary
(bench/structured.py); llama.cpp's own GBNF sampler checks every candidate token against the
grammar and costs hundreds of milliseconds per token there. Unsupported schema features are
refused when the constraint is compiled, with llguidance's message naming them.

One `TokenConstraint` per sequence: the loop masks the sequence's logits row before sampling
(`mask`) and feeds it the chosen token (`accept`), so constrained and free sequences share one
decode step. Whitespace between JSON tokens is fixed (`", "`, `": "`), so a sampler that favours
spaces (random weights do) cannot loop on it; a long string or array is cut by max_tokens.
Objects that list properties take no others unless the schema says `additionalProperties`.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeinfer.errors import InvalidInput, LoadError

# Compact JSON with fixed separators: bounded whitespace whatever the model prefers.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
MAX_SCHEMA_BYTES = 64 * 1024


@dataclass(frozen=True)
class JsonConstraint:
    """Output must be JSON matching `schema` (a JSON schema; `{"type": "object"}` is OpenAI's
    json_object mode). `name` says where the schema came from, for error messages."""

    schema: dict[str, Any]
    name: str = "response_format"


@dataclass(frozen=True)
class LarkConstraint:
    """Output must match `lark`, a grammar in llguidance's Lark syntax (which embeds JSON
    schemas as `%json {...}`): a model's own tool-call format (serving/tool_formats.py)."""

    lark: str
    name: str = "tools"


Constraint = JsonConstraint | LarkConstraint
JSON_OPTIONS = _JSON_OPTIONS  # for schemas embedded in Lark grammars (as their "x-guidance")


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError as e:  # a serving install without the llm extra
        raise LoadError("constrained decoding needs llguidance: pip install -e '.[llm]'") from e
    return llguidance


_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_ONE = (
    "items",
    "additionalProperties",
    "contains",
    "propertyNames",
    "if",
    "then",
    "else",
    "unevaluatedProperties",
    "unevaluatedItems",
)


def closed(schema: Any) -> Any:
    """`schema` with every object that lists `properties` but says nothing about
    `additionalProperties` closed to other keys (as llama.cpp's converter and OpenAI's strict
    mode do): otherwise a model may invent keys. `"additionalProperties": true` keeps one open."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out and "additionalProperties" not in out and "patternProperties" not in out:
        out["additionalProperties"] = False
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {k: closed(v) for k, v in out[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [closed(v) for v in out[key]]
    for key in _SCHEMA_ONE:
        if key in out:
            out[key] = closed(out[key])
    return out


def grammar_of(spec: Constraint) -> str:
    """llguidance's grammar for `spec`; InvalidInput when it is not a schema it supports."""
    import orjson

    llg = _llguidance()
    if isinstance(spec, LarkConstraint):
        if len(spec.lark) > 2 * MAX_SCHEMA_BYTES:  # the tools' schemas and a few rules
            raise InvalidInput(
                f"{spec.name}: the grammar is larger than {2 * MAX_SCHEMA_BYTES} bytes"
            )
        grammar: str = llg.LLMatcher.grammar_from_lark(spec.lark)
    else:
        if len(orjson.dumps(spec.schema)) > MAX_SCHEMA_BYTES:
            raise InvalidInput(f"{spec.name}: the schema is larger than {MAX_SCHEMA_BYTES} bytes")
        try:
            grammar = llg.LLMatcher.grammar_from_json_schema(
                closed(spec.schema), defaults=_JSON_OPTIONS
            )
        except ValueError as e:
            raise InvalidInput(f"{spec.name}: not a valid JSON schema: {e}") from e
    error = llg.LLMatcher.validate_grammar(grammar, None)
    if error:
        raise InvalidInput(f"{spec.name}: unsupported JSON schema: {_first_line(error)}")
    return grammar


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else message


class TokenConstraint:
    """The grammar state of one sequence. Not thread-safe: the engine thread owns it."""

    def __init__(self, tokenizer: Any, grammar: str, n_vocab: int, name: str) -> None:
        llg = _llguidance()
        self._matcher = llg.LLMatcher(tokenizer, grammar, log_level=0)
        if self._matcher.is_error():
            raise InvalidInput(f"{name}: {_first_line(self._matcher.get_error())}")
        self.n_vocab = n_vocab
        self._words = np.zeros((tokenizer.vocab_size + 31) // 32, np.int32)
        self._masked = np.empty(n_vocab, np.bool_)

    @property
    def error(self) -> str:
        return str(self._matcher.get_error()) if self._matcher.is_error() else ""

    def mask(self, scores: np.ndarray) -> None:
        """Set the logits of every token the grammar forbids next to -inf, in place."""
        words = self._words
        self._matcher.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)
        allowed = np.unpackbits(words.view(np.uint8), count=self.n_vocab, bitorder="little")
        np.equal(allowed, 0, out=self._masked)
        np.copyto(scores, -np.inf, where=self._masked)

    def accept(self, token: int) -> bool:
        """Advance past `token`; True when the output is complete (nothing more may follow).
        A token the grammar refuses leaves the matcher in its error state (`error`)."""
        self._matcher.consume_token(token)
        return bool(self._matcher.is_stopped())


def constraint_for(tokenizer: Any, spec: Constraint, n_vocab: int) -> TokenConstraint:
    """Compile `spec` for one sequence (milliseconds for a typical schema: call it off the event
    loop). InvalidInput names what in the schema is not supported."""
    return TokenConstraint(tokenizer, grammar_of(spec), n_vocab, spec.name)


class Constraints:
    """Compiles requests' constraints off the event loop. The tokenizer view of a model's
    vocabulary is built once (seconds for a 262k vocabulary): concurrent first requests await
    the same build instead of each holding a worker thread while it runs."""

    def __init__(self) -> None:
        self._builds: weakref.WeakKeyDictionary[Any, asyncio.Future[Any]] = (
            weakref.WeakKeyDictionary()
        )

    async def compile(self, model: Any, spec: Constraint) -> TokenConstraint:
        """`model` has `grammar_tokenizer()` and `n_vocab` (runtime/llm_llamacpp.py)."""
        build = self._builds.get(model)
        if build is None:
            build = asyncio.ensure_future(asyncio.to_thread(model.grammar_tokenizer))
            self._builds[model] = build
        tokenizer = await asyncio.shield(build)
        return await asyncio.to_thread(constraint_for, tokenizer, spec, model.n_vocab)

"""Constrained decoding: a JSON schema as a token mask, alone and inside the batching loop.

The vocabulary is the 256 single bytes plus an end token, and the logits are random: the mask
alone must keep every completed output valid JSON for the schema.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import jsonschema
import llguidance
import numpy as np
import pytest

from edgeinfer.errors import InvalidInput
from edgeinfer.runtime.llm_types import BatchItem
from edgeinfer.serving.constrain import JsonConstraint, TokenConstraint, constraint_for
from edgeinfer.serving.llm_loop import GenChunk, LlmLoop, LoopLimits
from edgeinfer.serving.sampling import SamplingParams
from edgeinfer.telemetry.metrics import LlmStats

EOS = 256
VOCAB = 257
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "level": {"type": "integer", "minimum": -5, "maximum": 500},
        "mode": {"enum": ["on", "off", "auto"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 4},
        "ratio": {"type": "number"},
    },
    "required": ["name", "level", "mode", "tags"],
    "additionalProperties": False,
}


class ByteTokens:
    """A byte-level vocabulary for llguidance: token i is byte i, then an end token."""

    eos_token_id = EOS
    bos_token_id = None
    tokens = [bytes([i]) for i in range(256)] + [b"\xff<end>"]
    special_token_ids = [EOS]

    def __call__(self, text: bytes) -> list[int]:
        return list(text)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(ByteTokens()))


def generate(c: TokenConstraint, rng: np.random.Generator, limit: int = 300) -> tuple[bytes, str]:
    out = b""
    for _ in range(limit):
        scores = rng.standard_normal(VOCAB).astype(np.float32) * 3
        c.mask(scores)
        token = int(np.argmax(scores))
        if token == EOS:
            return out, "eos"
        out += bytes([token])
        if c.accept(token):
            return out, "complete"
    return out, "length"


def test_random_logits_always_give_schema_valid_json(tokenizer: Any) -> None:
    complete = 0
    for seed in range(40):
        c = constraint_for(tokenizer, JsonConstraint(SCHEMA), VOCAB)
        out, how = generate(c, np.random.default_rng(seed))
        assert not c.error
        if how != "length":
            jsonschema.validate(json.loads(out), SCHEMA)
            complete += 1
    assert complete >= 30


def test_json_object_mode_gives_an_object(tokenizer: Any) -> None:
    for seed in range(10):
        c = constraint_for(tokenizer, JsonConstraint({"type": "object"}), VOCAB)
        out, how = generate(c, np.random.default_rng(seed), limit=2000)
        if how != "length":
            assert isinstance(json.loads(out), dict)


def test_the_mask_only_leaves_tokens_the_grammar_allows(tokenizer: Any) -> None:
    c = constraint_for(tokenizer, JsonConstraint({"enum": ["yes", "no"]}), VOCAB)
    scores = np.zeros(VOCAB, np.float32)
    c.mask(scores)
    assert {bytes([t]) for t in np.flatnonzero(np.isfinite(scores))} == {b'"'}


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"not": {"type": "string"}}, '"not"'),
        ({"$ref": "#/definitions/missing"}, "missing"),
        ({"type": "object", "properties": {"a": {"type": "strin"}}}, "strin"),
    ],
)
def test_unsupported_schemas_are_refused_naming_the_feature(
    tokenizer: Any, schema: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidInput, match="response_format") as e:
        constraint_for(tokenizer, JsonConstraint(schema), VOCAB)
    assert named in str(e.value)


def test_a_huge_schema_is_refused_before_compiling(tokenizer: Any) -> None:
    schema = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(5000)}}
    with pytest.raises(InvalidInput, match="larger than"):
        constraint_for(tokenizer, JsonConstraint(schema), VOCAB)


class RandomBackend:
    """Random logits per (sequence history) for the loop: a fake of the model."""

    n_vocab = VOCAB
    eog = frozenset({EOS})

    def __init__(self) -> None:
        self.kv: dict[int, list[int]] = {}
        self.calls: list[list[BatchItem]] = []

    def decode(self, items: Sequence[BatchItem]) -> np.ndarray:
        self.calls.append(list(items))
        rows = []
        for seq, tokens, pos, want in items:
            cells = self.kv.setdefault(seq, [])
            assert pos == len(cells)
            cells.extend(tokens)
            if want:
                rng = np.random.default_rng(len(cells) * 1000 + sum(cells))
                rows.append(rng.standard_normal(VOCAB).astype(np.float32) * 3)
        return np.array(rows, np.float32).reshape(len(rows), VOCAB)

    def free(self, seq: int) -> None:
        self.kv.pop(seq, None)

    def piece(self, token: int) -> bytes:
        return bytes([token]) if token < 256 else b""

    def close(self) -> None:
        pass


def test_constrained_and_free_sequences_share_decode_steps(tokenizer: Any) -> None:
    async def main() -> tuple[list[list[GenChunk]], RandomBackend]:
        backend = RandomBackend()
        loop = LlmLoop(
            backend,
            LoopLimits(slots=4, context_length=512, kv_cells=2048, prefill_chunk=16),
            LlmStats("m"),
        )
        params = SamplingParams(max_tokens=200, temperature=0.0)
        streams = [
            loop.submit(
                [1, 2, 3],
                params,
                constraint=constraint_for(tokenizer, JsonConstraint(SCHEMA), VOCAB),
            ),
            loop.submit([4, 5, 6], SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)),
        ]

        async def chunks(stream: Any) -> list[GenChunk]:
            return [c async for c in stream]

        outs = await asyncio.gather(*(chunks(s) for s in streams))
        await loop.close()
        return outs, backend

    (constrained, free), backend = asyncio.run(asyncio.wait_for(main(), 20))
    assert constrained[-1].finish_reason == "stop"
    jsonschema.validate(json.loads("".join(c.text for c in constrained)), SCHEMA)
    assert free[-1].finish_reason == "length" and free[-1].completion_tokens == 40
    # The free sequence may run alone while the schema compiles (off the loop, on a busy
    # machine for several steps); from the first step that holds both, every step holds both
    # until one of them ends: one decode step for both, never one each.
    shared = [len(call) == 2 for call in backend.calls]
    assert any(shared), "the two sequences never shared a decode step"
    first, last = shared.index(True), len(shared) - shared[::-1].index(True)
    assert all(shared[first:last]), shared
    alone_before = first  # steps of the free sequence before the constrained one joined
    assert last - first >= min(constrained[-1].completion_tokens, 40 - alone_before) - 1


def test_objects_without_additional_properties_take_no_other_keys(tokenizer: Any) -> None:
    from edgeinfer.serving.constrain import closed

    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {"b": {"type": "integer"}}},
            "properties": {"type": "string"},
        },
        "$defs": {"x": {"properties": {}}},
        "anyOf": [{"properties": {}}],
    }
    out = closed(schema)
    assert out["additionalProperties"] is False
    assert out["properties"]["a"]["additionalProperties"] is False
    assert "additionalProperties" not in out["properties"]  # a property named "properties"
    assert out["$defs"]["x"]["additionalProperties"] is False
    assert out["anyOf"][0]["additionalProperties"] is False
    assert closed({"properties": {}, "additionalProperties": True})["additionalProperties"] is True
    c = constraint_for(
        tokenizer,
        JsonConstraint({"type": "object", "properties": {"on": {"type": "boolean"}}}),
        VOCAB,
    )
    for token in b'{"on": true':
        c.accept(token)
    scores = np.zeros(VOCAB, np.float32)
    c.mask(scores)
    assert {bytes([t]) for t in np.flatnonzero(np.isfinite(scores))} == {b"}"}


def test_concurrent_first_requests_share_one_tokenizer_build(tokenizer: Any) -> None:
    import threading

    from edgeinfer.serving.constrain import Constraints

    class Model:
        n_vocab = VOCAB

        def __init__(self) -> None:
            self.builds = 0
            self.release = threading.Event()

        def grammar_tokenizer(self) -> Any:
            self.builds += 1
            assert self.release.wait(10)
            return tokenizer

    async def main() -> tuple[int, int]:
        model, constraints = Model(), Constraints()
        spec = JsonConstraint({"type": "object"})
        tasks = [asyncio.create_task(constraints.compile(model, spec)) for _ in range(8)]
        await asyncio.sleep(0.05)  # all eight are waiting for the build
        model.release.set()
        done = await asyncio.gather(*tasks)
        again = await constraints.compile(model, spec)
        return model.builds, len({id(c) for c in [*done, again]})

    builds, distinct = asyncio.run(asyncio.wait_for(main(), 20))
    assert builds == 1 and distinct == 9  # one tokenizer, a matcher per request

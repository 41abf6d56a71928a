"""The grammar tokenizer a GGUF model builds from the pieces it read at load equals the one
llguidance's own llama.cpp helper builds (token by token, and in the masks it gives)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from llguidance.llamacpp import lltokenizer_from_vocab

from edgeinfer.config import LlmOptions
from edgeinfer.runtime import gguf_writer
from edgeinfer.runtime.llm_llamacpp import LlamaCppModel
from edgeinfer.serving.constrain import JsonConstraint, constraint_for


def test_grammar_tokenizer_matches_llguidance_helper(tmp_path: Path) -> None:
    gguf_writer.build_gguf(tmp_path / "m.gguf", "tiny", "f32", seed=0)
    model = LlamaCppModel(tmp_path / "m.gguf", LlmOptions(context_length=256, slots=1), 1)
    try:
        ours = model.grammar_tokenizer()
        with warnings.catch_warnings():  # the helper calls a deprecated llama.cpp function
            warnings.simplefilter("ignore", DeprecationWarning)
            theirs = lltokenizer_from_vocab(model._vocab)
        assert model.grammar_tokenizer() is ours  # built once
        assert ours.vocab_size == theirs.vocab_size and ours.eos_token == theirs.eos_token
        for t in range(model.n_vocab):
            assert ours.decode_bytes([t]) == theirs.decode_bytes([t]), t
            assert ours.is_special_token(t) == theirs.is_special_token(t), t
        schema = JsonConstraint({"type": "object", "properties": {"a": {"type": "string"}}})
        a, b = (constraint_for(tok, schema, model.n_vocab) for tok in (ours, theirs))
        rng = np.random.default_rng(0)
        for _ in range(30):
            sa, sb = (np.zeros(model.n_vocab, np.float32) for _ in range(2))
            a.mask(sa)
            b.mask(sb)
            assert np.array_equal(np.isfinite(sa), np.isfinite(sb))
            token = int(rng.choice(np.flatnonzero(np.isfinite(sa))))
            if a.accept(token) | b.accept(token):
                break
    finally:
        model.close()

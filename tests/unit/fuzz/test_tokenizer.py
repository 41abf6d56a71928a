"""Fuzzing the tokenizer path of a text model (the demo MiniLM): any bytes a client can put in
a BYTES tensor, invalid UTF-8 included, give embeddings or InvalidInput, never another error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeinfer import runtime
from edgeinfer.errors import InvalidInput
from edgeinfer.repository import Repository
from tests.unit.fuzz.budget import fuzz


@pytest.fixture(scope="module")
def minilm(demo_repo: Path) -> Iterator[Any]:
    entry = Repository(demo_repo).model("minilm")
    model = runtime.load(entry.versions[-1].path, entry.config)
    yield model
    model.close()


texts = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64).map(lambda t: t.encode("utf-8", "surrogatepass")),  # lone surrogates too
    st.sampled_from([b"\xff\xfe", b"\xed\xa0\x80", b"\xc0\xaf", b"\x00" * 50, b"a" * 5000,
                     "日本語 ✓ 🤖".encode(), b"\xf4\x90\x80\x80", "x\u0301" .encode() * 400]),
)  # fmt: skip


@fuzz(100, deadline_s=15)
@given(batch=st.lists(texts, max_size=5))
def test_any_bytes_give_embeddings_or_invalid_input(minilm: Any, batch: list[bytes]) -> None:
    feed = np.empty(len(batch), dtype=object)
    feed[:] = batch
    try:
        out = minilm.run({"text": feed})
    except InvalidInput:
        return
    emb = out["embedding"]
    assert emb.shape == (len(batch), 384) and np.isfinite(emb).all()


def test_an_empty_batch_is_invalid_input_not_a_backend_error(minilm: Any) -> None:
    # Found by fuzzing: no strings made a rank-1 token array that ONNX Runtime refused
    # (BackendError, a 500).
    with pytest.raises(InvalidInput, match="no strings"):
        minilm.run({"text": np.empty(0, dtype=object)})

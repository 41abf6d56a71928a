"""The demo models served to real clients: tritonclient over HTTP and gRPC, and the openai package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import openai
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tokenizers import Tokenizer

from tests.helpers import ServerProcess

SENTENCES = [
    "A man is playing a guitar.",
    "Someone plays an instrument on stage.",
    "The stock market fell sharply today.",
    "Ünïcödé tëxt wörks tóo ✓",
    "",
]


def digits_test_split() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    _, x_test, _, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return x_test.reshape(-1, 1, 8, 8).astype(np.float32), y_test


def minilm_reference(repo: Path, texts: list[str]) -> np.ndarray:
    """What the server must return: the same tokenizer settings, ONNX Runtime in-process."""
    tok = Tokenizer.from_file(str(repo / "minilm" / "1" / "tokenizer.json"))
    tok.enable_truncation(256)
    tok.enable_padding()
    enc = tok.encode_batch(texts)
    feeds = {
        "input_ids": np.array([e.ids for e in enc], np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], np.int64),
    }
    sess = ort.InferenceSession(str(repo / "minilm" / "1" / "model.onnx"))
    return sess.run(["embedding"], feeds)[0]


@pytest.fixture(scope="module", params=["http", "grpc"])
def triton(request: pytest.FixtureRequest, demo_server: ServerProcess) -> tuple[object, object]:
    if request.param == "http":
        return httpclient, httpclient.InferenceServerClient(demo_server.http_addr)
    return grpcclient, grpcclient.InferenceServerClient(demo_server.grpc_addr)


def test_digits_classifies_and_matches_onnxruntime(triton: tuple, demo_repo: Path) -> None:
    mod, client = triton
    assert client.is_model_ready("digits")
    x, y = digits_test_split()
    sess = ort.InferenceSession(str(demo_repo / "digits" / "1" / "model.onnx"))
    correct = 0
    for start in range(0, len(x), 64):
        batch = x[start : start + 64]
        inp = mod.InferInput("image", list(batch.shape), "FP32")
        inp.set_data_from_numpy(batch)
        logits = client.infer("digits", [inp]).as_numpy("logits")
        assert np.array_equal(logits, sess.run(None, {"image": batch})[0])
        correct += int((logits.argmax(1) == y[start : start + 64]).sum())
    assert correct / len(x) > 0.95


def test_minilm_embeds_text(triton: tuple, demo_repo: Path) -> None:
    mod, client = triton
    md = client.get_model_metadata("minilm", **({"as_json": True} if mod is grpcclient else {}))
    (inp_md,) = md["inputs"]
    assert (inp_md["name"], inp_md["datatype"], [int(d) for d in inp_md["shape"]]) == (
        "text",
        "BYTES",
        [-1],
    )
    texts = np.array([s.encode() for s in SENTENCES], dtype=object)
    inp = mod.InferInput("text", [len(texts)], "BYTES")
    inp.set_data_from_numpy(texts)
    emb = client.infer("minilm", [inp]).as_numpy("embedding")
    assert emb.shape == (len(SENTENCES), 384)
    assert np.array_equal(emb, minilm_reference(demo_repo, SENTENCES))
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # Paraphrases are closer than unrelated sentences.
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3


def test_openai_embeddings(demo_server: ServerProcess, demo_repo: Path) -> None:
    client = openai.OpenAI(base_url=demo_server.url + "/v1", api_key="unused")
    ids = {m.id for m in client.models.list().data}
    assert {"digits", "minilm"} <= ids
    # The openai package asks for base64 by default; ask for floats explicitly too.
    resp = client.embeddings.create(model="minilm", input=SENTENCES[:3])
    floats = client.embeddings.create(model="minilm", input=SENTENCES[:3], encoding_format="float")
    expected = minilm_reference(demo_repo, SENTENCES[:3])
    for got in (resp, floats):
        assert [d.index for d in got.data] == [0, 1, 2]
        assert np.allclose(np.array([d.embedding for d in got.data]), expected, atol=1e-6)
    assert resp.usage.prompt_tokens > 10
    single = client.embeddings.create(model="minilm", input="A man is playing a guitar.")
    assert np.allclose(single.data[0].embedding, expected[0], atol=1e-5)


@pytest.mark.parametrize(("kwargs", "status", "needle"), [
    ({"model": "nope", "input": "x"}, 404, "nope"),
    ({"model": "digits", "input": "x"}, 400, "not a text embedding model"),
    ({"model": "minilm", "input": []}, 400, "input"),
    ({"model": "minilm", "input": [[1, 2, 3]]}, 400, "input"),
])  # fmt: skip
def test_openai_errors(demo_server: ServerProcess, kwargs: dict, status: int, needle: str) -> None:
    client = openai.OpenAI(base_url=demo_server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.embeddings.create(**kwargs)
    assert info.value.status_code == status
    assert needle in info.value.message

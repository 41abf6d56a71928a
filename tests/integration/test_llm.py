"""The LLM API on a real server with the real llama.cpp and the tiny demo GGUF, through the official
`openai` client (and httpx where headers or a mid-stream disconnect matter).

The demo model uses an f32 KV cache with flash attention off (its config.toml): with llama.cpp's
default f16 cache, attention numerics depend on the batch and greedy tokens of a random model can
flip between a request alone and the same request batched.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import httpx
import llama_cpp
import openai
import pytest

from tests.helpers import Samples, ServerProcess, samples, serve, wait_until

MODEL = "llm-demo"
SLOW = "llm-small"  # ~10 ms per token: generations that last long enough to interrupt
PROMPTS = ["The quick brown fox", "Hello", "Once upon a time there was a little robot who",
           "Edge inference runs a model next to the sensor, the camera or the user. " * 3]  # fmt: skip


@pytest.fixture(scope="module")
def llm_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeinfer.demo.gguf import build_llm_demo
    from edgeinfer.repository import add_version
    from edgeinfer.runtime.gguf_writer import build_gguf

    root = tmp_path_factory.mktemp("llm-repo")
    scratch = tmp_path_factory.mktemp("scratch")
    build_llm_demo(root / MODEL, scratch)
    build_gguf(scratch / "small.gguf", "small", "f32")
    (root / SLOW).mkdir()
    (root / SLOW / "config.toml").write_text(
        'backend = "llama.cpp"\n[llm]\ncontext_length = 2048\nslots = 2\n'
    )
    add_version(root / SLOW, {"model.gguf": scratch / "small.gguf"})
    return root


@pytest.fixture(scope="module")
def server(llm_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serve(llm_repo, tmp_path_factory.mktemp("llm-logs") / "server.log") as s:
        yield s


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def reference(llm_repo: Path) -> Iterator[object]:
    """llama-cpp-python's own high-level API on the same file and settings."""
    from edgeinfer.runtime import llm_backends

    llm_backends.load(llama_cpp)  # the image's build (GGML_BACKEND_DL) loads no CPU backend itself
    llm = llama_cpp.Llama(str(llm_repo / MODEL / "1" / "model.gguf"), n_ctx=512, n_threads=1,
                          type_k=0, type_v=0, flash_attn=False, verbose=False)  # fmt: skip
    yield llm
    llm.close()


def complete(client: openai.OpenAI, prompt: str, max_tokens: int = 24, **kw: object) -> object:
    return client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens,
                                     temperature=0, **kw)  # type: ignore[call-overload]  # fmt: skip


def metrics(server: ServerProcess) -> Samples:
    return samples(server.url, "vllm:")


def running(server: ServerProcess, model: str = SLOW) -> float:
    return metrics(server).value("vllm:num_requests_running", model_name=model)


def test_models_lists_the_llm(client: openai.OpenAI) -> None:
    assert MODEL in [m.id for m in client.models.list().data]


def test_greedy_output_matches_llama_cpp_python(client: openai.OpenAI, reference: object) -> None:
    for prompt in PROMPTS:
        ours = complete(client, prompt, 24)
        theirs = reference.create_completion(prompt, max_tokens=24, temperature=0.0,  # type: ignore[attr-defined]
                                             repeat_penalty=1.0)  # fmt: skip
        assert ours.choices[0].text == theirs["choices"][0]["text"], prompt
        assert ours.usage.prompt_tokens == theirs["usage"]["prompt_tokens"]
        assert ours.usage.completion_tokens == 24 and ours.choices[0].finish_reason == "length"


def test_batched_output_equals_output_alone(client: openai.OpenAI) -> None:
    lengths = [40, 7, 25, 60]
    alone = [complete(client, p, n).choices[0].text for p, n in zip(PROMPTS, lengths, strict=True)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for _ in range(2):
            batched = list(pool.map(lambda pn: complete(client, *pn).choices[0].text,
                                    [*zip(PROMPTS, lengths, strict=True)] * 2))  # fmt: skip
            assert batched == alone * 2


def test_chat_streaming_matches_non_streaming(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20,
                                           temperature=0)  # type: ignore[arg-type]  # fmt: skip
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=20, temperature=0, stream=True,
        stream_options={"include_usage": True}))  # type: ignore[arg-type]  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert whole.object == "chat.completion" and chunks[1].object == "chat.completion.chunk"


def test_completion_streaming_ends_with_done(server: ServerProcess) -> None:
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 5, "temperature": 0, "stream": True}
    lines = httpx.post(server.url + "/v1/completions", json=body).text.split("\n\n")
    assert lines[-2:] == ["data: [DONE]", ""]
    assert all(line.startswith("data: {") for line in lines[:-2])


def test_stop_strings_cut_the_text(client: openai.OpenAI) -> None:
    full = complete(client, PROMPTS[2], 40).choices[0].text
    stop = full[10:14]
    out = complete(client, PROMPTS[2], 40, stop=[stop, "never-there"])
    assert out.choices[0].text == full[: full.index(stop)]
    assert out.choices[0].finish_reason == "stop"
    streamed = complete(client, PROMPTS[2], 40, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == full[: full.index(stop)]


def test_max_tokens_and_seeded_sampling(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        return client.completions.create(model=MODEL, prompt="Hello", max_tokens=16,
                                         temperature=0.9, top_p=0.95, seed=seed).choices[0].text  # fmt: skip

    assert sample(5) == sample(5)
    assert sample(5) != sample(6)
    out = complete(client, "Hello", 3)
    assert out.usage.completion_tokens == 3 and out.choices[0].finish_reason == "length"


def test_logprobs(client: openai.OpenAI) -> None:
    out = complete(client, "Hello", 4, logprobs=2)
    lp = out.choices[0].logprobs
    assert (
        len(lp.tokens) == len(lp.token_logprobs) == 4 and "".join(lp.tokens) == out.choices[0].text
    )
    assert all(len(t) == 2 for t in lp.top_logprobs)
    assert all(v <= 0 for v in lp.token_logprobs)
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                          max_tokens=3, temperature=0, logprobs=True,
                                          top_logprobs=3)  # fmt: skip
    content = chat.choices[0].logprobs.content
    assert len(content) == 3 and all(len(c.top_logprobs) == 3 for c in content)
    # Greedy: the chosen token is the most likely one.
    assert all(c.logprob == pytest.approx(c.top_logprobs[0].logprob) for c in content)


def test_context_overflow_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="maximum context length is 1024") as e:
        complete(client, "Hello", 1100)
    assert e.value.status_code == 400
    assert e.value.body["type"] == "invalid_request_error"  # type: ignore[index]


def test_unknown_model_and_tensor_inference_on_an_llm(client: openai.OpenAI,
                                                      server: ServerProcess) -> None:  # fmt: skip
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    body = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
    r = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=body)
    assert r.status_code == 400 and "generate" in r.json()["error"]


def test_disconnect_mid_stream_frees_the_slot(client: openai.OpenAI, server: ServerProcess) -> None:
    before = metrics(server)
    body = {"model": SLOW, "prompt": "Hello", "max_tokens": 2000, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body) as r:
        lines = r.iter_lines()
        seen = [next(lines) for _ in range(6)]
        assert running(server) == 1
    assert any(line.startswith("data: {") for line in seen)
    wait_until(lambda: running(server) == 0, 10, "the slot to be freed")
    after = metrics(server)
    abort = {"finished_reason": "abort", "model_name": SLOW}
    assert after.value("vllm:request_success_total", **abort) == before.value(
        "vllm:request_success_total", **abort) + 1  # fmt: skip
    generated = "vllm:generation_tokens_total"
    assert after.value(generated, model_name=SLOW) - before.value(generated, model_name=SLOW) < 1000
    again = client.completions.create(model=SLOW, prompt="Hello", max_tokens=4)
    assert again.usage.completion_tokens == 4  # the server still works


def test_vllm_metrics_count_requests_and_tokens(client: openai.OpenAI,
                                                server: ServerProcess) -> None:  # fmt: skip
    before = metrics(server)
    outs = [complete(client, p, n) for p, n in (("Hello", 5), ("The quick brown fox", 9))]
    after = metrics(server)

    def delta(name: str, **labels: str) -> float:
        return after.value(name, model_name=MODEL, **labels) - (
            before.get(name, model_name=MODEL, **labels) or 0.0
        )

    assert delta("vllm:prompt_tokens_total") == sum(o.usage.prompt_tokens for o in outs)
    assert delta("vllm:generation_tokens_total") == 14
    assert delta("vllm:request_success_total", finished_reason="length") == 2
    assert delta("vllm:time_to_first_token_seconds_count") == 2
    assert delta("vllm:inter_token_latency_seconds_count") == 12
    assert delta("vllm:e2e_request_latency_seconds_count") == 2
    assert after.value("vllm:num_requests_running", model_name=MODEL) == 0
    assert after.value("vllm:num_requests_waiting", model_name=MODEL) == 0
    assert after.value("vllm:kv_cache_usage_perc", model_name=MODEL) == 0


def test_generate_extension(server: ServerProcess, client: openai.OpenAI) -> None:
    expected = complete(client, "Hello", 8).choices[0].text
    body = {"id": "r1", "text_input": "Hello", "parameters": {"max_tokens": 8, "temperature": 0}}
    r = httpx.post(f"{server.url}/v2/models/{MODEL}/generate", json=body)
    assert r.status_code == 200
    doc = r.json()
    assert (doc["id"], doc["model_name"], doc["model_version"]) == ("r1", MODEL, "1")
    assert doc["text_output"] == expected
    r = httpx.post(f"{server.url}/v2/models/{MODEL}/versions/1/generate_stream", json=body)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in r.text.split("\n\n") if line.startswith("data: ")]
    import json

    docs = [json.loads(e) for e in events]
    assert "".join(d["text_output"] for d in docs) == expected
    assert docs[-1]["finish_reason"] == "length"
    r = httpx.post(f"{server.url}/v2/models/{MODEL}/generate", json={"text_input": "x",
                                                                      "max_tokens": 1999})  # fmt: skip
    assert r.status_code == 400 and "maximum context length" in r.json()["error"]


@pytest.fixture(scope="module")
def one_slot(llm_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serve(llm_repo, tmp_path_factory.mktemp("llm-slot") / "server.log",
               "--set", f"{SLOW}.llm.slots=1", "--set", f"{SLOW}.queue.max_queue_size=1") as s:  # fmt: skip
        yield s


def test_full_queue_is_429_with_retry_after(one_slot: ServerProcess) -> None:
    body = {"model": SLOW, "prompt": "Hello", "max_tokens": 2000, "temperature": 0, "stream": True}
    url = one_slot.url + "/v1/completions"
    with httpx.stream("POST", url, json=body) as first:
        first_lines = first.iter_lines()  # keep it: a dropped iterator closes the response
        next(first_lines)  # running in the only slot
        with httpx.Client(timeout=30) as c, c.stream("POST", url, json=body) as second:
            waiting = "vllm:num_requests_waiting"
            wait_until(lambda: metrics(one_slot).value(waiting, model_name=SLOW) == 1, 5,
                       "the second request to wait")  # fmt: skip
            r = httpx.post(url, json={**body, "stream": False})
            assert r.status_code == 429, r.text
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["type"] == "rate_limit_error"
            assert second.status_code == 200
    wait_until(lambda: running(one_slot) == 0, 10, "the slot to be freed")


def test_new_version_swaps_in_while_old_streams_finish(llm_repo: Path, server: ServerProcess,
                                                      tmp_path: Path) -> None:  # fmt: skip
    from edgeinfer.repository import add_version
    from edgeinfer.runtime.gguf_writer import build_gguf

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    v1_text = complete(client, "Hello", 200).choices[0].text
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 200, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body) as old:
        lines = old.iter_lines()
        first = next(lines)
        build_gguf(tmp_path / "v2.gguf", "tiny", "f32", seed=1)
        add_version(llm_repo / MODEL, {"model.gguf": tmp_path / "v2.gguf"}, version=2)
        r = httpx.post(f"{server.url}/v2/repository/models/{MODEL}/load", json={}, timeout=60)
        assert r.status_code == 200, r.text
        rest = [first, *lines]
    import json

    texts = [json.loads(line[6:])["choices"][0]["text"] for line in rest
             if line.startswith("data: {")]  # fmt: skip
    assert "".join(texts) == v1_text  # the stream that began on v1 finished on v1
    v2 = httpx.post(f"{server.url}/v2/models/{MODEL}/generate",
                    json={"text_input": "Hello", "max_tokens": 20, "temperature": 0}).json()  # fmt: skip
    assert v2["model_version"] == "2" and not v1_text.startswith(v2["text_output"])
    r = httpx.post(f"{server.url}/v2/repository/models/{MODEL}/rollback", json={}, timeout=60)
    assert r.status_code == 200, r.text
    back = complete(client, "Hello", 200).choices[0].text
    assert back == v1_text
    assert running(server, MODEL) == 0

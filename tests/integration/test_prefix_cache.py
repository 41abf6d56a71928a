"""Prefix caching on a real server with the real llama.cpp, through the `openai` client: the
next turn of a chat reuses the KV cells of the turns before it and answers exactly as a server
without the cache does.

One server serves the tiny demo GGUF twice: `chat` (the cache on, the default) and
`chat-nocache` (`[llm] prefix_cache = false`), both with the demo LoRA adapter. Their KV caches
are f32 with flash attention off, so greedy tokens do not depend on how prefill was batched.
"""

from __future__ import annotations

import concurrent.futures
import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import llama_cpp  # noqa: F401  (missing: these tests fail, never skip)
import openai
import pytest

from tests.helpers import ServerProcess, samples, serve

CACHED, PLAIN = "chat", "chat-nocache"
# ~200 tokens: longer than the demo's prefill chunk (128), so prefill runs in chunks.
SYSTEM = "You are a terse assistant for an edge device. " * 5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from edgeinfer.demo.gguf import build_llm_demo

    root = tmp_path_factory.mktemp("prefix-repo")
    build_llm_demo(root / CACHED, tmp_path_factory.mktemp("a"))
    build_llm_demo(root / PLAIN, tmp_path_factory.mktemp("b"))
    config = root / PLAIN / "config.toml"
    config.write_text(config.read_text() + "prefix_cache = false\n")
    with serve(root, tmp_path_factory.mktemp("prefix-logs") / "server.log") as s:
        yield s


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Any:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def counters(server: ServerProcess, model: str) -> tuple[float, float]:
    got = samples(server.url, "vllm:prefix_cache_")
    return (got.value("vllm:prefix_cache_queries_total", model_name=model),
            got.value("vllm:prefix_cache_hits_total", model_name=model))  # fmt: skip


def chat(client: Any, model: str, turns: list[str], **kw: Any) -> list[tuple[str, int, int]]:
    """A conversation, one request per user turn: (answer, prompt tokens, cached tokens)."""
    messages = [{"role": "system", "content": SYSTEM}]
    out = []
    for text in turns:
        messages.append({"role": "user", "content": text})
        r = client.chat.completions.create(model=model, messages=messages, max_tokens=12,
                                           temperature=0, **kw)  # fmt: skip
        answer = r.choices[0].message.content
        messages.append({"role": "assistant", "content": answer})
        out.append((answer, r.usage.prompt_tokens, r.usage.prompt_tokens_details.cached_tokens))
    return out


TURNS = ["What is the weather like?", "And tomorrow?", "Thanks. Anything else?"]


def test_later_chat_turns_reuse_the_cache_and_answer_as_without_it(
    server: ServerProcess, client: Any
) -> None:
    before = counters(server, CACHED)
    cached = chat(client, CACHED, TURNS)
    plain = chat(client, PLAIN, TURNS)
    assert [a for a, _, _ in cached] == [a for a, _, _ in plain]
    assert all(c == 0 for _, _, c in plain) and cached[0][1] > 128  # chunked prefill
    # Each later turn finds at least the previous turn's prompt in the slot that served it.
    for (_, prompt, _), (_, _, hit) in itertools.pairwise(cached):
        assert prompt <= hit < prompt + 12
    after = counters(server, CACHED)
    assert after[0] - before[0] == sum(p for _, p, _ in cached)
    assert after[1] - before[1] == sum(c for _, _, c in cached)
    assert counters(server, PLAIN)[1] == 0


def test_cache_prompt_false_prefills_everything(client: Any) -> None:
    chat(client, CACHED, ["Opt out, please."])
    ((_, _, hit),) = chat(client, CACHED, ["Opt out, please."], extra_body={"cache_prompt": False})
    assert hit == 0


def test_adapters_never_share_a_prefix_and_match_the_uncached_server(client: Any) -> None:
    turns = ["Adapter turn one, a fresh conversation.", "Adapter turn two."]
    base = chat(client, CACHED, turns[:1])
    adapted = chat(client, CACHED + ":demo-adapter", turns)
    plain = chat(client, PLAIN + ":demo-adapter", turns)
    assert [a for a, _, _ in adapted] == [a for a, _, _ in plain]
    assert adapted[0][0] != base[0][0]  # the adapter changes the answer
    assert adapted[0][2] == 0  # the base model's cells for the same prompt are not reused
    assert adapted[1][2] > adapted[0][1] // 2


def test_many_conversations_evict_slots_and_stay_exact(server: ServerProcess,
                                                       client: Any) -> None:  # fmt: skip
    # 8 conversations on 4 slots, 4 at a time: slots change hands between turns.
    topics = [f"Conversation {i}: tell me about sensor {i}." for i in range(8)]

    def run(model: str) -> list[list[tuple[str, int, int]]]:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            return list(pool.map(lambda t: chat(client, model, [t, "More.", "Why?"]), topics))

    cached, plain = run(CACHED), run(PLAIN)
    assert [[a for a, _, _ in c] for c in cached] == [[a for a, _, _ in c] for c in plain]
    assert sum(hit for c in cached for _, _, hit in c[1:]) > 0


def test_triton_generate_reports_cached_tokens(server: ServerProcess) -> None:
    url = f"{server.url}/v2/models/{CACHED}/generate"
    body = {
        "text_input": SYSTEM + " Generate, twice.",
        "parameters": {"max_tokens": 4, "temperature": 0},
    }
    first = httpx.post(url, json=body).json()
    second = httpx.post(url, json=body).json()
    assert second["text_output"] == first["text_output"]
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == first["usage"][
        "prompt_tokens"] - 1  # fmt: skip


def test_completions_reuse_a_shared_prefix(client: Any) -> None:
    def complete(model: str, prompt: str) -> Any:
        return client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0)

    for model in (CACHED, PLAIN):
        complete(model, SYSTEM + " First question.")
    ours, plain = (
        complete(CACHED, SYSTEM + " Second one."),
        complete(PLAIN, SYSTEM + " Second one."),
    )
    assert ours.choices[0].text == plain.choices[0].text
    assert ours.usage.prompt_tokens_details.cached_tokens > ours.usage.prompt_tokens // 2
    assert plain.usage.prompt_tokens_details.cached_tokens == 0


def test_n_choices_prefill_the_prompt_once_and_sample_as_without_the_cache(
    server: ServerProcess, client: Any
) -> None:
    prompt = "Sensor report 4711 from the north field: all quiet. " * 4  # in no slot yet

    def four(model: str) -> Any:
        return client.completions.create(model=model, prompt=prompt, n=4, max_tokens=8,
                                         temperature=0.9, seed=11)  # fmt: skip

    before = counters(server, CACHED)
    ours, plain = four(CACHED), four(PLAIN)
    queries, hits = (a - b for a, b in zip(counters(server, CACHED), before, strict=True))
    assert [c.index for c in ours.choices] == [0, 1, 2, 3]
    assert [c.text for c in ours.choices] == [c.text for c in plain.choices]
    assert len({c.text for c in ours.choices}) > 1  # seeds 11..14: distinct samples
    n = ours.usage.prompt_tokens
    assert queries == 4 * n
    # Prefilled once: the other three copied all but the last prompt token (its logits).
    assert hits >= 3 * (n - 1) and queries - hits <= n + 3


def test_a_request_takes_the_system_prompt_of_a_running_one(client: Any) -> None:
    system = "You watch the pumps and valves of a farm, and you answer briefly. " * 4

    def ask(model: str, question: str, n: int, **kw: Any) -> Any:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        return client.chat.completions.create(model=model, messages=messages, max_tokens=n,
                                              temperature=0, **kw)  # fmt: skip

    running = iter(ask(CACHED, "Report every pump, please.", 400, stream=True))
    head = [next(running)]
    while not head[-1].choices or not head[-1].choices[0].delta.content:
        head.append(next(running))  # it is decoding now
    late, plain = ask(CACHED, "Is valve 2 open?", 12), ask(PLAIN, "Is valve 2 open?", 12)
    busy = "".join(c.choices[0].delta.content or "" for c in [*head, *running] if c.choices)
    assert late.choices[0].message.content == plain.choices[0].message.content
    assert late.usage.prompt_tokens_details.cached_tokens > late.usage.prompt_tokens // 2
    assert busy == ask(PLAIN, "Report every pump, please.", 400).choices[0].message.content

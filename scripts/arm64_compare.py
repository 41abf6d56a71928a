"""The same calls to the arm64 server and the x86 server, compared (scripts/check_arm64.py).

Each check returns a dict with `ok`, a one-line `summary` and its measurements. Tolerances are
absolute: the two builds of ONNX Runtime use different kernels (NEON vs AVX-512), so results
agree to float32 rounding, not bit for bit.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import numpy as np

DIGITS_N = 100
DIGITS_TOL = 1e-4  # logits are O(10)
MINILM_TOL = 1e-5  # unit-norm embeddings
# qemu emulates floating point in software: MiniLM costs ~1 s per token there, so a few
# sentences of the demo set, not all of them.
MINILM_N = 4
LLM_TOKENS = 16
IMAGENET_TOL = 1e-3  # FP32 logits are O(10); INT8 kernels differ more, so there top-5 decides
PHOTOS = ("flower.jpg", "china.jpg")  # scikit-learn's photos: a daisy, a temple

Ports = tuple[int, int]  # (http, grpc)


def _check(ok: bool, summary: str, **values: Any) -> dict[str, Any]:
    return {"ok": bool(ok), "summary": summary, **values}


def server(arm: Ports, x86: Ports) -> dict[str, Any]:
    """Readiness and metadata over gRPC: the same models with the same tensors on both."""
    import tritonclient.grpc as tg

    answers = []
    for http, grpc in (arm, x86):
        del http
        c = tg.InferenceServerClient(f"127.0.0.1:{grpc}")
        ready = c.is_server_live() and c.is_server_ready()
        models = {}
        for name in ("digits", "minilm"):
            meta = c.get_model_metadata(name, as_json=True)
            models[name] = (c.is_model_ready(name), meta["inputs"], meta["outputs"])
        answers.append((ready, c.get_server_metadata(as_json=True)["name"], models))
        c.close()
    same = answers[0] == answers[1]
    ok = same and answers[0][0] and all(m[0] for m in answers[0][2].values())
    return _check(ok, "ready; metadata of digits and minilm equal" if ok else
                  f"differs: arm64 {answers[0]} vs x86 {answers[1]}")  # fmt: skip


def digits(arm: Ports, x86: Ports) -> dict[str, Any]:
    """`DIGITS_N` of scikit-learn's digits through KServe gRPC (tritonclient), in two batches."""
    import tritonclient.grpc as tg
    from sklearn.datasets import load_digits

    data = load_digits()
    x = data.images[:DIGITS_N].astype(np.float32).reshape(-1, 1, 8, 8)
    outs = []
    for _, grpc in (arm, x86):
        c = tg.InferenceServerClient(f"127.0.0.1:{grpc}")
        parts = []
        for batch in np.array_split(x, 2):
            inp = tg.InferInput("image", list(batch.shape), "FP32")
            inp.set_data_from_numpy(batch)
            parts.append(c.infer("digits", [inp], client_timeout=900).as_numpy("logits"))
        outs.append(np.concatenate(parts))
        c.close()
    diff = float(np.abs(outs[0] - outs[1]).max())
    agree = int((outs[0].argmax(1) == outs[1].argmax(1)).sum())
    correct = int((outs[0].argmax(1) == data.target[:DIGITS_N]).sum())
    ok = diff <= DIGITS_TOL and agree == DIGITS_N
    return _check(ok, f"max |diff| {diff:.2g} (tolerance {DIGITS_TOL:g}), argmax agrees "
                  f"{agree}/{DIGITS_N}, arm64 correct {correct}/{DIGITS_N}",
                  max_abs_diff=diff, argmax_agree=agree, n=DIGITS_N, arm64_correct=correct)  # fmt: skip


def sentences() -> list[str]:
    out = []
    for name in ("sentences.txt", "sentences_eval.txt"):
        text = resources.files("edgeinfer.demo").joinpath(name).read_text()
        out += [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]
    return out


def minilm(arm: Ports, x86: Ports) -> dict[str, Any]:
    """The demo sentences through KServe HTTP (tritonclient, binary tensors) and through the
    OpenAI embeddings route (httpx)."""
    import httpx
    import tritonclient.http as th

    texts = sentences()[:MINILM_N]
    kserve, openai = [], []
    for http, _ in (arm, x86):
        c = th.InferenceServerClient(f"127.0.0.1:{http}", network_timeout=600)
        inp = th.InferInput("text", [len(texts)], "BYTES")
        inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
        kserve.append(c.infer("minilm", [inp]).as_numpy("embedding"))
        c.close()
        body = {"model": "minilm", "input": texts[:2]}
        reply = httpx.post(f"http://127.0.0.1:{http}/v1/embeddings", json=body, timeout=600)
        reply.raise_for_status()
        openai.append(np.array([d["embedding"] for d in reply.json()["data"]], np.float32))
    diff = float(np.abs(kserve[0] - kserve[1]).max())
    diff_openai = float(np.abs(openai[0] - openai[1]).max())
    cosine = float((kserve[0] * kserve[1]).sum(1).min())
    ok = max(diff, diff_openai) <= MINILM_TOL
    return _check(ok, f"{len(texts)} sentences: max |diff| {diff:.2g} (KServe HTTP), "
                  f"{diff_openai:.2g} (OpenAI route), min cosine {cosine:.7f}",
                  max_abs_diff=diff, max_abs_diff_openai=diff_openai, min_cosine=cosine,
                  n=len(texts))  # fmt: skip


def _jpeg(name: str) -> bytes:
    import io

    from PIL import Image
    from sklearn.datasets import load_sample_image

    buf = io.BytesIO()
    Image.fromarray(load_sample_image(name)).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def imagenet(arm: Ports, x86: Ports) -> dict[str, Any]:
    """scikit-learn's two photos as JPEG bytes through KServe gRPC (tritonclient) to
    efficientnet-lite0 version 1 (FP32) and 2 (INT8): logits, and the classification
    extension's top 5 (labels decided on each side, by each server)."""
    import tritonclient.grpc as tg

    photos = np.array([_jpeg(n) for n in PHOTOS], dtype=object)
    got: dict[str, list[tuple[np.ndarray, list[str]]]] = {"1": [], "2": []}
    for _, grpc in (arm, x86):
        c = tg.InferenceServerClient(f"127.0.0.1:{grpc}")
        for version, answers in got.items():
            inp = tg.InferInput("image", [len(photos)], "BYTES")
            inp.set_data_from_numpy(photos)
            raw = c.infer("efficientnet-lite0", [inp], model_version=version, client_timeout=900)
            top = c.infer("efficientnet-lite0", [inp], model_version=version, client_timeout=900,
                          outputs=[tg.InferRequestedOutput("logits", class_count=5)])  # fmt: skip
            labels = [s.decode().split(":", 2)[2] for s in top.as_numpy("logits").ravel()]
            answers.append((raw.as_numpy("logits"), labels))
        c.close()
    diffs = {v: float(np.abs(a[0][0] - a[1][0]).max()) for v, a in got.items()}
    same_top5 = {v: a[0][1] == a[1][1] for v, a in got.items()}
    ok = diffs["1"] <= IMAGENET_TOL and all(same_top5.values())
    daisy = got["1"][0][1][0]
    return _check(ok, f"FP32 max |diff| {diffs['1']:.2g} (tolerance {IMAGENET_TOL:g}), INT8 "
                  f"{diffs['2']:.2g}; top-5 labels equal: FP32 {same_top5['1']}, INT8 "
                  f"{same_top5['2']}; arm64 sees a {daisy!r}",
                  max_abs_diff_fp32=diffs["1"], max_abs_diff_int8=diffs["2"],
                  top5_arm64={v: a[0][1] for v, a in got.items()})  # fmt: skip


def llm(arm: Ports, x86: Ports) -> dict[str, Any]:
    """A greedy completion of the LLM demo (random weights, f32 KV) on both."""
    import httpx

    body = {"model": "llm-demo", "prompt": "The edge device", "max_tokens": LLM_TOKENS,
            "temperature": 0, "logprobs": 1}  # fmt: skip
    replies = []
    for http, _ in (arm, x86):
        reply = httpx.post(f"http://127.0.0.1:{http}/v1/completions", json=body, timeout=900)
        reply.raise_for_status()
        choice = reply.json()["choices"][0]
        tokens = (choice.get("logprobs") or {}).get("tokens") or []
        replies.append((choice["text"], tokens))
    same = replies[0] == replies[1]
    return _check(same, f"greedy {LLM_TOKENS}-token completion "
                  + ("identical" if same else f"differs: {replies[0][0]!r} vs {replies[1][0]!r}"),
                  text_arm64=replies[0][0], text_x86=replies[1][0])  # fmt: skip


def all_checks(arm: Ports, x86: Ports, with_llm: bool) -> dict[str, dict[str, Any]]:
    checks = {"server": server(arm, x86), "digits_grpc": digits(arm, x86),
              "minilm_http": minilm(arm, x86)}  # fmt: skip
    if with_llm:  # the full check: minutes of emulated floating point each
        checks["imagenet_grpc"] = imagenet(arm, x86)
        checks["llm_demo"] = llm(arm, x86)
    return checks

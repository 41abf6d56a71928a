"""llama.cpp's thread count follows CPU pressure between decodes, with the real llama.cpp; only
the pressure reading is faked (hardware)."""

from __future__ import annotations

from pathlib import Path

import llama_cpp  # noqa: F401  (missing: these tests fail, never skip)


def test_threads_drop_under_pressure_and_come_back(tmp_path: Path) -> None:
    from edgeinfer.config import LlmOptions
    from edgeinfer.hardware.contention import ThreadGovernor
    from edgeinfer.runtime.gguf_writer import build_gguf
    from edgeinfer.runtime.llm_llamacpp import BatchItem, LlamaCppModel

    build_gguf(tmp_path / "m.gguf", "tiny", "f32", seed=0)
    options = LlmOptions(context_length=64, slots=1, n_batch=64, prefill_chunk=32,
                         kv_cache_type="f32", extra_buffer_types=False)  # fmt: skip
    model = LlamaCppModel(tmp_path / "m.gguf", options, threads=2, threads_batch=2)
    pressure = [0.0]
    model._governor = ThreadGovernor(2, read=lambda: pressure[0], interval=0.0)
    try:
        tokens = model.tokenize("Edge inference runs next to the sensor.")
        first = model.decode([BatchItem(0, tokens, 0, True)])
        assert model.n_threads == (2, 2)
        pressure[0] = 80.0
        model.free(0)
        again = model.decode([BatchItem(0, tokens, 0, True)])
        assert model.n_threads == (1, 1) and int(again.argmax()) == int(first.argmax())
        pressure[0] = 1.0
        model.decode([BatchItem(0, [int(again.argmax())], len(tokens), True)])
        assert model.n_threads == (2, 2)
    finally:
        model.close()


def test_auto_threads_come_from_the_usable_cores(tmp_path: Path) -> None:
    from edgeinfer.config import ModelConfig
    from edgeinfer.hardware import default_threads
    from edgeinfer.repository import add_version
    from edgeinfer.runtime.gguf_writer import build_gguf
    from edgeinfer.runtime.llm_llamacpp import LlamaCppModel

    build_gguf(tmp_path / "m.gguf", "tiny", "f32", seed=0)
    add_version(tmp_path / "llm", {"model.gguf": tmp_path / "m.gguf"})
    config = ModelConfig("llm", backend="llama.cpp")
    model = LlamaCppModel.load(tmp_path / "llm" / "1", config)
    try:
        assert model.threads == model.threads_batch == default_threads()
    finally:
        model.close()

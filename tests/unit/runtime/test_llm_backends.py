"""What counts as "above the baseline ISA" when scripts/check-image reads the features of the
llama.cpp CPU backend variant a portable build loaded (ggml_backend_get_features)."""

from __future__ import annotations

from edgeinfer.runtime.llm_backends import above_baseline

# ggml_backend_get_features of three real variants, as llama.cpp reports them.
X64 = {"LLAMAFILE": "1", "OPENMP": "1", "REPACK": "1"}
ZEN4 = {"SSE3": "1", "SSSE3": "1", "AVX": "1", "AVX2": "1", "F16C": "1", "FMA": "1",
        "BMI2": "1", "AVX512": "1", "AVX512_VBMI": "1", "AVX512_VNNI": "1", "AVX512_BF16": "1",
        **X64}  # fmt: skip
ARMV8_0 = {"NEON": "1", "ARM_FMA": "1", **X64}


def test_the_portable_baseline_is_not_above_it() -> None:
    assert above_baseline(X64) == []
    assert above_baseline(ARMV8_0) == []  # NEON and FMA: every ARMv8 core


def test_a_micro_architecture_variant_names_its_extensions() -> None:
    isa = above_baseline(ZEN4)
    assert {"AVX2", "AVX512", "AVX512_VNNI", "AVX512_BF16"} <= set(isa)
    assert not {"LLAMAFILE", "OPENMP", "REPACK"} & set(isa)
    assert above_baseline({**ARMV8_0, "DOTPROD": "1", "SVE_CNT": "16"}) == ["DOTPROD"]

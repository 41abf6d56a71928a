"""PEFT conversion refuses bad adapters with 400s and leaves no temporary folders behind."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from edgeinfer.adapters.convert import (
    MAX_CONFIG_BYTES,
    PEFT_CONFIG,
    resolve_adapter_path,
    write_peft,
)
from edgeinfer.errors import InvalidInput
from edgeinfer.testing import models


def _peft(d: Path) -> Path:
    rng = np.random.default_rng(0)
    pairs = {"w1": (rng.standard_normal((4, 16), np.float32),
                    rng.standard_normal((32, 4), np.float32))}  # fmt: skip
    return write_peft(d, pairs, alpha=8.0, r=4)


def _leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("edgeinfer-lora-unit-*")}


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return models.mlp(tmp_path / "mlp.onnx", seed=1)


def test_an_oversized_config_is_refused_before_it_is_read(tmp_path: Path, base: Path) -> None:
    peft = _peft(tmp_path / "peft")
    with (peft / PEFT_CONFIG).open("r+b") as f:  # sparse: 512 MB on paper, nothing on disk
        f.truncate(512 << 20)
    before = _leftovers()
    with pytest.raises(InvalidInput, match=f"at most {MAX_CONFIG_BYTES}"):
        resolve_adapter_path(peft, base, "unit")
    assert _leftovers() == before


@pytest.mark.parametrize("config", [b"{not json", b"[1, 2]", b'{"r": "4"}', b'{"lora_alpha": []}'])
def test_a_malformed_config_is_a_400(tmp_path: Path, base: Path, config: bytes) -> None:
    peft = _peft(tmp_path / "peft")
    (peft / PEFT_CONFIG).write_bytes(config)
    before = _leftovers()
    with pytest.raises(InvalidInput):
        resolve_adapter_path(peft, base, "unit")
    assert _leftovers() == before


def test_a_failed_conversion_removes_its_temporary_folder(tmp_path: Path, base: Path) -> None:
    peft = _peft(tmp_path / "peft")
    (peft / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    before = _leftovers()
    with pytest.raises(InvalidInput, match="safetensors"):
        resolve_adapter_path(peft, base, "unit")
    assert _leftovers() == before


def test_a_unicode_digit_folder_is_not_a_version(tmp_path: Path, base: Path) -> None:
    peft = _peft(tmp_path / "peft")
    (peft / "²").mkdir()
    file, owned = resolve_adapter_path(peft, base, "unit")  # converted as PEFT, no crash
    assert owned is not None and file.is_relative_to(owned) and file.suffix == ".onnx_adapter"
    import shutil

    shutil.rmtree(owned)

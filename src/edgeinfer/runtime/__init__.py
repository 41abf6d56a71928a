"""Backends behind one protocol: `load(path, config) -> Model`; `Model.run(feeds)`."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from edgeinfer.config import ModelConfig
from edgeinfer.types import TensorSpec


class Model(Protocol):
    """A loaded model version. `run` is thread-safe and may release the GIL."""

    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(
        self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]: ...

    def warmup(self) -> None: ...

    def close(self) -> None: ...


def load(version_dir: Path, config: ModelConfig) -> Model:
    """Load the model files in `version_dir` with the backend named in `config`."""
    from edgeinfer.runtime.onnx import OnnxModel

    onnx_model = OnnxModel.load(version_dir, config)
    if (version_dir / "lora.json").is_file():  # a LoRA-ready graph (edgeinfer adapters convert)
        from edgeinfer.runtime.lora_onnx import LoraOnnxModel, LoraSpec

        spec = LoraSpec.read(version_dir)
        assert spec is not None
        return LoraOnnxModel(onnx_model, spec)
    if config.image is not None:
        from edgeinfer.runtime.images import ImageModel

        return ImageModel(onnx_model, version_dir, config.image, config.preprocess)
    if config.text is None:
        return onnx_model
    from edgeinfer.runtime.text import TextModel

    return TextModel(onnx_model, version_dir, config.text)

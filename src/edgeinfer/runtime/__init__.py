"""Backends behind one protocol, chosen from one table: `load(path, config) -> Model`.

A backend is one module with `load_instances(model_file, config) -> list[Model]` plus one
entry in BACKENDS. `config.backend` names it; when the config omits it, the version's model
file decides (`model.onnx`, `model.gguf`, `model.xml`, `model.tflite`).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from edgeinfer.config import ModelConfig
from edgeinfer.errors import BackendError, LoadError
from edgeinfer.types import DTYPE_TO_NUMPY, TensorSpec


class Model(Protocol):
    """A loaded model instance. `run` may release the GIL; one instance runs one batch at a
    time (the scheduler gives each instance its own worker)."""

    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(
        self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]: ...

    def warmup(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Backend:
    name: str  # the value of `backend` in config.toml
    module: str  # defines load_instances(model_file, config) -> list[Model]
    files: tuple[str, ...]  # model files it reads; the first one alone selects it
    package: str  # the distribution that must be installed
    imports: str  # ... and the name it is imported by
    extra: str  # `pip install 'edgeinfer[extra]'` installs it
    kind: Literal["tensor", "llm"] = "tensor"  # tensor: the batcher; llm: the generation loop

    def installed(self) -> bool:
        try:
            return importlib.util.find_spec(self.imports) is not None
        except (ImportError, ValueError):  # a parent package missing, or a module set to None
            return False

    def version(self) -> str | None:
        try:
            return metadata.version(self.package)
        except metadata.PackageNotFoundError:
            return None


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "onnxruntime",
            "edgeinfer.runtime.onnx",
            ("model.onnx",),
            "onnxruntime",
            "onnxruntime",
            "",
        ),
        Backend(
            "llama.cpp",
            "edgeinfer.runtime.llm_llamacpp",
            ("model.gguf",),
            "llama-cpp-python",
            "llama_cpp",
            "llm",
            kind="llm",
        ),
        Backend(
            "openvino",
            "edgeinfer.runtime.openvino",
            ("model.xml", "model.onnx"),
            "openvino",
            "openvino",
            "openvino",
        ),
        Backend(
            "litert",
            "edgeinfer.runtime.litert",
            ("model.tflite",),
            "ai-edge-litert",
            "ai_edge_litert",
            "litert",
        ),
    )
}


def resolve(version_dir: Path, config: ModelConfig) -> tuple[Backend, Path]:
    """The backend that serves `version_dir` and the model file it reads."""
    if config.backend:
        backend = BACKENDS.get(config.backend)
        if backend is None:
            raise LoadError(
                f"model {config.name}: unknown backend {config.backend!r}; "
                f"use one of {', '.join(BACKENDS)}"
            )
        for name in backend.files:
            if (version_dir / name).is_file():
                return backend, version_dir / name
        raise LoadError(
            f"{version_dir}: backend {backend.name} reads "
            f"{' or '.join(backend.files)}; the version has none"
        )
    for backend in BACKENDS.values():
        if (version_dir / backend.files[0]).is_file():
            return backend, version_dir / backend.files[0]
    files = ", ".join(b.files[0] for b in BACKENDS.values())
    raise LoadError(f"{version_dir}: no model file ({files})")


def backend_of(version_dir: Path, config: ModelConfig) -> Backend:
    return resolve(version_dir, config)[0]


def load_instances(version_dir: Path, config: ModelConfig) -> list[Model]:
    """`config.instance_count` instances of the version in `version_dir` (not warmed up).
    A backend whose package is missing fails with one line naming the extra to install."""
    backend, path = resolve(version_dir, config)
    missing = LoadError(
        f"model {config.name}: backend {backend.name} is not installed; "
        f"pip install 'edgeinfer[{backend.extra}]'"
    )
    if not backend.installed():
        raise missing
    try:
        module = importlib.import_module(backend.module)
    except ImportError as e:  # a broken or partial install
        raise missing from e
    instances: list[Model] = module.load_instances(path, config)
    if backend.kind != "tensor":
        return instances
    try:
        return [_wrap(m, version_dir, config) for m in instances]
    except BaseException:
        close_all(instances)
        raise


def _wrap(model: Model, version_dir: Path, config: ModelConfig) -> Model:
    """Inputs decoded in the server before any tensor backend runs: images, text."""
    if config.image is not None:
        from edgeinfer.runtime.images import ImageModel

        return ImageModel(model, version_dir, config.image, config.preprocess)
    if config.text is not None:
        from edgeinfer.runtime.text import TextModel

        return TextModel(model, version_dir, config.text)
    return model


def repeat(load_one: Callable[[], Model], count: int) -> list[Model]:
    """`count` instances from `load_one`; if one fails, those already loaded are closed."""
    instances: list[Model] = []
    try:
        for _ in range(count):
            instances.append(load_one())
    except BaseException:
        close_all(instances)
        raise
    return instances


def close_all(instances: list[Model]) -> None:
    for m in instances:
        m.close()


def load(version_dir: Path, config: ModelConfig) -> Model:
    """One instance of the version in `version_dir` (tools, tests)."""
    return load_instances(version_dir, replace(config, instance_count=1))[0]


def example_feeds(specs: tuple[TensorSpec, ...], batch: int = 1) -> dict[str, np.ndarray]:
    """Zero-filled inputs of the declared shapes (leading variable dim -> `batch`, others 1):
    what every backend's warm-up runs."""
    feeds = {}
    for spec in specs:
        shape = [
            batch if i == 0 and d < 0 else (d if d >= 0 else 1) for i, d in enumerate(spec.shape)
        ]
        if spec.datatype == "BYTES":
            feeds[spec.name] = np.full(shape, b"", dtype=object)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=DTYPE_TO_NUMPY[spec.datatype])
    return feeds


def warm_up(model: Model, path: Path) -> None:
    """One run on example inputs before traffic; a failure is a LoadError naming the file."""
    try:
        model.run(example_feeds(model.inputs))
    except BackendError as e:
        raise LoadError(f"{path}: warm-up run failed: {e.message}") from e

"""What the optimizer works on: a plain `.onnx` file or a repository version `REPO/MODEL/N`,
and where its result goes (a new version of the same model, or a plain file/folder)."""

from __future__ import annotations

import os
import shutil
import tempfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeinfer.config import ConfigError, ModelConfig
from edgeinfer.errors import EdgeInferError
from edgeinfer.repository.manifest import MANIFEST_NAME, add_version, version_number
from edgeinfer.types import TensorSpec

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
# Files of the source version that describe the FP32 model and must not follow the new one:
# golden outputs were recorded for FP32 and would fail the loader's tight tolerance check.
_NOT_COPIED = {"model.onnx", MANIFEST_NAME, REPORT_JSON, REPORT_MD}
_NOT_COPIED_DIRS = {"golden"}


class OptimizeError(EdgeInferError):
    """A user error (bad model, data or option): one line on stderr, exit code 2."""

    code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))  # ORT messages span lines


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@dataclass(frozen=True)
class ModelSource:
    path: Path  # the .onnx file
    config: ModelConfig
    preprocess: dict[str, Any] = field(default_factory=dict)  # config.toml [preprocess]
    version_dir: Path | None = None  # set when the source is REPO/MODEL/N

    @property
    def model_dir(self) -> Path | None:
        return self.version_dir.parent if self.version_dir else None

    def extra_files(self) -> dict[str, Path]:
        """Other files of the source version (tokenizer.json, ...) to publish beside the model."""
        if self.version_dir is None:
            return {}
        out = {}
        for p in sorted(self.version_dir.rglob("*")):
            rel = p.relative_to(self.version_dir)
            if (
                p.is_file()
                and rel.as_posix() not in _NOT_COPIED
                and not (set(rel.parts[:-1]) & _NOT_COPIED_DIRS)
            ):
                out[rel.as_posix()] = p
        return out


def read_model_config(config_path: Path, name: str) -> tuple[ModelConfig, dict[str, Any]]:
    """The model's config and its `[preprocess]` table (read here; the server ignores it)."""
    try:
        raw = tomllib.loads(config_path.read_text()) if config_path.is_file() else {}
    except tomllib.TOMLDecodeError as e:
        raise OptimizeError(f"{config_path}: not valid TOML: {e}") from e
    preprocess = raw.pop("preprocess", {})
    if not isinstance(preprocess, dict):
        raise OptimizeError(f"{config_path}: [preprocess] must be a table")
    try:
        return ModelConfig.from_dict(raw, name, str(config_path)), preprocess
    except ConfigError as e:
        raise OptimizeError(str(e)) from e


def resolve_source(arg: str | Path) -> ModelSource:
    """`model.onnx` or a repository version directory `REPO/MODEL/N`."""
    path = Path(arg)
    if path.is_dir():
        if version_number(path.name) is None or not (path / "model.onnx").is_file():
            raise OptimizeError(
                f"{path}: not a repository version (expected REPO/MODEL/N with a model.onnx)"
            )
        config, preprocess = read_model_config(path.parent / "config.toml", path.parent.name)
        source = ModelSource(path / "model.onnx", config, preprocess, version_dir=path)
    elif path.is_file():
        if path.suffix != ".onnx":
            raise OptimizeError(f"{path}: not an ONNX file (give a .onnx file or REPO/MODEL/N)")
        source = ModelSource(path, ModelConfig(name=path.stem))  # serving defaults
    else:
        raise OptimizeError(f"{path}: no such file or directory")
    check_onnx(source.path)
    return source


def check_onnx(path: Path) -> None:
    """Fail with one clear line unless `path` parses as an ONNX model with a graph."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError, onnx raises several others
        raise OptimizeError(f"{path}: not an ONNX model ({type(e).__name__})") from e
    if not model.graph.node:
        raise OptimizeError(f"{path}: not an ONNX model (no graph nodes)")


def model_io(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Declared inputs and outputs, as the runtime sees them."""
    from edgeinfer.errors import LoadError
    from edgeinfer.runtime.onnx import OnnxModel

    try:
        model = OnnxModel(new_session(path, ModelConfig(name="io").onnxruntime), path)
    except LoadError as e:  # an input type the runtime cannot serve
        raise OptimizeError(f"{path}: {e.message}") from e
    return model.inputs, model.outputs


def new_session(model: Path | bytes, opts: Any) -> Any:
    """runtime.onnx.new_session (the serving options); load failures become OptimizeError."""
    from edgeinfer.errors import LoadError
    from edgeinfer.runtime import onnx as ort_backend

    try:
        return ort_backend.new_session(model, opts)
    except LoadError as e:
        raise OptimizeError(e.message) from e


@dataclass(frozen=True)
class Target:
    """Where the result goes: `version_of` a repository model, or a plain `path`."""

    path: Path | None = None
    version_of: Path | None = None  # model dir; the next version number is used

    def describe(self) -> str:
        return f"new version of {self.version_of}" if self.version_of else str(self.path)


def choose_target(source: ModelSource, output: Path | None, tag: str) -> Target:
    """`--output` if given; else a new version (repository source) or `<stem>-<tag>/` beside
    the file. An existing non-empty output is refused so nothing is overwritten."""
    if output is None and source.model_dir is not None:
        return Target(version_of=source.model_dir)
    path = output or source.path.parent / f"{source.path.stem}-{tag}"
    if path.exists() and (path.is_file() or any(path.iterdir())):
        raise OptimizeError(f"{path}: already exists; choose another --output")
    return Target(path=path)


@contextmanager
def staging(target: Target) -> Iterator[Path]:
    """A temporary folder for all outputs, removed on exit: nothing partial is left behind."""
    parent = target.path.parent if target.path is not None else None
    if parent is not None and not parent.is_dir():
        parent = None  # created only when publishing: a failed run leaves no folders behind
    tmp = Path(tempfile.mkdtemp(prefix=".edgeinfer-optimize.", dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(target: Target, files: dict[str, Path]) -> Path:
    """Move the staged files to the target atomically. `files["model.onnx"]` is the model."""
    if target.version_of is not None:
        return add_version(target.version_of, files)
    assert target.path is not None
    target.path.parent.mkdir(parents=True, exist_ok=True)
    if target.path.suffix == ".onnx":
        # A file target: the model at the path, the reports beside it.
        stem = target.path.with_suffix("")
        moves = {target.path: files["model.onnx"]}
        for name, src in files.items():
            if name.startswith("report."):
                moves[Path(f"{stem}.{name}")] = src
        for dst, src in moves.items():
            shutil.move(src, dst)
        return target.path
    folder = target.path.parent / f".{target.path.name}.publishing"
    folder.mkdir()
    try:
        for name, src in files.items():
            dst = folder / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        if target.path.exists():
            target.path.rmdir()  # empty (checked in choose_target)
        os.rename(folder, target.path)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return target.path

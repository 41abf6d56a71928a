"""Adapters on disk: `<model>/adapters/<name>/<version>/` published like model versions.

A version directory holds one adapter file and an optional `adapter.toml`, with a manifest
written last (repository.add_version):

    adapter.gguf | adapter.onnx_adapter     the LoRA, in the base model's format
    adapter.toml                            tenants = ["acme"]   # absent or empty: everyone
                                            scale = 1.0          # GGUF only (ONNX folds it in B)
"""

from __future__ import annotations

import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from edgeinfer.errors import InvalidInput, RepositoryError
from edgeinfer.repository.manifest import MANIFEST_NAME, add_version, version_number

ADAPTERS_DIR = "adapters"
ADAPTER_TOML = "adapter.toml"
FILES = ("adapter.gguf", "adapter.onnx_adapter")


def check_name(name: str) -> str:
    if not name or "/" in name or ":" in name or name.startswith(".") or len(name) > 128:
        raise InvalidInput(
            f"adapter name {name!r} must be non-empty, without '/', ':' or a leading '.'"
        )
    return name


@dataclass(frozen=True)
class AdapterSpec:
    """Where an adapter's file is and who may use it."""

    model: str
    name: str
    file: Path
    tenants: frozenset[str] = frozenset()  # empty: every tenant
    scale: float = 1.0
    version: int = 0  # 0: registered by the API, not from the repository
    source: str = "repository"  # or "api"

    @property
    def key(self) -> str:
        """Budget, stacked-table and LLM-group key; a new version is a different key, so the
        old one drains and is freed while the new one serves."""
        return f"{self.model}:adapter:{self.name}" + (f"@{self.version}" if self.version else "")

    @property
    def kind(self) -> str:
        return "gguf" if self.file.suffix == ".gguf" else "onnx"

    def allows(self, tenant: str | None) -> bool:
        return not self.tenants or (tenant is not None and tenant in self.tenants)


def read_meta(version_dir: Path) -> tuple[frozenset[str], float]:
    path = version_dir / ADAPTER_TOML
    if not path.is_file():
        return frozenset(), 1.0
    try:
        doc = tomllib.loads(path.read_text())
        tenants = doc.get("tenants", [])
        scale = float(doc.get("scale", 1.0))
        if not isinstance(tenants, list) or not all(isinstance(t, str) for t in tenants):
            raise ValueError("'tenants' must be a list of strings")
    except (tomllib.TOMLDecodeError, ValueError, TypeError) as e:
        raise RepositoryError(f"{path}: {e}") from e
    return frozenset(tenants), scale


def adapter_file(version_dir: Path) -> Path:
    for name in FILES:
        if (version_dir / name).is_file():
            return version_dir / name
    raise RepositoryError(f"{version_dir}: no adapter file (one of {FILES})")


def spec_of(
    model: str, name: str, version_dir: Path, version: int = 0, source: str = "repository"
) -> AdapterSpec:
    tenants, scale = read_meta(version_dir)
    return AdapterSpec(model, name, adapter_file(version_dir), tenants, scale, version, source)


def scan(model_dir: Path) -> dict[str, AdapterSpec]:
    """The newest published version of every adapter of a model."""
    root = model_dir / ADAPTERS_DIR
    out: dict[str, AdapterSpec] = {}
    if not root.is_dir():
        return out
    for adir in sorted(root.iterdir()):
        if not adir.is_dir() or adir.name.startswith("."):
            continue
        versions = sorted(
            n
            for p in adir.iterdir()
            if (n := version_number(p.name)) is not None and (p / MANIFEST_NAME).is_file()
        )
        if versions:
            try:
                out[adir.name] = spec_of(
                    model_dir.name, adir.name, adir / str(versions[-1]), versions[-1]
                )
            except RepositoryError:
                continue  # a broken adapter must not hide the others; loading it says why
    return out


def add_adapter(
    model_dir: Path,
    name: str,
    adapter: Path,
    tenants: list[str] | None = None,
    scale: float = 1.0,
    version: int | None = None,
) -> Path:
    """Publish an adapter file (GGUF LoRA or .onnx_adapter) as a new adapter version."""
    check_name(name)
    suffix = ".gguf" if adapter.suffix == ".gguf" else ".onnx_adapter"
    if adapter.suffix not in (".gguf", ".onnx_adapter"):
        raise InvalidInput(
            f"{adapter}: expected a .gguf LoRA or an .onnx_adapter "
            "(edgeinfer adapters convert makes them from PEFT)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        meta = Path(tmp) / ADAPTER_TOML
        quoted = ", ".join(f'"{t}"' for t in tenants or [])
        meta.write_text(f"tenants = [{quoted}]\nscale = {float(scale)}\n")
        return add_version(
            model_dir / ADAPTERS_DIR / name,
            {"adapter" + suffix: adapter, ADAPTER_TOML: meta},
            version,
        )

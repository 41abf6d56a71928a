"""Scanning a repository: which models and versions exist and which the policy selects."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeinfer.config import ConfigError, ModelConfig
from edgeinfer.errors import ModelNotFound, RepositoryError
from edgeinfer.repository.manifest import MANIFEST_NAME, version_number

CONFIG_NAME = "config.toml"


@dataclass(frozen=True)
class VersionEntry:
    model: str
    version: int
    path: Path


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    config: ModelConfig
    versions: tuple[VersionEntry, ...]  # every published version on disk, ascending

    def selected(self) -> list[VersionEntry]:
        """The versions the model's version policy serves."""
        chosen = set(self.config.version_policy.select([v.version for v in self.versions]))
        return [v for v in self.versions if v.version in chosen]


class Repository:
    def __init__(self, root: Path, overrides: dict[str, dict[str, Any]] | None = None) -> None:
        """`overrides` maps a model name to config keys that replace its config.toml's."""
        self.root = Path(root)
        self.overrides = overrides or {}
        if not self.root.is_dir():
            raise RepositoryError(f"model repository {self.root} does not exist or is not a folder")

    def model_names(self) -> list[str]:
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / CONFIG_NAME).exists()
        )

    def model(self, name: str) -> ModelEntry:
        path = self.root / name
        if not name or "/" in name or name.startswith(".") or not (path / CONFIG_NAME).exists():
            raise ModelNotFound(f"model '{name}' is not in the repository")
        try:
            config = ModelConfig.from_toml(path / CONFIG_NAME, name, self.overrides.get(name))
        except ConfigError as e:
            raise RepositoryError(str(e)) from e
        # A version is published once its manifest exists (written last): half-copied
        # versions are invisible.
        numbered = ((version_number(p.name), p) for p in path.iterdir())
        versions = tuple(
            VersionEntry(name, n, p)
            for n, p in sorted((n, p) for n, p in numbered if n)
            if p.is_dir() and (p / MANIFEST_NAME).is_file()
        )
        return ModelEntry(name=name, path=path, config=config, versions=versions)

    def models(self) -> list[ModelEntry]:
        return [self.model(n) for n in self.model_names()]

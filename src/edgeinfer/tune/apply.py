"""Applying a tuning result: the winner's settings into config.toml (comments kept) and, when
the model file changed (INT8), a new version beside the others, both written atomically, so a
server polling the repository swaps it in through the verified hot-reload path."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import tomlkit

from edgeinfer.repository.manifest import add_version, version_files


def _set(table: Any, overrides: dict[str, Any]) -> None:
    for key, value in overrides.items():
        if value is None:
            if key in table:
                del table[key]
        elif isinstance(value, dict):
            if key not in table:
                table[key] = tomlkit.table()
            _set(table[key], value)
        else:
            table[key] = value


def config_text(current: str, overrides: dict[str, Any]) -> str:
    """config.toml text with `overrides` set (None removes a key), comments and order kept."""
    doc = tomlkit.parse(current)
    _set(doc, overrides)
    return tomlkit.dumps(doc)


def apply(model_dir: Path, overrides: dict[str, Any], variant: Path | None) -> Path | None:
    """Write the settings; publish `variant` (a folder with the new model) as a new version.
    Returns the new version's folder, if any."""
    path = model_dir / "config.toml"
    text = config_text(path.read_text(), overrides)
    tmp = path.with_name(f".config.toml.{os.getpid()}")
    tmp.write_text(text)
    # Settings first: the server applies them when it loads the new version, which appears
    # (atomically, manifest last) only after them.
    os.replace(tmp, path)
    if variant is None:
        return None
    return add_version(model_dir, version_files(variant))

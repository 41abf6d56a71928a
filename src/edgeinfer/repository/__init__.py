"""The model repository on disk: `<root>/<model>/config.toml`, `<root>/<model>/<N>/...`."""

from edgeinfer.repository.layout import ModelEntry, Repository, VersionEntry
from edgeinfer.repository.manifest import (
    MANIFEST_NAME,
    add_version,
    verify_manifest,
    version_number,
    write_manifest,
)

__all__ = [
    "MANIFEST_NAME",
    "ModelEntry",
    "Repository",
    "VersionEntry",
    "add_version",
    "verify_manifest",
    "version_number",
    "write_manifest",
]

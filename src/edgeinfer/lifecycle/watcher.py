"""--model-control poll: reconcile a model whenever its folder changes on disk.

Writers copy a version's files first and its manifest last (`edgeinfer models add` renames a
finished temp folder into place), and versions without a manifest are invisible, so a reload
triggered half-way through a copy simply finds nothing new yet.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from edgeinfer.errors import EdgeInferError
from edgeinfer.repository.state import STATE_NAME

if TYPE_CHECKING:
    from edgeinfer.lifecycle.engine import Engine

log = logging.getLogger("edgeinfer.watcher")


def changed_models(root: Path, paths: set[str]) -> set[str]:
    """Model names whose folders saw changes that matter (not our own state file writes)."""
    names = set()
    for p in paths:
        try:
            rel = Path(p).relative_to(root)
        except ValueError:
            continue
        if not rel.parts or rel.parts[0].startswith("."):
            continue
        if rel.name == STATE_NAME or rel.name.startswith(".state."):
            continue
        names.add(rel.parts[0])
    return names


async def watch_repository(engine: Engine, debounce_ms: int = 300) -> None:
    from watchfiles import awatch

    root = engine.repository.root.resolve()
    async for changes in awatch(root, debounce=debounce_ms, step=50, recursive=True):
        names = changed_models(root, {p for _, p in changes})
        on_disk = set(engine.repository.model_names())
        for name in sorted(names):
            try:
                if name in on_disk:
                    await engine.load(name, _internal=True, force=False)
                elif engine.model_ready(name):
                    await engine.unload(name)
            except EdgeInferError as e:
                log.warning("reload of %s after a repository change failed: %s", name, e.message)
            except Exception:  # keep watching whatever one reload did
                log.exception("reload of %s after a repository change crashed", name)

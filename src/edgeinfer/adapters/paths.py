"""Where the load API may read adapters from: the base model's own `adapters/` folder and the
directories given with --adapter-dir. Anything else is refused before it is opened, so the
API can neither read arbitrary files nor tell whether they exist."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from edgeinfer.auth import PermissionDenied
from edgeinfer.errors import InvalidInput

MAX_PATH_CHARS = 4096  # Linux's PATH_MAX


def confine(raw: str, roots: Sequence[Path]) -> Path:
    """`raw` with symlinks resolved, if it lies inside one of `roots` and exists."""
    if len(raw) > MAX_PATH_CHARS:
        raise InvalidInput(
            f"lora_path is {len(raw)} characters long; the limit is {MAX_PATH_CHARS}"
        )
    if "\0" in raw or not os.path.isabs(raw):
        raise InvalidInput(f"lora_path {raw[:200]!r} must be an absolute path")
    try:  # resolve symlinks before checking: a link inside a root may point anywhere
        path = Path(raw).resolve()
    except (OSError, RuntimeError) as e:
        raise InvalidInput(
            f"lora_path {raw[:200]!r}: {getattr(e, 'strerror', None) or e}"
        ) from None
    allowed = [r for r in (_resolved(root) for root in roots) if r is not None]
    if not any(path.is_relative_to(r) for r in allowed):
        raise PermissionDenied(
            f"lora_path {raw[:200]!r} is outside the directories adapters may "
            "be loaded from (the model's adapters/ folder and --adapter-dir)"
        )
    try:
        path.stat()
    except OSError as e:
        raise InvalidInput(f"lora_path {raw[:200]!r}: {e.strerror}") from None
    return path


def _resolved(root: Path) -> Path | None:
    try:
        return root.resolve(strict=True)
    except (OSError, RuntimeError):
        return None  # a missing root allows nothing

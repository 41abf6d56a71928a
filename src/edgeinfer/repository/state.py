"""A model's lifecycle state on disk (`<model>/state.json`): which version is live, the canary,
versions rolled back from, and the history. Written atomically so a crash leaves the old or the
new file, never a torn one; a restarted server comes back the same."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from edgeinfer.errors import RepositoryError

STATE_NAME = "state.json"
_HISTORY = 50


@dataclass(frozen=True)
class Canary:
    version: int
    weight: float


@dataclass(frozen=True)
class ModelState:
    live: int | None = None  # None: the newest eligible version
    canary: Canary | None = None
    blocked: tuple[int, ...] = ()  # rolled back from: never promoted again by a reload
    history: tuple[dict[str, Any], ...] = ()

    def event(self, kind: str, **details: Any) -> ModelState:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "event": kind,
            **details,
        }
        return replace(self, history=(*self.history, entry)[-_HISTORY:])

    def previous_live(self) -> int | None:
        """The version that was live before the current one, from the history."""
        for entry in reversed(self.history):
            if entry.get("event") in ("promote", "rollback") and entry.get("from") is not None:
                return int(entry["from"])
        return None

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["blocked"] = list(self.blocked)
        doc["history"] = list(self.history)
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> ModelState:
        """Raises ValueError unless `doc` is a state this module could have written."""
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        live, canary = doc.get("live"), doc.get("canary")
        blocked, history = doc.get("blocked", []), doc.get("history", [])
        if live is not None and not _is_version(live):
            raise ValueError(f"'live' must be a version number or null, not {live!r}")
        if canary is not None and not (
            isinstance(canary, dict)
            and _is_version(canary.get("version"))
            and type(canary.get("weight")) in (int, float)
            and 0 <= canary["weight"] <= 1
        ):
            raise ValueError('\'canary\' must be null or {"version": N, "weight": 0..1}')
        if not isinstance(blocked, list) or not all(_is_version(v) for v in blocked):
            raise ValueError("'blocked' must be a list of version numbers")
        if not isinstance(history, list) or not all(
            isinstance(e, dict) and (e.get("from") is None or _is_version(e["from"]))
            for e in history
        ):
            raise ValueError("'history' must be a list of objects whose 'from' is a version")
        return cls(
            live=live,
            canary=Canary(canary["version"], float(canary["weight"])) if canary else None,
            blocked=tuple(blocked),
            history=tuple(history),
        )


def _is_version(v: Any) -> bool:
    return type(v) is int and v > 0


def load_state(model_dir: Path) -> ModelState:
    path = model_dir / STATE_NAME
    try:
        return ModelState.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return ModelState()
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise RepositoryError(f"{path}: malformed state file ({e}); delete it to reset") from e


def save_state(model_dir: Path, state: ModelState) -> None:
    fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=".state.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(state.to_json(), f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, model_dir / STATE_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(model_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


__all__ = ["STATE_NAME", "Canary", "ModelState", "load_state", "save_state"]

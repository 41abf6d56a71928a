"""The lifecycle actions (rollback, canary, promote, abort) in one place, for the HTTP routes and
gRPC's RepositoryModelLoad parameters alike (the CLI goes through HTTP)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgeinfer.errors import InvalidInput

if TYPE_CHECKING:
    from edgeinfer.lifecycle.interfaces import EngineControl

ACTIONS = ("rollback", "canary", "promote", "abort")
DEFAULT_CANARY_WEIGHT = 0.1


async def run_action(
    engine: EngineControl,
    model: str,
    action: str,
    version: int | None = None,
    weight: float | None = None,
) -> None:
    """Run one action; `version` for rollback (None: the previous live one) and canary (required),
    `weight` (0..1) for canary. An unknown action or a missing version is InvalidInput."""
    if action == "rollback":
        await engine.rollback(model, version)
    elif action == "canary":
        if version is None:
            raise InvalidInput("canary needs a version (and a weight in 0..1)")
        await engine.set_canary(model, version, DEFAULT_CANARY_WEIGHT if weight is None else weight)
    elif action == "promote":
        await engine.promote(model)
    elif action == "abort":
        await engine.set_canary(model, None)
    else:
        raise InvalidInput(f"unknown lifecycle action {action!r}; use {', '.join(ACTIONS)}")

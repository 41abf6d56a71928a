"""Drive one model toward its desired state through the engine's own lifecycle calls.

The repository's rule is "the newest version on disk goes live once verified"; under a fleet the
registry decides instead. So the model's version policy is pinned to the desired live version
(`Engine.pin_version`, the same mechanism as `--set MODEL.version_policy.specific=[N]`): a canary version fetched next
to it is then loaded as a canary, never promoted because it is newest. Everything else goes
through `Engine.load / rollback / set_canary / promote`: verified load, atomic swap, drain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgeinfer.errors import EdgeInferError, ModelNotReady
from edgeinfer.registry.desired import DesiredModel

if TYPE_CHECKING:
    from edgeinfer.lifecycle import Engine
    from edgeinfer.lifecycle.status import LifecycleStatus


def _status(engine: Engine, model: str) -> LifecycleStatus | None:
    try:
        st = engine.lifecycle_status(model)
    except ModelNotReady:
        return None
    return st if st.live is not None else None


async def converge(engine: Engine, model: str, want: DesiredModel) -> None:
    """One pass; raises EdgeInferError when a step fails (what was live keeps serving)."""
    st = _status(engine, model)
    if st is None:
        await engine.load(model)
        st = engine.lifecycle_status(model)
    if st.live != want.version:
        if st.canary is not None and st.canary.version == want.version:
            await engine.promote(model)
        else:
            await engine.load(model)  # a version never live here is promoted once verified
            if engine.lifecycle_status(model).live != want.version:
                await engine.rollback(model, want.version)  # back (or forward) to one seen before
    target = want.active_canary
    current = engine.lifecycle_status(model).canary
    if target is None:
        if current is not None:
            await engine.set_canary(model, None)
    elif current is None or (current.version, current.weight) != (target.version, target.weight):
        await engine.set_canary(model, target.version, target.weight)


def observe(engine: Engine, model: str) -> dict[str, Any]:
    """What runs for `model` here, with per-version request and backend-error counts (the
    canary-halting rule adds these up across the group)."""
    try:
        st = engine.lifecycle_status(model)
    except EdgeInferError as e:
        return {"live": None, "canary": None, "ready": False, "versions": {}, "state": e.message}
    versions = {}
    for v in (str(n) for n in st.resident):
        try:
            stats = engine.handle(model, v).stats
        except EdgeInferError:
            continue
        versions[v] = {
            "requests": stats.success.count + stats.fail.count,
            "errors": stats.failures.get("BACKEND", 0),
        }
    return {
        "live": st.to_json()["live"],
        "canary": st.to_json()["canary"],
        "ready": engine.model_ready(model),
        "versions": versions,
    }

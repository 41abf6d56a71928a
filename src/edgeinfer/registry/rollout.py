"""The canary-halting rule, the same on every device (no leader).

Every device in a group reads the group's device statuses, adds up the requests and backend
errors each reporting device counted for the canary version, and if the error rate is above the
model's `max_error_rate` (with at least `min_requests` requests) writes `halted` into the
model's desired state with a compare-and-swap on the revision it read. The rule is a pure
function of shared data, so devices that see the same statuses agree; the CAS makes the write
happen once (the others' comparisons fail and they just see the halted state arrive by watch),
and it can never undo a newer `fleet set`, which changed the revision.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgeinfer.registry.desired import DesiredModel


def canary_counts(
    statuses: Mapping[str, Mapping[str, Any]], group: str, model: str, version: int
) -> tuple[int, int, int]:
    """(requests, backend errors, reporting devices) for `model` v`version` in `group`."""
    requests = errors = devices = 0
    for doc in statuses.values():
        if doc.get("group") != group:
            continue
        counts = (doc.get("models", {}).get(model, {}).get("versions", {})).get(str(version))
        if not isinstance(counts, dict):
            continue
        requests += int(counts.get("requests", 0))
        errors += int(counts.get("errors", 0))
        devices += 1
    return requests, errors, devices


def halt_reason(
    want: DesiredModel, statuses: Mapping[str, Mapping[str, Any]], group: str, model: str
) -> str | None:
    """Why the canary must stop now, or None."""
    canary = want.active_canary
    if canary is None:
        return None
    n, errors, devices = canary_counts(statuses, group, model, canary.version)
    if n < want.min_requests or errors / n <= want.max_error_rate:
        return None
    return (
        f"canary v{canary.version} error rate {errors}/{n} = {errors / n:.1%} over "
        f"{want.max_error_rate:.1%} on {devices} device(s)"
    )

"""How hard the fuzz tests try: bounded for CI; `FUZZ_LONG=1` runs 50 times as many examples
and a fresh random seed each time (see docs/security.md)."""

from __future__ import annotations

import datetime
import os

from hypothesis import HealthCheck, settings

LONG = os.environ.get("FUZZ_LONG") == "1"


def fuzz(examples: int, deadline_s: float = 5.0) -> settings:
    """Hypothesis settings: `examples` in CI. The deadline turns a pathologically slow input
    into a failure instead of a hang (pytest-timeout is the backstop for a true hang)."""
    return settings(
        max_examples=examples * 50 if LONG else examples,
        deadline=datetime.timedelta(seconds=deadline_s),
        derandomize=not LONG,  # CI: the same examples every run, so a failure is reproducible
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )

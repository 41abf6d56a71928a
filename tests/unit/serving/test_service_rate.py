"""The measured service rate that admission, Retry-After and the run-time deadline check use."""

from __future__ import annotations

import pytest

from edgeinfer.serving.scheduler import ServiceRate


def test_no_prediction_before_three_runs() -> None:
    rate = ServiceRate()
    for _ in range(2):
        rate.add(8, 0.1)
        assert rate.seconds_for(8) is None and rate.bound(8, 1.3, 4.0) is None
    rate.add(8, 0.1)
    assert rate.seconds_for(8) == pytest.approx(0.1)


def test_steady_runs_keep_the_floor_margin() -> None:
    rate = ServiceRate()
    for _ in range(20):
        rate.add(8, 0.1)
    assert rate.spread == pytest.approx(0.0, abs=1e-9)
    assert rate.bound(8, 1.3, 4.0) == pytest.approx(0.13)
    assert rate.bound(16, 1.1, 2.0) == pytest.approx(0.22)


def test_noisy_runs_widen_the_margin_to_cover_the_slow_ones_then_it_shrinks_again() -> None:
    rate = ServiceRate()
    for _ in range(10):
        rate.add(8, 0.1)
    # A shared host: every other run takes 60 % longer. A fixed 1.3x margin would promise
    # replies that the slow runs deliver late.
    for i in range(40):
        rate.add(8, 0.16 if i % 2 else 0.1)
    assert rate.bound(8, 1.3, 4.0) >= 0.16
    assert rate.bound(8, 1.3, 4.0) > 1.3 * rate.seconds_for(8)
    assert rate.bound(8, 1.1, 2.0) < rate.bound(8, 1.3, 4.0)
    for _ in range(40):
        rate.add(8, 0.1)
    assert rate.bound(8, 1.3, 4.0) == pytest.approx(1.3 * rate.seconds_for(8))


def test_empty_runs_are_ignored() -> None:
    """A run of 0 rows once divided by its predicted time of 0 s and killed the worker."""
    rate = ServiceRate()
    rate.add(0, 0.01)  # before any prediction
    for _ in range(5):
        rate.add(8, 0.1)
    before = (rate.rows_per_s, rate.samples, rate.spread)
    rate.add(0, 0.01)
    rate.add(0, 0.0)
    rate.add(-1, 0.01)
    assert (rate.rows_per_s, rate.samples, rate.spread) == before
    assert rate.seconds_for(8) == pytest.approx(0.1)

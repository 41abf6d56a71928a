"""The lifecycle's decisions on plain values: which version goes live, which stay resident."""

from __future__ import annotations

from dataclasses import replace

from edgeinfer.config import CanaryOptions, LifecycleOptions, ModelConfig, VersionPolicy
from edgeinfer.lifecycle.decide import choose_live, plan
from edgeinfer.repository.state import Canary, ModelState

CONFIG = ModelConfig(name="m")


def promoted(*pairs: tuple[int | None, int]) -> ModelState:
    state = ModelState(live=pairs[-1][1])
    for old, new in pairs:
        state = state.event("promote", **{"from": old, "to": new})
    return state


def test_a_new_version_goes_live_and_the_old_one_stays_for_rollback() -> None:
    p = plan(CONFIG, promoted((None, 1)), on_disk=[1, 2], live_now=1)
    assert p.target == 2 and p.wanted == {1, 2}


def test_the_live_version_stays_when_nothing_new_arrived() -> None:
    p = plan(CONFIG, promoted((None, 1), (1, 2)), on_disk=[1, 2], live_now=2)
    assert p.target == 2 and p.wanted == {1, 2}


def test_a_rolled_back_version_is_never_promoted_again_by_a_reload() -> None:
    state = promoted((None, 1), (1, 2))
    state = state.event("rollback", **{"from": 2, "to": 1})
    state = replace(state, live=1, blocked=(2,))
    p = plan(CONFIG, state, on_disk=[1, 2], live_now=1)
    assert p.target == 1 and 2 not in p.wanted


def test_keep_previous_bounds_the_resident_versions() -> None:
    config = ModelConfig(name="m", lifecycle=LifecycleOptions(keep_previous=0))
    p = plan(config, promoted((None, 1), (1, 2)), on_disk=[1, 2, 3], live_now=2)
    assert p.target == 3 and p.wanted == {3}


def test_a_canary_version_is_loaded_but_does_not_go_live() -> None:
    config = ModelConfig(
        name="m",
        canary=CanaryOptions(version=3, weight=0.1),
        version_policy=VersionPolicy(kind="all"),
    )
    p = plan(config, promoted((None, 2)), on_disk=[1, 2, 3], live_now=2)
    assert p.canary == Canary(3, 0.1) and p.target == 2 and 3 in p.wanted


def test_the_version_policy_limits_what_is_selected() -> None:
    config = ModelConfig(name="m", version_policy=VersionPolicy(kind="specific", specific=(1,)))
    p = plan(config, ModelState(), on_disk=[1, 2, 3], live_now=None)
    assert p.selected == (1,) and p.target == 1 and p.wanted == {1}


def test_nothing_on_disk_selects_nothing() -> None:
    p = plan(CONFIG, ModelState(), on_disk=[], live_now=None)
    assert p.selected == () and p.target is None and not p.wanted


def test_a_failed_new_version_leaves_the_live_one_serving() -> None:
    assert choose_live(2, loaded={1: 0}, live_now=1, resident={1: 0}) == 1
    assert choose_live(2, loaded={2: 0}, live_now=1, resident={1: 0}) == 2
    assert choose_live(3, loaded={1: 0, 2: 0}, live_now=None, resident={}) == 2
    assert choose_live(3, loaded={}, live_now=None, resident={}) is None

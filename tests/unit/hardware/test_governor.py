"""The governor with a fake clock and fed readings: nothing sleeps, no real sensors."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from edgeinfer.config import ConfigError
from edgeinfer.hardware import (
    Governor,
    GovernorConfig,
    Readings,
    read_readings,
    scaled_batch,
    scaled_concurrency,
)
from tests.unit.hardware import trees

GiB = 1 << 30


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Feed:
    """A reader returning whatever the test set last; counts the reads."""

    def __init__(self) -> None:
        self.readings = Readings()
        self.reads = 0

    def __call__(self) -> Readings:
        self.reads += 1
        return self.readings


def setup(**config: float) -> tuple[Governor, Clock, Feed]:
    clock, feed = Clock(), Feed()
    return Governor(feed, clock, GovernorConfig(**config)), clock, feed


def step(gov: Governor, clock: Clock, feed: Feed, **readings: float) -> tuple[float, str]:
    clock.now += gov.config.min_interval_s
    feed.readings = Readings(**readings)  # type: ignore[arg-type]
    return gov.capacity()


def test_unknown_readings_mean_full_capacity() -> None:
    gov, clock, feed = setup()
    assert gov.capacity() == (1.0, "")
    assert step(gov, clock, feed, memory_used_bytes=GiB) == (1.0, "")  # no limit known


def test_thermal_back_off_is_linear_from_soft_to_hard_then_floors() -> None:
    gov, clock, feed = setup()
    assert step(gov, clock, feed, temp_c=60.0) == (1.0, "")
    assert step(gov, clock, feed, temp_c=70.0) == (1.0, "")  # at the soft limit: still full
    factor, reason = step(gov, clock, feed, temp_c=77.5)  # halfway: 1 - 0.5 * 0.75
    assert (factor, reason) == (pytest.approx(0.625), "thermal")
    assert step(gov, clock, feed, temp_c=81.25)[0] == pytest.approx(0.4375)
    assert step(gov, clock, feed, temp_c=85.0) == (pytest.approx(0.25), "thermal")
    assert step(gov, clock, feed, temp_c=99.0) == (pytest.approx(0.25), "thermal")


def test_recovery_waits_for_the_hysteresis() -> None:
    gov, clock, feed = setup()
    step(gov, clock, feed, temp_c=90.0)
    # The floor was set by the hard limit (85): it holds until the reading is below 82.
    assert step(gov, clock, feed, temp_c=84.0)[0] == pytest.approx(0.25)
    assert step(gov, clock, feed, temp_c=82.5)[0] == pytest.approx(0.25)
    assert step(gov, clock, feed, temp_c=81.25)[0] == pytest.approx(0.4375)
    assert step(gov, clock, feed, temp_c=79.0)[0] == pytest.approx(0.4375)  # held again
    assert step(gov, clock, feed, temp_c=77.5)[0] == pytest.approx(0.625)
    assert step(gov, clock, feed, temp_c=60.0) == (1.0, "")
    # Heating up again backs off at once: no hysteresis on the way down.
    assert step(gov, clock, feed, temp_c=77.5)[0] == pytest.approx(0.625)


def test_no_flapping_when_the_temperature_hovers_at_the_soft_limit() -> None:
    gov, clock, feed = setup()
    factors = [step(gov, clock, feed, temp_c=70.0 + (0.5 if i % 2 == 0 else -0.5))[0]
               for i in range(20)]  # fmt: skip
    assert factors[0] < 1.0
    assert len(set(factors)) == 1  # steady, not alternating every step
    assert step(gov, clock, feed, temp_c=68.0)[0] < 1.0  # within the 3 °C hysteresis
    assert step(gov, clock, feed, temp_c=67.0) == (1.0, "")  # cooled enough: full again


def test_without_hysteresis_the_same_sequence_flaps() -> None:
    # What the hysteresis prevents: shows the test above is not passing by accident.
    gov, clock, feed = setup(hysteresis_c=0.0)
    factors = [step(gov, clock, feed, temp_c=70.0 + (0.5 if i % 2 == 0 else -0.5))[0]
               for i in range(6)]  # fmt: skip
    assert factors == [pytest.approx(0.975), 1.0] * 3


def test_memory_back_off_names_its_reason() -> None:
    gov, clock, feed = setup()
    limit = 10 * GiB
    assert step(gov, clock, feed, memory_used_bytes=8 * GiB, memory_limit_bytes=limit) == (1.0, "")
    factor, reason = step(gov, clock, feed, memory_used_bytes=9 * GiB, memory_limit_bytes=limit)
    assert (factor, reason) == (pytest.approx(0.625), "memory")  # 0.90: halfway 0.85 -> 0.95
    # 0.88 is within 0.03 of 0.90: held; 0.86 is not: rises.
    held = step(gov, clock, feed, memory_used_bytes=int(8.8 * GiB), memory_limit_bytes=limit)
    assert held == (pytest.approx(0.625), "memory")
    rose = step(gov, clock, feed, memory_used_bytes=int(8.6 * GiB), memory_limit_bytes=limit)
    assert rose == (pytest.approx(0.925), "memory")
    assert step(gov, clock, feed, memory_used_bytes=GiB, memory_limit_bytes=limit) == (1.0, "")


def test_the_lower_factor_wins() -> None:
    gov, clock, feed = setup()
    both = {"memory_used_bytes": 9 * GiB, "memory_limit_bytes": 10 * GiB}
    assert step(gov, clock, feed, temp_c=80.0, **both) == (pytest.approx(0.5), "thermal")
    assert step(gov, clock, feed, temp_c=78.0, **both) == (pytest.approx(0.5), "thermal")  # held
    assert step(gov, clock, feed, temp_c=60.0, **both) == (pytest.approx(0.625), "memory")


def test_sensor_disappearing_releases_the_back_off() -> None:
    gov, clock, feed = setup()
    step(gov, clock, feed, temp_c=90.0)
    assert step(gov, clock, feed) == (1.0, "")


def test_reads_at_most_every_min_interval() -> None:
    clock, feed = Clock(), Feed()
    gov = Governor(feed, clock, GovernorConfig(min_interval_s=1.0))
    feed.readings = Readings(temp_c=90.0)
    assert gov.capacity()[0] == pytest.approx(0.25) and feed.reads == 1
    feed.readings = Readings(temp_c=50.0)
    clock.now += 0.5
    assert gov.capacity()[0] == pytest.approx(0.25)  # cached
    gov.snapshot()
    assert feed.reads == 1
    clock.now += 0.5
    assert gov.capacity() == (1.0, "") and feed.reads == 2
    feed.readings = Readings(temp_c=90.0)
    assert gov.refresh()[0] == pytest.approx(0.25) and feed.reads == 3  # forced


def test_snapshot_has_the_last_readings() -> None:
    gov, clock, feed = setup()
    feed.readings = Readings(temp_c=80.0, freq_cur_hz=1.5e9, freq_max_hz=2.4e9,
                             memory_used_bytes=GiB, memory_limit_bytes=4 * GiB, throttled=False)  # fmt: skip
    snap = gov.snapshot()
    assert (snap.temp_c, snap.freq_cur_hz, snap.freq_max_hz) == (80.0, 1.5e9, 2.4e9)
    assert (snap.memory_used_bytes, snap.memory_limit_bytes) == (GiB, 4 * GiB)
    assert (snap.factor, snap.reason, snap.read_at) == (pytest.approx(0.5), "thermal", clock.now)


def test_governor_over_a_fake_pi_tree(tmp_path: Path) -> None:
    cool = Governor(functools.partial(read_readings, trees.raspberry_pi(tmp_path / "a")))
    assert cool.capacity() == (1.0, "")
    assert cool.snapshot().temp_c == pytest.approx(61.234)
    hot = Governor(functools.partial(read_readings, trees.raspberry_pi(tmp_path / "b", 81250)))
    assert hot.capacity() == (pytest.approx(0.4375), "thermal")


@pytest.mark.parametrize("bad", [
    {"temp_soft_c": 90.0}, {"floor": 0.0}, {"floor": 1.5}, {"memory_soft_frac": 0.99},
    {"memory_hard_frac": 1.2}, {"hysteresis_c": -1.0}, {"min_interval_s": -0.1},
])  # fmt: skip
def test_config_is_validated(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        GovernorConfig(**bad)


def test_scaled_batch_and_concurrency() -> None:
    assert [scaled_batch(8, f) for f in (1.0, 0.625, 0.25, 0.1)] == [8, 5, 2, 1]
    assert scaled_batch(0, 0.5) == 1 and scaled_batch(1, 0.25) == 1
    assert scaled_batch(8, 1.5) == 8
    assert [scaled_concurrency(4, f) for f in (1.0, 0.5, 0.25)] == [4, 2, 1]
    assert scaled_concurrency(3, 0.3) == 1

"""The batch queue with a fake clock: every time is given, nothing sleeps."""

from __future__ import annotations

import pytest

from edgeinfer.errors import InvalidInput, QueueFull
from edgeinfer.serving.batcher import BatchPolicy, BatchQueue, Entry


def entry(batch: int = 1, sig: str = "a", priority: int = 0, timeout_us: int = 0,
          name: str = "") -> Entry:  # fmt: skip
    return Entry(batch, sig, 0.0, priority, timeout_us, payload=name)


def names(entries: list[Entry]) -> list[str]:
    return [e.payload for e in entries]


def test_no_delay_sends_what_is_queued_at_once() -> None:
    q = BatchQueue(BatchPolicy(max_batch_size=8))
    for i in range(3):
        q.add(entry(name=f"r{i}"), now=0.0)
    d = q.take(now=0.0)
    assert names(d.batch) == ["r0", "r1", "r2"]
    assert len(q) == 0 and q.take(1.0).batch == []


def test_batch_is_capped_at_max_batch_size_in_rows() -> None:
    q = BatchQueue(BatchPolicy(max_batch_size=4))
    for i, rows in enumerate((2, 1, 2, 1)):
        q.add(entry(rows, name=f"r{i}"), 0.0)
    assert names(q.take(0.0).batch) == ["r0", "r1", "r3"]  # r2 would make 5 rows
    assert names(q.take(0.0).batch) == ["r2"]


def test_max_queue_delay_waits_then_sends_the_largest_batch() -> None:
    q = BatchQueue(BatchPolicy(max_batch_size=8, max_queue_delay_us=1000))
    q.add(entry(name="r0"), 10.0)
    d = q.take(10.0)
    assert d.batch == [] and d.wake_at == pytest.approx(10.001)
    q.add(entry(name="r1"), 10.0005)
    assert q.take(10.0009).batch == []
    assert names(q.take(10.001).batch) == ["r0", "r1"]


def test_full_batch_goes_before_the_delay() -> None:
    q = BatchQueue(BatchPolicy(max_batch_size=2, max_queue_delay_us=10_000_000))
    q.add(entry(name="r0"), 0.0)
    q.add(entry(name="r1"), 0.0)
    assert names(q.take(0.0).batch) == ["r0", "r1"]


def test_preferred_batch_size_is_cut_from_the_front() -> None:
    q = BatchQueue(BatchPolicy(max_batch_size=8, preferred_batch_sizes=(2, 4),
                               max_queue_delay_us=5000))  # fmt: skip
    for i in range(5):
        q.add(entry(name=f"r{i}"), 0.0)
    assert names(q.take(0.0).batch) == ["r0", "r1", "r2", "r3"]
    d = q.take(0.0)  # one left: no preferred size, waits for the delay
    assert d.batch == [] and d.wake_at == pytest.approx(0.005)
    assert names(q.take(0.005).batch) == ["r4"]


def test_only_compatible_shapes_share_a_batch() -> None:
    q = BatchQueue(BatchPolicy(max_batch_size=8))
    q.add(entry(sig="a", name="a0"), 0.0)
    q.add(entry(sig="b", name="b0"), 0.0)
    q.add(entry(sig="a", name="a1"), 0.0)
    assert names(q.take(0.0).batch) == ["a0", "a1"]
    assert names(q.take(0.0).batch) == ["b0"]


def test_priorities_order_batches_and_fill_them() -> None:
    q = BatchQueue(BatchPolicy(max_batch_size=2, priority_levels=3, default_priority_level=2))
    q.add(entry(priority=3, name="low"), 0.0)
    q.add(entry(name="default"), 0.1)
    q.add(entry(priority=1, name="high"), 0.2)
    assert names(q.take(1.0).batch) == ["high", "default"]
    assert names(q.take(1.0).batch) == ["low"]


def test_bad_priority_is_invalid_input() -> None:
    q = BatchQueue(BatchPolicy(priority_levels=2))
    with pytest.raises(InvalidInput, match=r"priority 3 is outside 1\.\.2"):
        q.add(entry(priority=3), 0.0)


def test_queue_bound_rejects_at_once() -> None:
    q = BatchQueue(BatchPolicy(max_batch_size=1, max_queue_size=2))
    q.add(entry(), 0.0)
    q.add(entry(), 0.0)
    with pytest.raises(QueueFull, match="2 requests waiting"):
        q.add(entry(), 0.0)
    q.take(0.0)
    q.add(entry(), 0.0)  # room again
    assert len(q) == 2


def test_timeout_rejects_expired_requests_without_running_them() -> None:
    q = BatchQueue(BatchPolicy(max_batch_size=1, max_queue_delay_us=0))
    q.add(entry(name="busy"), 0.0)
    q.add(entry(timeout_us=1000, name="impatient"), 0.0)
    q.add(entry(name="patient"), 0.0)
    assert names(q.take(0.0).batch) == ["busy"]
    d = q.take(0.002)
    assert names(d.expired) == ["impatient"]
    assert names(d.batch) == ["patient"]
    assert len(q) == 0


def test_default_timeout_applies_and_wake_at_tracks_deadlines() -> None:
    q = BatchQueue(BatchPolicy(max_batch_size=4, max_queue_delay_us=10_000,
                               default_timeout_us=3000))  # fmt: skip
    q.add(entry(name="r0"), 0.0)
    d = q.take(0.0)
    assert d.batch == [] and d.wake_at == pytest.approx(0.003)
    assert names(q.take(0.003).expired) == ["r0"]


def test_a_request_that_could_only_finish_late_expires_before_it_runs() -> None:
    # The next run is expected to take 50 ms: a request with 30 ms left would be answered after
    # its deadline, so it is refused now; one with 80 ms left runs.
    q = BatchQueue(BatchPolicy(max_batch_size=4))
    q.add(entry(timeout_us=30_000, name="short"), 0.0)
    q.add(entry(timeout_us=80_000, name="long"), 0.0)
    d = q.take(0.0, horizon=0.05)
    assert names(d.expired) == ["short"] and names(d.batch) == ["long"]


def test_wake_at_comes_early_by_the_horizon() -> None:
    q = BatchQueue(BatchPolicy(max_batch_size=4, max_queue_delay_us=100_000))
    q.add(entry(timeout_us=60_000, name="r0"), 0.0)
    d = q.take(0.0, horizon=0.02)
    assert d.batch == [] and d.wake_at == pytest.approx(0.04)
    assert names(q.take(0.04, horizon=0.02).expired) == ["r0"]


def test_timeout_action_delay_moves_behind_everything_once() -> None:
    q = BatchQueue(BatchPolicy(max_batch_size=1, priority_levels=2, timeout_action="delay"))
    q.add(entry(priority=1, timeout_us=1000, name="late"), 0.0)
    q.add(entry(priority=2, name="low"), 0.0)
    d = q.take(0.5)
    assert d.expired == [] and names(d.batch) == ["low"]
    assert names(q.take(10.0).batch) == ["late"]  # no second timeout


def test_removed_entries_never_run() -> None:
    q = BatchQueue(BatchPolicy(max_batch_size=4, default_timeout_us=1000))
    gone, kept = entry(name="gone"), entry(name="kept")
    q.add(gone, 0.0)
    q.add(kept, 0.0)
    assert q.remove(gone) and not q.remove(gone)
    assert q.rows == 1
    assert names(q.take(0.0).batch) == ["kept"]
    assert q.take(5.0).expired == []  # the removed entry's deadline is ignored


def test_rows_ahead_counts_higher_and_equal_priority() -> None:
    q = BatchQueue(BatchPolicy(max_batch_size=8, priority_levels=2, default_priority_level=2))
    q.add(entry(3, priority=1), 0.0)
    q.add(entry(2, priority=2), 0.0)
    assert q.rows_ahead_of(1) == 3
    assert q.rows_ahead_of(0) == 5  # default level 2


def test_oversized_request_is_invalid() -> None:
    q = BatchQueue(BatchPolicy(max_batch_size=2))
    with pytest.raises(InvalidInput, match="exceeds max_batch_size 2"):
        q.add(entry(3), 0.0)

"""Pure batch-forming logic: priorities, deadlines, bounded size, preferred sizes, max delay.

No threads, no asyncio, no clock of its own: every call gets `now` (seconds, monotonic), so the
unit tests drive it with a fake clock. The scheduler (serving/scheduler.py) owns the waiting.

Priorities follow Triton: level 1 is the highest, `priority_levels` the lowest; 0 in a request
means the model's default level. Requests whose timeout passes while queued are rejected
(`timeout_action = "reject"`) or moved behind everything else once (`"delay"`). A request's timeout
bounds its whole time in the server, queue and run: `take` is told how long the next run is
expected to take (`horizon`) and treats a request that would finish after its deadline as
already expired, so it is refused before it runs instead of answered late.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from edgeinfer.errors import InvalidInput, QueueFull

_SCAN_LIMIT = 4  # look at most this many times max_batch_size entries when gathering a batch


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int = 1  # largest batch one run may take (1: no batching)
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    max_queue_size: int = 1024  # 0: unbounded
    priority_levels: int = 1
    default_priority_level: int = 1
    default_timeout_us: int = 0  # 0: no timeout
    timeout_action: str = "reject"  # or "delay"


@dataclass(eq=False)
class Entry:
    """One queued request. `signature` must be equal for requests that can share a batch."""

    batch: int
    signature: Hashable
    enqueued: float
    priority: int = 0
    timeout_us: int = 0
    payload: Any = None
    deadline: float | None = None
    level: int = 0  # resolved priority level (index into the queues)
    seq: int = 0
    queued: bool = False


@dataclass
class Decision:
    batch: list[Entry] = field(default_factory=list)
    expired: list[Entry] = field(default_factory=list)
    wake_at: float | None = None  # when to call take() again if nothing changes


class BatchQueue:
    def __init__(self, policy: BatchPolicy) -> None:
        self.policy = policy
        # One FIFO per level, plus a last one for requests delayed by their timeout.
        self._levels: list[deque[Entry]] = [deque() for _ in range(policy.priority_levels + 1)]
        self._deadlines: list[tuple[float, int, Entry]] = []
        self._seq = itertools.count()
        self._size = 0  # queued requests
        self._items = 0  # queued batch rows

    def __len__(self) -> int:
        return self._size

    @property
    def rows(self) -> int:
        return self._items

    def rows_ahead_of(self, priority: int) -> int:
        level = self._level(priority)
        return sum(e.batch for q in self._levels[: level + 1] for e in q)

    def _level(self, priority: int) -> int:
        p = self.policy
        if priority == 0:
            return p.default_priority_level - 1
        if not 1 <= priority <= p.priority_levels:
            raise InvalidInput(
                f"priority {priority} is outside 1..{p.priority_levels} (1 is the highest; "
                "0 means the model's default)"
            )
        return priority - 1

    def add(self, entry: Entry, now: float) -> None:
        """Queue `entry` or raise QueueFull; the caller may check predicted waits first."""
        p = self.policy
        if entry.batch > p.max_batch_size:
            raise InvalidInput(
                f"batch size {entry.batch} exceeds max_batch_size {p.max_batch_size}"
            )
        if p.max_queue_size and self._size >= p.max_queue_size:
            raise QueueFull(f"queue is full ({p.max_queue_size} requests waiting)")
        entry.level = self._level(entry.priority)
        entry.enqueued = now
        entry.seq = next(self._seq)
        timeout = entry.timeout_us or p.default_timeout_us
        entry.deadline = now + timeout / 1e6 if timeout > 0 else None
        if entry.deadline is not None:
            heapq.heappush(self._deadlines, (entry.deadline, entry.seq, entry))
        self._levels[entry.level].append(entry)
        entry.queued = True
        self._size += 1
        self._items += entry.batch

    def remove(self, entry: Entry) -> bool:
        """Drop a queued entry (its client went away). False if it was not queued."""
        if not entry.queued:
            return False
        self._levels[entry.level].remove(entry)
        self._unqueue(entry)
        return True

    def _unqueue(self, entry: Entry) -> None:
        entry.queued = False
        self._size -= 1
        self._items -= entry.batch

    def _expire(self, now: float) -> list[Entry]:
        expired = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, entry = heapq.heappop(self._deadlines)
            if not entry.queued or entry.deadline is None:
                continue
            if self.policy.timeout_action == "delay":
                self._levels[entry.level].remove(entry)
                entry.level, entry.deadline = len(self._levels) - 1, None
                self._levels[entry.level].append(entry)
            else:
                self._levels[entry.level].remove(entry)
                self._unqueue(entry)
                expired.append(entry)
        return expired

    def _gather(self, limit: int) -> list[Entry]:
        """The head request plus compatible ones (up to `limit` rows), in priority then
        arrival order."""
        head = next((q[0] for q in self._levels if q), None)
        if head is None:
            return []
        batch, rows, scanned = [head], head.batch, 0
        for q in self._levels:
            for e in q:
                if rows >= limit or scanned >= _SCAN_LIMIT * limit:
                    return batch
                scanned += 1
                if e is head or e.signature != head.signature or rows + e.batch > limit:
                    continue
                batch.append(e)
                rows += e.batch
        return batch

    def _cut(self, batch: list[Entry], now: float, limit: int) -> tuple[list[Entry], float | None]:
        """Apply max size / preferred sizes / max delay: what to send now, or when to look again."""
        p = self.policy
        rows = sum(e.batch for e in batch)
        if rows >= limit or (not p.preferred_batch_sizes and not p.max_queue_delay_us):
            return batch, None
        if p.preferred_batch_sizes:
            sums = list(itertools.accumulate(e.batch for e in batch))
            for size in sorted(p.preferred_batch_sizes, reverse=True):
                if size in sums:
                    return batch[: sums.index(size) + 1], None
        send_at = min(e.enqueued for e in batch) + p.max_queue_delay_us / 1e6
        if now >= send_at:
            return batch, None
        return [], send_at

    def batch_limit(self, max_rows: int | None = None) -> int:
        """Most rows the next batch may take: the policy's max, or `max_rows` when lower."""
        return min(self.policy.max_batch_size, max_rows or self.policy.max_batch_size)

    def take(self, now: float, max_rows: int | None = None, horizon: float = 0.0) -> Decision:
        """Expire timed-out entries and return a batch to run now, if one is due. `max_rows`
        caps the batch below the policy's max (the device is hot or short of memory); a single
        request larger than the cap still runs alone. `horizon`: the expected seconds of the next
        run; an entry whose deadline falls before `now + horizon` could only finish late, so it
        expires now."""
        decision = Decision(expired=self._expire(now + horizon))
        limit = self.batch_limit(max_rows)
        gathered = self._gather(limit)
        if not gathered:
            return decision
        batch, wake_at = self._cut(gathered, now, limit)
        for e in batch:
            self._levels[e.level].remove(e)
            self._unqueue(e)
        decision.batch = batch
        deadline = self._next_deadline()
        times = [
            t
            for t in (wake_at, deadline - horizon if deadline is not None else None)
            if t is not None
        ]
        decision.wake_at = min(times, default=None)
        return decision

    def _next_deadline(self) -> float | None:
        while self._deadlines and not self._deadlines[0][2].queued:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

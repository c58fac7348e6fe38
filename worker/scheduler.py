"""Which queued requests the ranker takes next, and which it refuses: the deadline scheduler.

Pure: time is passed in (epoch ms), the cost of a batch comes from `CostModel`, and a request
is an opaque `Pending` with a lane, a width, an arrival time and maybe a deadline. No Kafka, no
tensors.

The policy, when the ranker is free (`next_batch`):
- Earliest deadline first across lanes, first come first served within a lane (a lane is what
  must keep its order: the request key under at-least-once, the partition under exactly-once).
  A request without a deadline counts as due `latency_target_ms` after it arrived.
- The batch is as large as the queue, up to the largest batch whose predicted time fits half
  the latency target: a request that arrives just after a batch started waits for that
  batch, then runs in the next, so two such batches fit the target. A lone request is taken
  at once: nothing waits for a batch to fill while the ranker idles. When more than that
  batch waits (a backlog: the queued requests wait for another batch anyway), the batch is
  as large as `max_batch_size` allows, which drains the queue fastest.
- A request whose deadline falls before the predicted finish of that batch is shed (refused
  as expired, without model time) instead of served late; so is a request that, on arrival
  (`add`), is predicted to finish after its deadline given the ranker's work and the queue
  ahead of it.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import heapq
import math
from typing import Any, Hashable, NamedTuple

from worker.cost_model import CostModel

# Shedding pauses once no ranked batch has finished for this many latency targets.
STALE_TARGETS = 4


@dataclasses.dataclass(eq=False)
class Pending:
    """One queued item: a request to rank, or one already answered (a dead letter from
    decoding) that only waits for its lane."""

    lane: Hashable  # items of one lane leave the queue in arrival order
    width: int | None  # its cost class (`CostModel.width`); None: already answered
    arrival_ms: float
    deadline_ms: float | None  # None: no deadline (never shed)
    payload: Any = None  # what the caller needs back (the record, the decoded request)
    due_ms: float = 0.0  # the EDF key (set by `add`)
    shed_at_ms: float | None = None  # when shed: the predicted finish it would have missed

    @property
    def done(self) -> bool:
        """Nothing left to rank: answered, or shed."""
        return self.width is None or self.shed_at_ms is not None


class Batch(NamedTuple):
    items: list[Pending]  # in the order they left the queue (each lane in order)
    predicted_ms: float  # the requests to rank: their predicted run time

    @property
    def to_rank(self) -> list[Pending]:
        return [p for p in self.items if not p.done]


class DeadlineScheduler:
    """The queue of decoded requests and the batches taken from it (see the module doc)."""

    def __init__(self, cost: CostModel, max_batch_size: int, latency_target_ms: float):
        self.cost = cost
        self.max_batch_size = max_batch_size
        self.latency_target_ms = latency_target_ms
        self._lanes: dict[Hashable, collections.deque[Pending]] = {}
        self._heads: list[tuple[float, int, Hashable]] = []  # (due, seq, lane) of lane heads
        self._dues: list[float] = []  # due times of the queued requests to rank, sorted
        self._count = 0
        self._seq = 0
        self._ranked_ms: float | None = None  # when a ranked batch last finished (or the
        # first request came)

    def __len__(self) -> int:
        """Queued items, answered and shed ones included."""
        return self._count

    @property
    def batch_budget_ms(self) -> float:
        """The most a batch may be predicted to take: half the latency target."""
        return self.latency_target_ms / 2

    def add(self, item: Pending, now_ms: float, busy_ms: float = 0.0) -> bool:
        """Queues `item`. A request that would head its lane is shed (returns False,
        `item.shed_at_ms` set) when it is predicted to finish after its deadline: after
        `busy_ms` more of the batch being ranked, the batches of the requests due before it,
        and its own. Shed and answered items leave with the next batch, first, in their
        lane's order, without model time."""
        if self._ranked_ms is None:  # the first request starts the staleness clock
            self._ranked_ms = now_ms
        if item.width is None:
            item.due_ms = item.arrival_ms  # nothing to wait for but its lane
        elif item.deadline_ms is not None:
            item.due_ms = item.deadline_ms
            if item.lane not in self._lanes and self._estimates_fresh(now_ms):
                finish = now_ms + busy_ms + self._queue_ms(item) + self.cost.after_ms
                if finish > item.deadline_ms:
                    item.shed_at_ms, item.due_ms = finish, item.arrival_ms
        else:
            item.due_ms = item.arrival_ms + self.latency_target_ms
        lane = self._lanes.get(item.lane)
        if lane is None:
            self._lanes[item.lane] = lane = collections.deque()
            self._push_head(item)
        lane.append(item)
        self._count += 1
        if not item.done:
            bisect.insort(self._dues, item.due_ms)
        return item.shed_at_ms is None

    def next_batch(self, now_ms: float, drain: bool = False) -> Batch:
        """The batch to rank now (the ranker is free), with the items answered or shed on the
        way, in the order they left the queue. `drain`: as many as `max_batch_size`, whatever
        their time (the queue must empty fast: the worker stops or gives partitions up)."""
        budget_ms = math.inf if drain else self.batch_budget_ms
        items: list[Pending] = []
        counts: dict[int, int] = {}
        ranked, size, finish = 0, 0, now_ms
        shedding = self._estimates_fresh(now_ms)
        while self._heads:
            item = self._lanes[self._heads[0][2]][0]
            if item.done:
                items.append(self._pop())
                continue
            if not size:  # the first request to rank sets the batch's size and finish
                size = self.cost.largest_within(item.width, budget_ms, self.max_batch_size)
                if len(self._dues) > size:  # a backlog: more than one batch waits anyway,
                    size, budget_ms = self.max_batch_size, math.inf  # so drain it fastest
                size = min(size, len(self._dues))
                finish = now_ms + self.cost.uniform_ms(item.width, size) + self.cost.after_ms
            if ranked == size:
                break
            if shedding and item.deadline_ms is not None and item.deadline_ms < finish:
                self._pop().shed_at_ms = finish  # it would be served late: refuse it now
                items.append(item)
                continue
            counts[item.width] = counts.get(item.width, 0) + 1
            if ranked and self.cost.batch_ms(counts) > budget_ms:
                counts[item.width] -= 1  # mixed widths: this one would blow the budget
                break
            items.append(self._pop())
            ranked += 1
        return Batch(items, self.cost.batch_ms(counts))

    def ranked(self, now_ms: float) -> None:
        """A ranked batch finished: the cost estimates were just brought up to date."""
        self._ranked_ms = now_ms

    def _estimates_fresh(self, now_ms: float) -> bool:
        """Whether to shed: not while no ranked batch has finished for `STALE_TARGETS`
        latency targets, counted from the first request (every request shed: the estimates
        that shed them cannot be corrected), so the next batch is ranked and corrects them."""
        return (self._ranked_ms is None
                or now_ms - self._ranked_ms <= STALE_TARGETS * self.latency_target_ms)

    def _batch_cap(self, width: int) -> int:
        return self.cost.largest_within(width, self.batch_budget_ms, self.max_batch_size)

    def _queue_ms(self, item: Pending) -> float:
        """Predicted ms from the ranker's next batch to the end of `item`'s own: the requests
        due no later than it go first, in full batches."""
        ahead = bisect.bisect_right(self._dues, item.due_ms)
        cap = self._batch_cap(item.width)
        full, rest = divmod(ahead, cap)
        return (full * self.cost.uniform_ms(item.width, cap)
                + self.cost.uniform_ms(item.width, rest + 1))

    def _push_head(self, item: Pending) -> None:
        self._seq += 1
        heapq.heappush(self._heads, (item.due_ms, self._seq, item.lane))

    def _pop(self) -> Pending:
        """Takes the earliest-due lane head off the queue."""
        _, _, key = heapq.heappop(self._heads)
        lane = self._lanes[key]
        item = lane.popleft()
        if lane:
            self._push_head(lane[0])
        else:
            del self._lanes[key]
        self._count -= 1
        if not item.done:  # as when it was added
            del self._dues[bisect.bisect_left(self._dues, item.due_ms)]
        return item

"""The deadline scheduler's decisions, with the clock passed in and a cost model of known
numbers: batch size, order (earliest deadline first, each lane in order), shedding."""

from __future__ import annotations

import pytest

from worker.assembly import Buckets
from worker.cost_model import CostModel
from worker.scheduler import DeadlineScheduler, Pending

BUCKETS = Buckets(batch_sizes=(1, 2, 4, 8, 16), widths=(8, 32), call_candidates=512)
# Model ms per call: 1 ms a call plus 0.5 ms per request row of width 8, 2 ms per row of 32.
SHAPE_MS = {(b, w): 1.0 + b * (0.5 if w == 8 else 2.0) for b, w in BUCKETS.shapes()}


def cost() -> CostModel:
    return CostModel(BUCKETS, dict(SHAPE_MS), host_ms_per_request=0.0)


def scheduler(target_ms: float = 40.0, max_batch: int = 16) -> DeadlineScheduler:
    return DeadlineScheduler(cost(), max_batch, target_ms)


def request(name: str, lane: object = None, arrival: float = 0.0, deadline: float | None = None,
            width: int = 8) -> Pending:
    return Pending(lane if lane is not None else name, width, arrival, deadline, name)


def names(items: list[Pending]) -> list[str]:
    return [p.payload for p in items]


def test_cost_model_predicts_the_calls_the_assembler_makes():
    model = cost()
    # 20 of width 8: one call of 16 and one of 4 (padded from 4); 3 of width 32: one of 4.
    prediction = model.predict([8] * 20 + [32] * 3)
    assert sorted(prediction.shapes) == [(4, 8), (4, 32), (16, 8)]
    assert prediction.ms == pytest.approx(SHAPE_MS[16, 8] + SHAPE_MS[4, 8] + SHAPE_MS[4, 32])
    assert model.width(9) == 32 and model.width(8) == 8 and model.width(1) == 8


def test_cost_model_follows_the_measured_times():
    model = cost()
    assert model.predict([8] * 16).ms == 9.0  # one (16, 8) call
    for _ in range(60):  # the batches take twice as long, and host work 0.25 ms a request
        model.observe(model.predict([8] * 16), model_ms=18.0, host_ms=16 * 0.25)
    assert model.shape_ms[16, 8] == pytest.approx(18.0, rel=0.01)
    assert model.host_ms_per_request == pytest.approx(0.25, rel=0.01)
    assert model.shape_ms[8, 8] == SHAPE_MS[8, 8]  # shapes not run keep their estimate


def test_the_time_after_a_run_follows_what_is_observed_and_one_stall_counts_little():
    model = cost()
    for _ in range(60):  # answers are out 3 ms after each run's predicted end
        model.observe_after(3.0, most_ms=50.0)
    assert model.after_ms == pytest.approx(3.0, rel=0.01)
    model.observe_after(10_000.0, most_ms=50.0)  # one publishing stall of 10 s
    assert model.after_ms == pytest.approx(3.0 + 0.1 * (50.0 - 3.0), rel=0.01)
    model.observe_after(-5.0, most_ms=50.0)  # out before the predicted end: counts as 0
    assert model.after_ms < 3.0 + 0.1 * (50.0 - 3.0)


def test_a_lone_request_is_taken_at_once():
    s = scheduler()
    assert s.add(request("a"), now_ms=0.0)
    batch = s.next_batch(now_ms=0.0)
    assert names(batch.to_rank) == ["a"] and len(s) == 0
    assert batch.predicted_ms == pytest.approx(SHAPE_MS[1, 8])


def test_the_batch_is_the_queue_up_to_the_budget():
    # Budget = half of 40 ms = 20 ms: 16 rows of width 8 (9 ms) fit; of width 32 a call of 8
    # (17 ms) fits and one of 16 (33 ms) does not, so 9 of width 32 are cut to 8.
    s = scheduler(max_batch=16)
    for i in range(20):
        s.add(request(f"r{i}"), now_ms=0.0)
    assert len(s.next_batch(now_ms=1.0).to_rank) == 16  # max_batch_size
    assert len(s) == 4
    wide = scheduler(max_batch=16)
    for i in range(8):
        wide.add(request(f"w{i}", width=32), now_ms=0.0)
    batch = wide.next_batch(now_ms=1.0)
    assert len(batch.to_rank) == 8 and batch.predicted_ms <= wide.batch_budget_ms


def test_a_backlog_is_drained_in_batches_of_max_batch_size():
    # 9 of width 32 queued: more than the 8 that fit the budget, so a batch of 9 (and a call of
    # 16, 33 ms) drains them; with 8 queued (above) the budget holds.
    wide = scheduler(max_batch=16)
    for i in range(9):
        wide.add(request(f"w{i}", width=32), now_ms=0.0)
    batch = wide.next_batch(now_ms=1.0)
    assert len(batch.to_rank) == 9 and batch.predicted_ms == pytest.approx(SHAPE_MS[16, 32])


def test_draining_takes_full_batches_whatever_their_time():
    s = scheduler(max_batch=16)
    for i in range(20):
        s.add(request(f"w{i}", width=32), now_ms=0.0)
    assert len(s.next_batch(now_ms=0.0, drain=True).to_rank) == 16  # 33 ms, over the budget
    assert len(s.next_batch(now_ms=0.0).to_rank) == 4


def test_earliest_deadline_first_across_lanes_in_order_within_one():
    s = scheduler()
    s.add(request("late", arrival=0.0, deadline=500.0), now_ms=0.0)
    s.add(request("soon", arrival=1.0, deadline=100.0), now_ms=1.0)
    # No deadline: due latency_target_ms (40) after arrival, so before both.
    s.add(request("plain", arrival=2.0), now_ms=2.0)
    # Same lane as "late": waits behind it although due sooner.
    s.add(request("late-2", lane="late", arrival=3.0, deadline=60.0), now_ms=3.0)
    batch = s.next_batch(now_ms=4.0)
    assert names(batch.items) == ["plain", "soon", "late", "late-2"]


def test_a_request_that_cannot_meet_its_deadline_is_shed_on_arrival():
    s = scheduler()
    for i in range(32):  # two full batches of 9 ms, all due before it: ahead of it
        assert s.add(request(f"r{i}", arrival=0.0, deadline=19.0), now_ms=0.0)
    hopeless = request("hopeless", arrival=0.0, deadline=20.0)
    # 5 ms of the batch being ranked + 2 batches of 9 ms + its own of 1.5 ms > 20 ms ahead.
    assert not s.add(hopeless, now_ms=0.0, busy_ms=5.0)
    assert hopeless.shed_at_ms == pytest.approx(5.0 + 2 * SHAPE_MS[16, 8] + SHAPE_MS[1, 8])
    feasible = request("feasible", arrival=0.0, deadline=25.0)
    assert s.add(feasible, now_ms=0.0, busy_ms=5.0)  # 24.5 ms: in time
    assert len(s) == 34  # the shed one too: it leaves, answered, with the next batch


def test_a_request_is_shed_on_arrival_only_at_the_head_of_its_lane():
    s = scheduler()
    s.add(request("first", lane="user", deadline=1000.0), now_ms=0.0)
    behind = request("behind", lane="user", deadline=1.0)
    assert s.add(behind, now_ms=0.0, busy_ms=50.0)  # queued: its lane is not free
    batch = s.next_batch(now_ms=0.0)
    assert names(batch.items) == ["first", "behind"]
    assert [p.shed_at_ms is not None for p in batch.items] == [False, True]
    assert names(batch.to_rank) == ["first"]


def test_a_request_shed_on_arrival_leaves_first_with_the_next_batch():
    s = scheduler()
    s.add(request("a", deadline=1000.0), now_ms=0.0)
    s.add(request("b", deadline=1000.0), now_ms=0.0)
    assert not s.add(request("hopeless", arrival=0.0, deadline=3.0), now_ms=0.0, busy_ms=10.0)
    assert len(s) == 3
    batch = s.next_batch(now_ms=10.0)
    assert names(batch.items) == ["hopeless", "a", "b"] and names(batch.to_rank) == ["a", "b"]
    assert len(s) == 0 and s.next_batch(now_ms=11.0).items == []


def test_a_request_whose_deadline_falls_inside_the_batch_is_shed_not_served():
    s = scheduler()
    for i in range(15):
        s.add(request(f"r{i}", deadline=1000.0), now_ms=0.0)
    tight = request("tight", arrival=0.0, deadline=105.0)
    assert s.add(tight, now_ms=0.0)  # alone it would make it (1.5 ms from now)
    # Formed at 100 ms: tight is due first, but the batch of 16 ends at 109 ms.
    batch = s.next_batch(now_ms=100.0)
    assert names(batch.items)[0] == "tight" and batch.items[0].shed_at_ms == pytest.approx(
        100.0 + SHAPE_MS[16, 8])
    assert len(batch.to_rank) == 15 and len(s) == 0


def test_requests_without_deadlines_are_never_shed():
    s = scheduler()
    for i in range(40):
        assert s.add(request(f"r{i}", arrival=0.0), now_ms=0.0, busy_ms=1000.0)
    batch = s.next_batch(now_ms=5000.0)  # long overdue
    assert len(batch.to_rank) == 16 and all(p.shed_at_ms is None for p in batch.items)


def test_answered_items_wait_for_their_lane_and_cost_nothing():
    s = scheduler(max_batch=2)
    s.add(request("a", lane="u"), now_ms=0.0)
    s.add(request("b", lane="v"), now_ms=0.0)
    s.add(request("c", lane="w"), now_ms=0.0)
    s.add(Pending("u", None, 1.0, None, "dead letter of u"), now_ms=1.0)
    s.add(Pending("x", None, 1.0, None, "dead letter of x"), now_ms=1.0)
    batch = s.next_batch(now_ms=2.0)
    # x's lane is free: its dead letter leaves first; u's right after "a", its lane's first.
    assert names(batch.items) == ["dead letter of x", "a", "dead letter of u", "b"]
    assert names(batch.to_rank) == ["a", "b"] and len(s) == 1


def test_the_time_after_a_run_counts_towards_every_predicted_finish():
    s = scheduler()
    on_time = request("on-time", arrival=0.0, deadline=3.0)
    assert s.add(on_time, now_ms=0.0)  # its run ends at 1.5 ms
    s.next_batch(now_ms=0.0)
    s.cost.after_ms = 2.0  # answers are out 2 ms after a run ends: 3.5 ms, after its deadline
    late = request("late", arrival=0.0, deadline=3.0)
    assert not s.add(late, now_ms=0.0)
    assert late.shed_at_ms == pytest.approx(SHAPE_MS[1, 8] + 2.0)


def test_shedding_pauses_while_no_ranked_batch_can_correct_the_estimates():
    # Every request is predicted late (the estimates say 1000x): all are shed, none is ranked,
    # so nothing could ever correct the estimates. After 4 latency targets (160 ms here)
    # without a ranked batch, the next ones are queued and ranked; once one finished,
    # shedding resumes.
    s = scheduler(target_ms=40.0)
    s.cost.shape_ms = {shape: ms * 1000 for shape, ms in SHAPE_MS.items()}
    assert not s.add(request("a", arrival=0.0, deadline=100.0), now_ms=0.0)
    assert not s.add(request("b", arrival=150.0, deadline=250.0), now_ms=150.0)
    assert s.add(request("c", arrival=170.0, deadline=270.0), now_ms=170.0)
    batch = s.next_batch(now_ms=170.0)
    assert names(batch.to_rank) == ["c"]
    s.ranked(now_ms=180.0)
    assert not s.add(request("d", arrival=190.0, deadline=290.0), now_ms=190.0)


def test_one_stalled_batch_moves_the_estimates_by_a_tenth_at_most():
    model = cost()
    model.observe(model.predict([8] * 16), model_ms=5000.0, host_ms=0.0)  # a 5 s stall
    assert model.shape_ms[16, 8] == pytest.approx(SHAPE_MS[16, 8] * 1.1)

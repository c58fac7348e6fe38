"""The benchmark's pure helpers: statistics, histogram deltas, targets, tables, metric parsing.

The benchmark itself (`make bench`) is never run here: it times things.
"""

import math
import threading
import time

import prometheus_client
import pytest

from bench.load import Snapshot, lag_quantiles_ms, stage_means_ms
from bench.stats import (BenchStatsError, Target, bucket_counts, latency_summary,
                                markdown_table, percentile, shares, sustained_rate)
from worker.monitoring import WorkerMetrics, python_threads_cpu_s


@pytest.mark.parametrize("q, expected", [(0, 1.0), (50, 3.0), (100, 5.0), (25, 2.0), (90, 4.6)])
def test_percentile_interpolates_between_ranks(q, expected):
    assert percentile([5, 1, 4, 2, 3], q) == pytest.approx(expected)


def test_percentile_of_nothing_names_the_problem():
    with pytest.raises(BenchStatsError, match="empty sample"):
        percentile([], 99)
    with pytest.raises(BenchStatsError, match=r"\[0, 100\]"):
        percentile([1.0], 101)


def test_latency_summary_of_a_known_sample():
    summary = latency_summary([10.0] * 99 + [110.0])
    assert summary["count"] == 100
    assert summary["p50_ms"] == 10.0
    assert summary["max_ms"] == 110.0
    assert summary["mean_ms"] == pytest.approx(11.0)
    assert 10.0 < summary["p99_ms"] < 110.0  # interpolated between the 99th and 100th value


def test_sustained_rate_ignores_a_slow_start_and_tail():
    # 100 events 10 ms apart (100/s), then one straggler 5 s later: trimmed away.
    times = [i * 10.0 for i in range(100)] + [5990.0]
    assert sustained_rate(times, trim=0.1) == pytest.approx(100.0, rel=0.02)
    assert sustained_rate(times, trim=0.0) < 20  # the straggler dominates an untrimmed span


def test_sustained_rate_needs_distinct_times():
    with pytest.raises(BenchStatsError, match="at least 2"):
        sustained_rate([1.0])
    with pytest.raises(BenchStatsError, match="share one timestamp"):
        sustained_rate([5.0] * 10)


def test_bucket_counts_turns_cumulative_deltas_into_ranges():
    le = [1.0, 2.0, 4.0, 8.0, math.inf]
    before = dict(zip(le, [1, 1, 2, 2, 2]))
    after = dict(zip(le, [3, 3, 7, 8, 9]))  # +2 of 1, +3 of 3-4, +1 of 5-8, +1 over 8
    assert bucket_counts(before, after) == {"1": 2, "3-4": 3, "5-8": 1, ">8": 1}


def test_bucket_counts_refuses_mismatched_scrapes():
    with pytest.raises(BenchStatsError, match="buckets changed"):
        bucket_counts({1.0: 0}, {2.0: 0})


def test_shares_sum_to_one():
    out = shares({"a": 1.0, "b": 3.0})
    assert out == {"a": {"ms": 1.0, "share": 0.25}, "b": {"ms": 3.0, "share": 0.75}}
    with pytest.raises(BenchStatsError):
        shares({"a": 0.0})


@pytest.mark.parametrize("measured, limit, at_least, passed", [
    (0.8, 0.7, True, True), (0.6, 0.7, True, False), (0.7, 0.7, True, True),
    (25.0, 30.0, False, True), (31.0, 30.0, False, False), (math.nan, 30.0, False, False),
])
def test_target_pass_and_miss(measured, limit, at_least, passed):
    target = Target("t", measured, limit, at_least)
    assert target.passed is passed
    assert target.to_json()["passed"] is passed
    assert (">=" if at_least else "<=") in target.describe()


def test_markdown_table_aligns_columns():
    table = markdown_table(["name", "value"], [["a", 1.5], ["long name", 12345.678]])
    lines = table.splitlines()
    assert lines[0] == "| name      | value   |"
    assert lines[1] == "|-----------|---------|"
    assert lines[3] == "| long name | 12345.7 |"
    with pytest.raises(BenchStatsError, match="cells"):
        markdown_table(["one"], [["a", "b"]])


def test_snapshot_reads_the_worker_metrics_it_relies_on():
    metrics = WorkerMetrics()
    for size in (1, 3, 64):
        metrics.batch_size.observe(size)
    metrics.stage_time.labels("decode").observe(0.004)
    metrics.stage_time.labels("decode").observe(0.006)
    metrics.compilations.set(7)
    metrics.results.inc(68)
    before = Snapshot.parse(prometheus_client.generate_latest(WorkerMetrics().registry).decode())
    after = Snapshot.parse(prometheus_client.generate_latest(metrics.registry).decode())
    assert after.compilations == 7
    assert after.results == 68
    assert (after.batch_count, after.batch_sum) == (3, 68)
    assert bucket_counts(before.batch_le, after.batch_le) == {"1": 1, "3-4": 1, "33-64": 1}
    assert stage_means_ms(before, after) == {"decode": pytest.approx(5.0)}


def test_engagement_lag_quantiles_come_from_the_worker_histogram_delta():
    metrics = WorkerMetrics()
    metrics.engagement_visible_lag.observe(10.0)  # before the phase: must not count
    before = Snapshot.parse(prometheus_client.generate_latest(metrics.registry).decode())
    lag = metrics.engagement_visible_lag
    for seconds in [0.003] * 50 + [0.007] * 49 + [0.3]:
        lag.observe(seconds)
    after = Snapshot.parse(prometheus_client.generate_latest(metrics.registry).decode())
    got = lag_quantiles_ms(before.lag_le, after.lag_le)
    assert got["count"] == 100
    bounds = sorted(after.lag_le)
    # The median lies in the bucket holding 3 ms, p99 in the one holding 7 ms, by interpolation.
    lo50 = max(b for b in bounds if b < 0.003)
    hi50 = min(b for b in bounds if b >= 0.003)
    assert lo50 * 1000 <= got["p50_ms"] <= hi50 * 1000
    hi99 = min(b for b in bounds if b >= 0.007)
    assert 3.0 < got["p99_ms"] <= hi99 * 1000
    assert lag_quantiles_ms(after.lag_le, after.lag_le) is None  # nothing applied in between


def test_python_thread_cpu_counts_a_busy_python_thread_and_is_exported():
    done = threading.Event()
    started = threading.Event()

    def spin() -> None:
        started.set()
        end = time.thread_time() + 0.3
        while time.thread_time() < end:
            pass
        done.wait()

    thread = threading.Thread(target=spin)
    before = python_threads_cpu_s()
    thread.start()
    started.wait()
    time.sleep(0.5)  # the thread spins 0.3 s of CPU, then waits
    during = python_threads_cpu_s()
    text = prometheus_client.generate_latest(WorkerMetrics().registry).decode()
    done.set()
    thread.join()
    assert during - before >= 0.25
    (line,) = [l for l in text.splitlines() if l.startswith("ranker_python_threads_cpu_seconds ")]
    assert float(line.split()[1]) >= during


def test_a_floor_is_reported_as_its_median_round():
    from bench.floors import NATIVE, median_round

    rounds = [{"floor": "f", "msgs_per_s": rate, "cpu_us": {"worker python threads": py,
                                                            NATIVE: 10.0, "broker": broker}}
              for rate, py, broker in [(900.0, 300.0, 1.0), (1000.0, 100.0, 2.0),
                                       (1200.0, 200.0, 3.0)]]
    row = median_round(rounds)
    assert row["cpu_us"]["broker"] == 3.0  # the 210 us round's figures, not a blend
    assert row["msgs_per_s"] == 1000.0  # rates: their own median
    assert row["rounds_cpu_us"] == [310.0, 110.0, 210.0]  # every round, in order

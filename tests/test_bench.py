"""The benchmark's pure helpers: statistics, histogram deltas, targets, tables, metric parsing,
the two-broker report and the `--broker` argument.

The benchmark itself (`make bench`) is never run here: it times things.
"""

import dataclasses
import math
import threading
import time

import prometheus_client
import pytest

from bench.load import Snapshot, lag_quantiles_ms, stage_means_ms
from tests.conftest import ON_KAFKA
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
    spun = threading.Event()

    def spin() -> None:
        end = time.thread_time() + 0.3
        while time.thread_time() < end:
            pass
        spun.set()
        done.wait()

    thread = threading.Thread(target=spin)
    before = python_threads_cpu_s()
    thread.start()
    assert spun.wait(30), "the thread did not spin 0.3 s of CPU within 30 s"  # now it waits
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


# ---- both brokers in one report (bench.compare), the --broker argument ---------------------


def _phase(name, p50, p99, rate, offered=None, cpu=None):
    return {"phase": name, "offered_req_per_s": offered, "results_req_per_s": rate,
            "latency_ms": {"p50_ms": p50, "p99_ms": p99}, "cpu_us_per_request": cpu}


def _run(kind, title, *, light_p99, max_rate, broker_cpu, started=1_700_000_000.0,
         quick=False, exactly_once_max=None):
    """A results dict with just what the comparison reads (no bench run); without
    `exactly_once_max`, exactly once did not run, as on the embedded broker."""
    from bench.brokers import NO_EXACTLY_ONCE
    from bench.floors import NATIVE

    cpu = {"worker python threads": 300.0, NATIVE: 400.0, "broker": broker_cpu,
           "bench producer + consumer": 200.0}
    cpu["total"] = sum(cpu.values())
    cpu["cores busy"] = 1.5
    floors = [{"floor": label, "msgs_per_s": rate,
               "cpu_us": {"worker python threads": 70.0, NATIVE: 5.0, "broker": broker_cpu / 2}}
              for label, rate in (("(a) plain aiokafka echo", 4000.0),
                                  ("(b) Faust pass-through: worker app + agent", 3000.0),
                                  ("(c) host ceiling: worker, model precomputed", 2500.0))]
    return {
        "started": started, "duration_s": 300.0, "quick": quick,
        "environment": {"cpu_count": 2, "machine": "x86_64", "jax_version": "0.10.2",
                        "jax_backend": "cpu", "python": "3.11.7",
                        "load_average_at_start": [0.5, 0.4, 0.3]},
        "broker": {"kind": kind, "title": title, "executable": "java"},
        "settings": {"fetch_max_wait_ms": 10 if kind == "embedded" else 500},
        "targets": [{"passed": True}, {"passed": False}],
        "end_to_end": {
            "model_alone_around_max_req_per_s": [3000.0, 5000.0],
            "floors": floors, "duplicate_results": 3,
            "phases": [_phase("max", 2000.0, 3000.0, max_rate, cpu=cpu),
                       _phase("half max", 100.0, 190.0, max_rate / 2, round(max_rate / 2)),
                       _phase("light", 15.0, light_p99, 20.0, 20.0)]
            + ([] if exactly_once_max is None else [
                _phase("exactly_once max", 2500.0, 3500.0, exactly_once_max),
                _phase("exactly_once half max", 400.0, 700.0, exactly_once_max / 2,
                       round(exactly_once_max / 2))]),
            "exactly_once": ({"not_run": NO_EXACTLY_ONCE["embedded"]} if exactly_once_max is None
                             else {"worker_ready_s": 12.5, "duplicate_results": 0,
                                   "model_alone_around_max_req_per_s": [3900.0, 4100.0]})},
    }


def _row(text, label):
    """The cells of the first table row whose first cell is `label`."""
    line = next(l for l in text.splitlines() if l.startswith(f"| {label} "))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def test_comparison_puts_each_broker_in_its_own_column():
    from bench.compare import comparison

    runs = {"embedded": _run("embedded", "embedded broker (tansu)", light_p99=25.7,
                             max_rate=1692.3, broker_cpu=256.0),
            "kafka": _run("kafka", "Apache Kafka 4.1.1", light_p99=12.5, max_rate=2100.0,
                          broker_cpu=180.0)}
    text = comparison(runs)
    header = [l for l in text.splitlines() if "embedded broker (tansu)" in l and l.startswith("|")]
    assert header and "Apache Kafka 4.1.1" in header[0]  # the columns name each broker
    sections = [l for l in text.splitlines() if l.startswith("## ")]
    assert sections == ["## Light load", "## Half of max", "## Max", "## Processing guarantees",
                        "## CPU per request at max load", "## Host floors (no model)"]
    light = text[text.index("## Light load"):text.index("## Half of max")]
    assert _row(light, "p99 ms") == ["25.7", "12.5"]
    half = text[text.index("## Half of max"):text.index("## Max")]
    assert _row(half, "offered requests/s") == ["846", "1050"]
    top = text[text.index("## Max"):text.index("## Processing guarantees")]
    assert _row(top, "e2e max / model alone") == ["0.42x", "0.53x"]  # over the mean, 4000
    cpu = text[text.index("## CPU"):text.index("## Host floors")]
    assert _row(cpu, "broker (its whole process)") == ["256", "180"]
    assert _row(cpu, "worker, all threads") == ["700", "700"]
    floors = text[text.index("## Host floors"):]
    assert _row(floors, "(c) host ceiling (worker, model precomputed): messages/s") == [
        "2500", "2500"]
    assert _row(floors, "(a) CPU us/msg, broker") == ["128", "90"]
    assert _row(floors, "(b) CPU us/msg, floor process") == ["75", "75"]


def test_comparison_sets_both_guarantees_side_by_side_in_each_brokers_column():
    from bench.compare import MISSING, comparison

    runs = {"embedded": _run("embedded", "embedded broker (tansu)", light_p99=25.7,
                             max_rate=1692.3, broker_cpu=256.0),
            "kafka": _run("kafka", "Apache Kafka 4.1.1", light_p99=12.5, max_rate=2100.0,
                          broker_cpu=180.0, exactly_once_max=1470.0)}
    text = comparison(runs)
    table = text[text.index("## Processing guarantees"):text.index("## CPU")]
    assert _row(table, "at_least_once: max results/s") == ["1692.3", "2100"]
    assert _row(table, "exactly_once: max results/s") == [MISSING, "1470"]
    assert _row(table, "max results/s, exactly_once / at_least_once") == [MISSING, "0.70x"]
    assert _row(table, "at_least_once: p50 ms at half max") == ["100", "100"]
    assert _row(table, "exactly_once: p50 ms at half max") == [MISSING, "400"]
    assert _row(table, "at_least_once: p99 ms at half max") == ["190", "190"]
    assert _row(table, "exactly_once: p99 ms at half max") == [MISSING, "700"]
    # The exactly-once phases stay out of the at-least-once tables.
    assert _row(text[text.index("## Max"):], "results/s") == ["1692.3", "2100"]


def test_a_run_report_sets_the_guarantees_side_by_side_or_says_why_exactly_once_did_not():
    from bench.brokers import NO_EXACTLY_ONCE
    from bench.e2e import guarantees_section

    kafka = "\n".join(guarantees_section(_run("kafka", "Apache Kafka 4.1.1", light_p99=12.5,
                                              max_rate=2100.0, broker_cpu=180.0,
                                              exactly_once_max=1470.0)))
    header = next(l for l in kafka.splitlines() if l.startswith("|"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "", "at_least_once", "exactly_once"]
    assert _row(kafka, "max results/s") == ["2100", "1470"]
    assert _row(kafka, "p50 ms at half max") == ["100", "400"]
    assert _row(kafka, "p99 ms at half max") == ["190", "700"]
    assert "exactly_once / at_least_once: 0.70x" in kafka
    assert "3000-5000 and 3900-4100 requests/s" in kafka  # the model probes around each max
    assert "3 at least once, 0 exactly once" in kafka
    assert "kafka" not in NO_EXACTLY_ONCE
    embedded = guarantees_section(_run("embedded", "embedded broker (tansu)", light_p99=25.7,
                                       max_rate=1692.3, broker_cpu=256.0))
    assert embedded[-1] == "exactly_once: not run: the embedded broker has no transactions."
    assert not [l for l in embedded if l.startswith("|")]  # no exactly-once rows
    older = _run("kafka", "Apache Kafka 4.1.1", light_p99=12.5, max_rate=2100.0,
                 broker_cpu=180.0)
    del older["end_to_end"]["exactly_once"]  # a results file from before the phases
    assert guarantees_section(older)[-1] == (
        "exactly_once: not run: this run predates the phases.")


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_the_bench_guarantees_are_the_worker_settings_values(guarantee):
    from bench.compare import GUARANTEES
    from worker.settings import Settings

    assert guarantee in GUARANTEES  # the bench passes each as --processing-guarantee
    assert Settings.load(("--processing-guarantee", guarantee)).processing_guarantee == guarantee


@pytest.mark.skipif(not ON_KAFKA, reason="the embedded broker has no transactions")
def test_the_exactly_once_collector_reads_committed_results_only(kafka):
    """The exactly-once phases' latency is a read_committed reader's: an aborted result
    before a committed one is never seen, though a plain reader sees both."""
    import asyncio
    import uuid

    import msgpack
    from aiokafka import AIOKafkaProducer

    from bench.load import ResultCollector

    topic = kafka.new_topic()

    def result(request_id):
        return msgpack.packb({"request_id": request_id, "request_timestamp_ms": 1,
                              "timings": {"queue_wait_ms": 0.0}, "produced_at_ms": 2})

    async def scenario():
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap,
                                    transactional_id=f"bench-test-{uuid.uuid4().hex}")
        await producer.start()
        try:
            async with ResultCollector(kafka.bootstrap, topic, read_committed=True) as committed, \
                    ResultCollector(kafka.bootstrap, topic) as plain:
                for request_id, end in (("aborted", producer.abort_transaction),
                                        ("committed", producer.commit_transaction)):
                    await producer.begin_transaction()
                    await (await producer.send(topic, result(request_id)))
                    await end()
                await committed.wait_for(["committed"], timeout_s=30)
                await plain.wait_for(["aborted", "committed"], timeout_s=30)
                return set(committed.arrivals)
        finally:
            await producer.stop()

    assert asyncio.run(scenario()) == {"committed"}


def test_a_broker_never_run_shows_not_run_and_the_run_lines_say_when_and_where():
    from bench.compare import NOT_RUN, comparison

    text = comparison({"embedded": None,
                       "kafka": _run("kafka", "Apache Kafka 4.1.1", light_p99=12.5,
                                     max_rate=2100.0, broker_cpu=180.0)})
    assert _row(text, "p99 ms")[0] == NOT_RUN
    assert f"- embedded broker (tansu): {NOT_RUN} (`make bench BROKER=embedded`)." in text
    (line,) = [l for l in text.splitlines() if l.startswith("- Apache Kafka 4.1.1: ")]
    assert "2 CPUs (x86_64)" in line and "fetch wait 500 ms" in line
    assert "1 of 2 targets met" in line
    assert time.strftime("%Y-%m-%d", time.localtime(1_700_000_000.0)) in line


def test_a_figure_an_older_run_lacks_reads_n_a_not_a_crash():
    from bench.compare import MISSING, comparison

    run = _run("embedded", "embedded broker (tansu)", light_p99=25.7, max_rate=1692.3,
               broker_cpu=256.0)
    run["end_to_end"]["phases"] = [p for p in run["end_to_end"]["phases"] if p["phase"] != "light"]
    run["end_to_end"]["floors"] = []
    text = comparison({"embedded": run, "kafka": None})
    assert _row(text, "p99 ms")[0] == MISSING  # the light table's row, first of its name
    assert _row(text, "(a) CPU us/msg, broker")[0] == MISSING


def test_a_run_on_one_broker_keeps_the_other_brokers_column(tmp_path):
    import json

    from bench.compare import document, load_runs, results_path

    def save(run, quick=False):
        results_path(tmp_path, run["broker"]["kind"], quick).write_text(json.dumps(run))

    def detail(run):
        light_p99 = run["end_to_end"]["phases"][2]["latency_ms"]["p99_ms"]
        return f"### detail of {run['broker']['title']} p99 {light_p99}\n"

    save(_run("kafka", "Apache Kafka 4.1.1", light_p99=12.5, max_rate=2100.0, broker_cpu=180.0))
    save(_run("embedded", "embedded broker (tansu)", light_p99=25.7, max_rate=1692.3,
              broker_cpu=256.0))
    # Then the embedded broker runs again: only its own file changes.
    save(_run("embedded", "embedded broker (tansu)", light_p99=31.0, max_rate=1500.0,
              broker_cpu=250.0, started=1_700_100_000.0))
    # A quick run keeps to its own file and never stands in a full run's column.
    save(_run("kafka", "Apache Kafka 4.1.1", light_p99=99.0, max_rate=10.0, broker_cpu=1.0,
              quick=True), quick=True)
    text = document(load_runs(tmp_path), detail)
    assert _row(text, "p99 ms") == ["31", "12.5"]
    assert text.index("### detail of embedded broker (tansu) p99 31.0") < text.index(
        "### detail of Apache Kafka 4.1.1 p99 12.5")
    assert "quick" not in text
    quick = load_runs(tmp_path, quick=True)
    assert quick["embedded"] is None
    assert "Apache Kafka 4.1.1, quick run" in document(quick, detail)


def test_bench_e2e_takes_the_broker_kind_and_a_quick_mode():
    from bench.e2e import QUICK, BenchConfig, parse_args

    args = parse_args([])
    assert args.broker == "embedded"
    assert args.config == BenchConfig()
    assert args.markdown == "bench/results.md"
    args = parse_args(["--broker", "kafka", "--quick", "--max-requests", "500"])
    assert args.broker == "kafka"
    assert args.config == dataclasses.replace(QUICK, max_requests=500)  # a flag beats --quick
    assert args.markdown is None  # a quick run only prints its report
    assert parse_args(["--no-sweeps"]).config.sweeps is False
    with pytest.raises(SystemExit):
        parse_args(["--broker", "redpanda"])


@pytest.mark.parametrize("kind, wait_ms", [("embedded", 10), ("kafka", 500)])
def test_each_broker_gets_its_own_fetch_wait_as_a_worker_flag(kind, wait_ms):
    from bench.brokers import tuning
    from worker.settings import Settings

    assert tuning(kind).fetch_max_wait_ms == wait_ms
    assert Settings.load(tuning(kind).worker_args()).fetch_max_wait_ms == wait_ms
    with pytest.raises(ValueError, match="choose one of"):
        tuning("redpanda")


def test_process_cpu_counts_every_thread_of_another_process():
    # The broker's CPU is read from /proc/<pid>/stat: for Apache Kafka a JVM whose work is
    # all on threads other than its main one.
    import subprocess
    import sys

    from bench.load import process_cpu

    spin = ("import threading, time\n"
            "def spin():\n"
            "    end = time.thread_time() + 0.4\n"
            "    while time.thread_time() < end: pass\n"
            "t = threading.Thread(target=spin); t.start(); t.join()\n"
            "print('done', flush=True); time.sleep(30)\n")
    child = subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "done"
        assert process_cpu(child.pid) >= 0.35
    finally:
        child.kill()
        child.wait()


# ---- the latency-vs-load curve of the batch policies (bench.curve, bench.plots) ------------


def _point(fraction, p99, goodput, expired=0, reference=2000.0):
    """One made-up curve point; `p99` None: no results at all."""
    return {"fraction": fraction, "offered_req_per_s": fraction * reference,
            "sent_req_per_s": fraction * reference, "results_req_per_s": goodput + 10.0,
            "latency_ms": None if p99 is None else {"p50_ms": p99 / 2, "p99_ms": p99,
                                                    "p99_9_ms": p99 * 1.5},
            "goodput_req_per_s": goodput, "expired": expired, "shed_by_scheduler": expired // 2,
            "mean_batch": 8.0, "cpu_us_per_request": {"total": 900.0}}


def _curve(p99s, goodputs, maxima, reference=2000.0):
    """A made-up curve: per policy, a p99 and a goodput for each load fraction."""
    from bench.curve import LOAD_FRACTIONS

    return {"deadline_ms": 100, "reference_policy": "fixed", "reference_max_req_per_s": reference,
            "seconds_per_point": 6.0,
            "policies": {policy: {"max_req_per_s": maxima[policy], "points": [
                _point(f, p99, good, expired=int(100 * f), reference=reference)
                for f, p99, good in zip(LOAD_FRACTIONS, p99s[policy], goodputs[policy])]}
                for policy in p99s}}


# fractions:      10%   25%   50%   70%   80%   85%   100%  120%
GOOD_CURVE = _curve(
    {"fixed": [20.0, 25.0, 90.0, 150.0, 300.0, 500.0, 900.0, 2000.0],
     "deadline": [20.0, 22.0, 50.0, 60.0, 70.0, 100.0, 95.0, 98.0]},
    {"fixed": [200.0, 500.0, 1000.0, 1300.0, 1200.0, 1000.0, 400.0, 10.0],
     "deadline": [200.0, 500.0, 1000.0, 1400.0, 1600.0, 1700.0, 1900.0, 1900.0]},
    {"fixed": 2000.0, "deadline": 1960.0})


def test_goodput_counts_only_results_that_arrived_by_their_deadline():
    from bench.curve import goodput_per_s, within_deadline
    from bench.load import Arrival

    arrivals = [Arrival(1000, 1050.0, 1.0, 1040), Arrival(1000, 1100.0, 1.0, 1090),  # in time
                Arrival(1000, 1100.5, 1.0, 1090), Arrival(2000, 2400.0, 1.0, 2390),  # late
                Arrival(None, 1.0, 1.0, 1)]  # no send time: no deadline to have met
    assert [within_deadline(a, 100) for a in arrivals] == [True, True, False, False, False]
    assert goodput_per_s(arrivals, seconds=2.0, deadline_ms=100) == 1.0
    assert goodput_per_s(arrivals, seconds=2.0, deadline_ms=500) == 2.0  # the late one too
    with pytest.raises(BenchStatsError, match="must last"):
        goodput_per_s(arrivals, seconds=0.0)


def test_a_curve_point_splits_results_dead_letters_and_the_schedulers_shed():
    from bench.curve import point_figures
    from bench.load import Arrival, DeadLetter, Offered

    def snapshot(shed, dead_letters, batches, requests):
        return Snapshot(math.nan, 0.0, {}, requests, batches, {}, {}, {}, shed, dead_letters)

    offered = Offered(["a", "b", "c", "d", "e", "f"], 2.0,
                      snapshot(3.0, {"expired": 5.0}, 10, 80),
                      snapshot(5.0, {"expired": 8.0, "invalid": 1.0}, 12, 96), None)
    results = {"a": Arrival(1000, 1060.0, 2.0, 1050), "b": Arrival(1000, 1250.0, 2.0, 1240),
               "zz": Arrival(1000, 1001.0, 2.0, 1000)}  # another phase's: not this point's
    letters = {"c": DeadLetter("expired", 1010.0), "d": DeadLetter("expired", 1020.0),
               "e": DeadLetter("expired", 1030.0), "f": DeadLetter("invalid", 1005.0)}
    p = point_figures(0.5, 3.0, offered, results, letters, deadline_ms=100)
    assert (p["requests"], p["results"], p["within_deadline"]) == (6, 2, 1)
    assert p["sent_req_per_s"] == 3.0 and p["results_req_per_s"] == 1.0
    assert p["goodput_req_per_s"] == 0.5
    assert p["latency_ms"]["p50_ms"] == pytest.approx(155.0)  # of results only: 60 and 250
    assert p["latency_ms"]["max_ms"] == 250.0 and "p99_9_ms" in p["latency_ms"]
    assert p["dead_letters"] == {"expired": 3, "invalid": 1} and p["expired"] == 3
    assert p["shed_by_scheduler"] == 2  # the rest of the expired ones expired before a batch
    assert p["worker_dead_letters"] == {"expired": 3, "invalid": 1}
    assert p["mean_batch"] == 8.0  # 16 requests in 2 batches
    nothing = point_figures(1.2, 3.0, offered, {}, letters)
    assert nothing["latency_ms"] is None and nothing["goodput_req_per_s"] == 0.0


def test_the_snapshot_reads_the_shed_and_dead_letter_counters():
    metrics = WorkerMetrics()
    metrics.shed.inc(4)
    metrics.dead_letters.labels("expired").inc(6)
    metrics.dead_letters.labels("invalid").inc(1)
    snapshot = Snapshot.parse(prometheus_client.generate_latest(metrics.registry).decode())
    assert snapshot.shed == 4
    assert snapshot.dead_letters == {"expired": 6, "invalid": 1}


def test_the_curve_targets_hold_the_deadline_policy_to_its_light_load_p99_and_the_fixed_max():
    from bench.curve import curve_targets

    targets = curve_targets(GOOD_CURVE)
    assert [t.passed for t in targets] == [True] * 4
    assert all(t.name.startswith("deadline policy: ") for t in targets)
    measured = [t.measured for t in targets]
    assert measured == pytest.approx([2.5, 5.0, 0.98, 0.95])  # 50/20, 100/20, 1960/2000, 1900/2000
    worse = _curve(
        {"fixed": [20.0] * 8, "deadline": [20.0, 22.0, 70.0, 80.0, 90.0, 130.0, 95.0, 98.0]},
        {"fixed": [100.0] * 8, "deadline": [100.0] * 7 + [1700.0]},
        {"fixed": 2000.0, "deadline": 1800.0})
    assert [t.passed for t in curve_targets(worse)] == [False] * 4  # 3.5x, 6.5x, 0.9x, 0.85x
    no_light = _curve({"fixed": [20.0] * 8, "deadline": [None] + [20.0] * 7},
                      {"fixed": [100.0] * 8, "deadline": [100.0] * 8},
                      {"fixed": 2000.0, "deadline": 2000.0})
    growth = curve_targets(no_light)[:2]
    assert all(math.isnan(t.measured) and not t.passed for t in growth)  # n/a is a miss
    assert curve_targets(None) == []  # the curve did not run: no targets


def test_the_report_has_a_curve_table_per_policy_and_both_policies_ratios():
    from bench.curve import section

    text = "\n".join(section(GOOD_CURVE))
    assert "### Latency against load" in text
    fixed, deadline = text.split("`--batch-policy deadline`")
    assert "`--batch-policy fixed`: sustained max 2000 results/s (1.00x the fixed one" in fixed
    header = next(l for l in fixed.splitlines() if l.startswith("| load"))
    assert [c.strip() for c in header.strip("|").split("|")][:9] == [
        "load", "offered/s", "sent/s", "results/s", "p50 ms", "p99 ms", "p99.9 ms",
        "goodput/s", "shed (expired)"]
    #                  offered sent  results p50  p99  p99.9 goodput shed  by sched
    assert _row(fixed, "85%")[:9] == ["1700", "1700", "1010", "250", "500", "750", "1000", "85",
                                      "42"]
    assert _row(deadline, "120%")[:8] == ["2400", "2400", "1910", "49", "98", "147", "1900",
                                          "120"]
    assert deadline.startswith(": sustained max 1960 results/s (0.98x the fixed one")
    assert _row(text, "p99 at 50% / its p99 at 10%") == ["4.50x", "2.50x", "<= 3x"]
    assert _row(text, "goodput at 120% offered / fixed max") == ["0.01x", "0.95x", ">= 0.9x"]
    assert section(None)[-1].startswith("The curve did not run")
    gap = _curve({"fixed": [None] * 8, "deadline": [20.0] * 8},
                 {"fixed": [0.0] * 8, "deadline": [100.0] * 8},
                 {"fixed": 2000.0, "deadline": 2000.0})
    gap_text = "\n".join(section(gap))
    assert _row(gap_text, "10%")[3:6] == ["none", "none", "none"]  # no results: no latency
    assert _row(gap_text, "p99 at 85% / its p99 at 10%")[0] == "n/a"


def _with_cpu(curve, max_cpu, shed_cpu):
    """`curve` where each policy's sustained max and all-shed phase carry these CPU figures."""
    import copy

    out = copy.deepcopy(curve)
    for figures in out["policies"].values():
        figures["max"] = {"cpu_us_per_request": dict(max_cpu)}
        if shed_cpu is not None:
            figures["all_shed"] = {**_point(1.2, None, 0.0, expired=2400),
                                   "requests": 2400, "cpu_us_per_request": dict(shed_cpu)}
    return out


def test_the_goodput_ceiling_is_what_the_cpu_left_by_the_shed_requests_can_serve():
    from bench.curve import goodput_ceiling, goodput_ceiling_per_s

    # 1.8 cores at 2000 us per served request; a shed one 700 us; 120% of 1000/s offered:
    # G * 2000 + (1200 - G) * 700 <= 1.8e6  ->  G <= (1.8e6 - 840000) / 1300 = 738.5/s
    curve = _with_cpu(GOOD_CURVE, {"total": 2000.0, "cores busy": 1.8}, {"total": 700.0})
    curve["reference_max_req_per_s"] = 1000.0
    assert goodput_ceiling_per_s(curve, "deadline") == pytest.approx(960000 / 1300)
    assert goodput_ceiling(curve, "deadline") == pytest.approx(0.73846, abs=1e-5)
    starved = _with_cpu(curve, {"total": 2000.0, "cores busy": 0.5}, {"total": 700.0})
    assert goodput_ceiling_per_s(starved, "fixed") == 0.0  # shedding alone fills the CPU
    free = _with_cpu(curve, {"total": 2000.0, "cores busy": 1.8}, {"total": 2500.0})
    assert goodput_ceiling_per_s(free, "fixed") == pytest.approx(1200.0)  # no bound at all
    roomy = _with_cpu(curve, {"total": 500.0, "cores busy": 1.8}, {"total": 100.0})
    assert goodput_ceiling_per_s(roomy, "fixed") == pytest.approx(1200.0)  # at most R
    older = _with_cpu(GOOD_CURVE, {"total": 2000.0, "cores busy": 1.8}, None)
    assert math.isnan(goodput_ceiling(older, "deadline"))  # no all-shed phase measured


def test_the_report_gives_cores_busy_per_point_and_the_all_shed_phase_and_its_ceiling():
    from bench.compare import MISSING, curve_comparison
    from bench.curve import CEILING_LABEL, section

    shed = {"worker python threads": 300.0, "worker native threads (XLA, JAX: the model)": 5.0,
            "broker": 250.0, "bench producer + consumer": 145.0, "total": 700.0,
            "cores busy": 1.52}
    curve = _with_cpu(GOOD_CURVE, {"total": 2000.0, "cores busy": 1.8}, shed)
    curve["policies"]["deadline"]["points"][2]["cpu_us_per_request"]["cores busy"] = 1.7
    text = "\n".join(section(curve))
    fixed, deadline = text.split("`--batch-policy deadline`")
    assert _row(deadline, "50%")[-2:] == ["900", "1.7"]  # CPU us/req, cores busy
    assert _row(fixed, "50%")[-1] == "n/a"  # not measured (an older run)
    # R = 2400/s: (1.8e6 - 2400 * 700) / 1300 = 92.3/s, 0.05x the fixed max of 2000/s
    assert ("All shed (2400/s offered, every request due when sent: 2400 of 2400 "
            "dead-lettered `expired`, 1.52 cores busy): 700 µs of CPU per request, all "
            "processes (worker 305, broker 250, load generator 145), against 2000 µs per "
            "request served at the sustained max (1.80 cores busy)") in deadline
    assert "CPU only up to 92 results/s (0.05x the fixed max)" in deadline
    assert _row(text, CEILING_LABEL) == ["0.05x", "0.05x", "(a bound, not a target)"]
    assert "All shed" not in "\n".join(section(GOOD_CURVE))  # older runs: no such line
    kafka = _run("kafka", "Apache Kafka 4.1.1", light_p99=12.5, max_rate=2100.0,
                 broker_cpu=180.0)
    kafka["end_to_end"]["curve"] = curve
    older = _run("embedded", "embedded broker (tansu)", light_p99=25.7, max_rate=1692.3,
                 broker_cpu=256.0)
    older["end_to_end"]["curve"] = GOOD_CURVE
    table = curve_comparison({"embedded": older, "kafka": kafka})
    assert _row(table, "deadline: the CPU's goodput ceiling/s at 120%") == [MISSING, "92.3"]


def test_results_md_sets_each_brokers_curve_side_by_side_and_links_the_plot(tmp_path):
    from bench.compare import MISSING, NOT_RUN, curve_comparison, document

    kafka = _run("kafka", "Apache Kafka 4.1.1", light_p99=12.5, max_rate=2100.0,
                 broker_cpu=180.0)
    kafka["end_to_end"]["curve"] = GOOD_CURVE
    older = _run("embedded", "embedded broker (tansu)", light_p99=25.7, max_rate=1692.3,
                 broker_cpu=256.0)  # a results file from before the curve
    text = curve_comparison({"embedded": older, "kafka": kafka}, "plots/latency_vs_load.png")
    assert _row(text, "deadline: max results/s") == [MISSING, "1960"]
    assert _row(text, "fixed: p99 ms at 85%") == [MISSING, "500"]
    assert _row(text, "deadline: p99 ms at 85%") == [MISSING, "100"]
    assert _row(text, "deadline: goodput/s at 120%") == [MISSING, "1900"]
    assert text.rstrip().endswith("(plots/latency_vs_load.png)")
    assert _row(curve_comparison({"embedded": None, "kafka": kafka}),
                "fixed: p99 ms at 10%") == [NOT_RUN, "20"]
    full = document({"embedded": None, "kafka": kafka}, lambda run: "### detail\n",
                    "plots/latency_vs_load.png")
    assert full.index("## Latency against load") < full.index("### detail")
    assert "![" in full and "](plots/latency_vs_load.png)" in full
    assert "![" not in document({"embedded": None, "kafka": kafka}, lambda run: "")


def _png_size(path):
    """(width, height) from a PNG's header."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_the_plot_is_drawn_from_the_results_files_curves(tmp_path):
    from bench.plots import PLOT_NAME, latency_vs_load, plot_path

    kafka = _run("kafka", "Apache Kafka 4.1.1", light_p99=12.5, max_rate=2100.0,
                 broker_cpu=180.0)
    kafka["end_to_end"]["curve"] = GOOD_CURVE
    embedded = _run("embedded", "embedded broker (tansu)", light_p99=25.7, max_rate=1692.3,
                    broker_cpu=256.0)
    embedded["end_to_end"]["curve"] = _curve(
        {"fixed": [None] + [30.0] * 7, "deadline": [25.0] * 8},  # a point without results
        {"fixed": [0.0] * 8, "deadline": [90.0] * 8}, {"fixed": 1500.0, "deadline": 1500.0},
        reference=1500.0)
    path = plot_path(tmp_path / "report" / "results.md")
    assert path == tmp_path / "report" / "plots" / PLOT_NAME
    assert latency_vs_load({"embedded": embedded, "kafka": kafka}, path) == path
    assert _png_size(path) == (1200, 480)  # two panels, 12 x 4.8 in at 100 dpi
    only_older = tmp_path / "none.png"
    del embedded["end_to_end"]["curve"]
    assert latency_vs_load({"embedded": embedded, "kafka": None}, only_older) is None
    assert not only_older.exists()  # no curve in any run: no picture


def test_bench_write_puts_the_plot_beside_the_report_and_links_it(tmp_path, monkeypatch):
    import argparse
    import json

    from bench import e2e

    run = _run("embedded", "embedded broker (tansu)", light_p99=25.7, max_rate=1692.3,
               broker_cpu=256.0)
    run["end_to_end"]["curve"] = GOOD_CURVE
    monkeypatch.setattr(e2e, "report", lambda results: "### detail\n")  # the run's own figures
    markdown = tmp_path / "out" / "results.md"
    e2e.write(run, argparse.Namespace(results_dir=str(tmp_path), quick=False,
                                      markdown=str(markdown)))
    assert json.loads((tmp_path / "results-embedded.json").read_text())["end_to_end"]["curve"]
    assert _png_size(tmp_path / "out" / "plots" / "latency_vs_load.png") == (1200, 480)
    assert "](plots/latency_vs_load.png)" in markdown.read_text()


def test_the_quick_bench_keeps_the_curve_short():
    from bench.e2e import QUICK, BenchConfig, parse_args

    assert QUICK.curve_seconds < BenchConfig().curve_seconds
    assert parse_args(["--curve-seconds", "3"]).config.curve_seconds == 3.0

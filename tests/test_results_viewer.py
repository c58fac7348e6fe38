import asyncio
import contextlib
import io
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from phoenix.actions import ACTION_NAMES
from training.world import RequestTruth
from tools.viewer import (LiveStats, Screen, Summary, bar, diversity_factor, format_dead_letter,
                          format_result, latency_of, legend, raw_score, redrawing, render)


def result(order_posts, request_id="r1", sent=1000):
    return {"schema": "ranking-result.v1", "request_id": request_id, "user_id": 42,
            "model_version": "m1", "worker_id": "w",
            "ranked": [{"post_id": p, "author_id": 7, "score": 1.0 - i / 10,
                        "probabilities": {a: (0.9 if a == "reply" else 0.1)
                                          for a in ACTION_NAMES}}
                       for i, p in enumerate(order_posts)],
            "timings": {"queue_wait_ms": 1.0, "model_ms": 2.0},
            "request_timestamp_ms": sent, "produced_at_ms": sent + 3}


@pytest.mark.parametrize("p,expected", [(0.0, 0), (0.5, 10), (1.0, 20), (1.7, 20)],
                         ids=["zero", "half", "one", "clamped"])
def test_bar_width(p, expected):
    text = bar(p)
    assert len(text) == 20 and text.count("█") == expected


def test_format_result_shows_ids_top_action_and_score():
    text = format_result(result([11, 12]), latency_ms=5.0)
    assert "r1" in text and "post" in text and "11" in text and "latency 5.0 ms" in text
    assert text.splitlines()[1].split("score")[1].strip().startswith("+1.000")
    assert "reply" in text.splitlines()[1]  # the most likely action is shown first


def test_format_dead_letter_names_source_and_field():
    letter = {"error": {"code": "invalid", "message": "bad id", "field": "user_id"},
              "source": {"topic": "req", "partition": 2, "offset": 9}}
    assert format_dead_letter(letter) == "DEAD LETTER req[2]@9 invalid at user_id: bad id"


def test_summary_counts_latency_and_ndcg_against_truth():
    probs = np.zeros((3, len(ACTION_NAMES)))
    probs[:, 0] = [0.9, 0.1, 0.5]  # favorite only matters with favorite-only weights
    truth = RequestTruth("r1", 42, np.array([11, 12, 13], np.uint64), probs,
                         np.array([True, False, True]))
    weights = np.zeros(len(ACTION_NAMES), np.float32)
    weights[0] = 1.0
    summary = Summary({"r1": truth}, weights)
    summary.add_result(result([11, 13, 12]), latency_ms=10.0)  # the ideal order
    assert summary.ndcg.mean == pytest.approx(1.0)
    summary.add_result(result([12, 13, 11]), latency_ms=30.0)  # the worst order
    # Gains shifted to [0.8, 0, 0.4]: DCG = 0.4/log2(3) + 0.8/2, IDCG = 0.8 + 0.4/log2(3).
    worst = (0.4 / np.log2(3) + 0.4) / (0.8 + 0.4 / np.log2(3))
    assert summary.ndcg.mean == pytest.approx((1.0 + worst) / 2)
    summary.add_dead_letter({"error": {"code": "invalid"}})
    line = summary.line()
    assert "results 2" in line and "dead letters 1 (invalid 1)" in line
    assert "p50 20.0 ms" in line and "rolling NDCG@5" in line
    assert summary.total == 3


def test_summary_splits_results_by_model_version_only_when_there_are_several():
    summary = Summary()
    summary.add_result({**result([11]), "model_version": "v1"}, latency_ms=10.0)
    assert "by model" not in summary.line()
    summary.add_result({**result([11]), "model_version": "canary"}, latency_ms=40.0)
    summary.add_result({**result([11]), "model_version": "v1"}, latency_ms=20.0)
    assert "by model: canary 1 results p50 40.0 ms; v1 2 results p50 15.0 ms" in summary.line()


@pytest.mark.kafka  # starts a broker and a worker (as `make demo` does)
@pytest.mark.timeout(180)
def test_demo_runs_end_to_end():
    """`make demo`, shrunken: broker, worker, producer, viewer; exits 0 when every request
    was answered. Given no ports, it picks free ones."""
    with contextlib.ExitStack() as stack:
        try:  # the worker's default port taken: the demo must pick a free one by itself
            stack.enter_context(socket.create_server(("0.0.0.0", 9100)))
        except OSError:
            pass  # taken already
        run = subprocess.run([sys.executable, "-m", "tools.demo", "--count", "40"],
                             capture_output=True, text=True, timeout=170)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "summary: results" in run.stdout
    assert "ranker_requests_total 40.0" in run.stdout
    assert "worker stopped (exit code 0)" in run.stdout
    assert run.stdout.count("legend:") == 1


def probabilities(**given: float) -> dict[str, float]:
    return {a: given.get(a, 0.0) for a in ACTION_NAMES}


def test_author_diversity_shows_the_raw_score_and_the_factor():
    """The second post has the higher favorite probability but ranks below the first: its
    author has a post above it by raw score (not shown, k = 1), so its score is 0.7 x its
    raw score; the third has two (0.7^2)."""
    first, second = probabilities(favorite=0.5), probabilities(favorite=0.6)
    ranked = [{"post_id": 1, "author_id": 8, "score": raw_score(first), "probabilities": first},
              {"post_id": 2, "author_id": 7, "score": 0.7 * raw_score(second),
               "probabilities": second},
              {"post_id": 3, "author_id": 7, "score": 0.49 * raw_score(second),
               "probabilities": second}]
    lines = format_result({**result([]), "ranked": ranked}, None).splitlines()
    assert "raw" not in lines[1] and "same author" not in lines[1]
    assert "score  +0.420 (raw +0.600, same author x0.70)" in lines[2]
    assert "score  +0.294 (raw +0.600, same author x0.49)" in lines[3]


@pytest.mark.parametrize("score, raw, factor", [
    (0.42, 0.6, 0.7), (-0.6 / 0.49, -0.6, 0.49), (0.3 * 0.6, 0.6, 0.3), (0.6, 0.6, None),
    (0.6 * (1 - 1e-7), 0.6, None), (2e-6, 3e-6, None), (0.0, 0.0, None)],
    ids=["positive", "negative_divided", "floor", "none", "float_rounding", "near_zero_raw",
         "zero"])
def test_diversity_factor(score, raw, factor):
    assert diversity_factor(score, raw) == (pytest.approx(factor) if factor else None)


def test_negative_actions_are_shown_above_the_threshold_only():
    probs = probabilities(favorite=0.9, reply=0.8, repost=0.7, report=0.2, block_author=0.01)
    ranked = [{"post_id": 1, "author_id": 8, "score": raw_score(probs), "probabilities": probs}]
    line = format_result({**result([]), "ranked": ranked}, None).splitlines()[1]
    assert "negative: report 0.20" in line and "block_author" not in line
    line = format_result({**result([]), "ranked": ranked}, None,
                         negative_threshold=0.3).splitlines()[1]
    assert "negative" not in line


def test_latency_is_request_timestamp_to_produced_at_not_to_reading():
    assert latency_of(result([11], sent=1_000)) == 3.0  # produced_at_ms = sent + 3
    assert latency_of({**result([11]), "request_timestamp_ms": None}) is None


def test_legend_names_every_field_shown():
    text = " ".join(legend(0.05).split())
    for field in ("wait", "rank", "latency", "timestamp_ms", "produced_at_ms", "score",
                  "raw R, same author xF", "0.7^k", "negative:", "not_interested",
                  "block_author", "mute_author", "report", "above 0.05", "DEAD LETTER"):
        assert field in text, field


def test_viewer_refuses_a_misspelt_flag_in_one_line(capsys):
    from tools.viewer import main
    assert main(["--idle-timeout-s", "1", "--summary-onyl"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("results: error: unknown flag --summary-onyl; did you mean "
                          "--summary-only?") and err.count("\n") == 1


def test_the_viewer_recovers_the_worker_s_diversity_factors(tiny_runner):
    """Through the real pipeline: of 5 candidates by one author, every one ranked after the
    author's first shows its factor (0.7^k, floor 0.3); the others show none."""
    from worker import codec
    from worker.assembly import Buckets
    from worker.pipeline import InputRecord, RankingPipeline

    pipeline = RankingPipeline.create(tiny_runner, Buckets(batch_sizes=(1,), widths=(8,)), "w",
                                      max_candidates=8)
    candidates = [{"post_id": 100 + i, "author_id": 7 if i < 5 else 50 + i, "surface": 0}
                  for i in range(8)]
    request = {"schema": "ranking-request.v1", "request_id": "div", "user_id": 3,
               "history": [{"post_id": 9, "author_id": 7, "actions": ["favorite"],
                            "surface": 0}], "candidates": candidates, "timestamp_ms": 1}
    record = InputRecord(codec.encode_request(request), None, "t", 0, 0)
    outcome, = pipeline.process(pipeline.decode([record])).outcomes
    ranked = codec.decode_message(outcome.value)["ranked"]
    lines = format_result({**result([]), "ranked": ranked}, None, top_candidates=8).splitlines()
    shown = list(zip(ranked, lines[1:]))
    same_author = sorted(((c, line) for c, line in shown if c["author_id"] == 7),
                         key=lambda item: -raw_score(item[0]["probabilities"]))
    assert not any("same author" in line for c, line in shown if c["author_id"] != 7)
    factors = [line.split("same author ")[1].split(")")[0] if "same author" in line else None
               for _, line in same_author]
    assert factors == [None, "x0.70", "x0.49", "x0.34", "x0.30"]


# ---- --live: the windowed stats, the frame, the screen ------------------------------------


def dead(code: str) -> dict:
    return {"error": {"code": code}}


def versioned(version: str, latency: float) -> dict:
    return {**result([11], sent=1000), "model_version": version, "produced_at_ms": 1000 + latency}


def live_stats(window_s: float = 10.0) -> LiveStats:
    """20 results of m1 at 0, 100, ..., 1900 ms (latency = 1 + arrival/100), dead letters
    invalid at 200 and 5000 ms and expired at 9000 ms; read from 0 ms."""
    stats = LiveStats(started_ms=0, window_s=window_s)
    arrivals = [(i * 100, versioned("m1", 1.0 + i)) for i in range(20)] + [
        (200, dead("invalid")), (5000, dead("invalid")), (9000, dead("expired"))]
    for at, message in sorted(arrivals, key=lambda arrival: arrival[0]):  # as they arrive
        if "error" in message:
            stats.add_dead_letter(message, arrived_ms=at)
        else:
            stats.add_result(message, latency_of(message), arrived_ms=at)
    return stats


def test_live_rates_are_over_the_window_and_old_arrivals_leave_it():
    stats = live_stats()
    # (now - 10 s, now]: the result at 0 ms, exactly 10 s old, has left.
    assert stats.rates(10_000) == (pytest.approx(1.9), pytest.approx(0.3))
    assert stats.rates(10_500) == (pytest.approx(1.4), pytest.approx(0.2))
    assert stats.window(10_500).results == 14 and stats.summary.results == 20


def test_live_rates_before_a_full_window_are_over_the_time_read_so_far():
    assert live_stats().rates(2_000)[0] == pytest.approx(10.0)  # 20 results over 2 s, not 10
    stats = LiveStats(started_ms=0)
    for at in (0, 100, 200):
        stats.add_result(result([11]), 3.0, arrived_ms=at)
    assert stats.rates(200)[0] == pytest.approx(3.0)  # over at least 1 s, not 0.2 s


def test_a_quiet_stream_drops_the_window_to_zero_and_keeps_the_totals():
    stats = live_stats()
    assert stats.rates(19_000) == (0.0, 0.0)
    window = stats.window(19_000)
    assert window.percentile(50) is None and not window.dead_letters
    assert stats.summary.results == 20 and stats.summary.percentile(50) == pytest.approx(10.5)


def test_live_percentiles_by_code_and_by_version_per_window():
    stats = live_stats()
    for latency, at in ((100.0, 9_500), (300.0, 9_600)):
        message = versioned("canary", latency)
        stats.add_result(message, latency_of(message), arrived_ms=at)
    window = stats.window(11_000)  # m1 from 1100 ms: latencies 12..20; canary both
    assert window.percentile(50, "m1") == pytest.approx(16.0)
    assert window.percentile(50, "canary") == pytest.approx(200.0)
    assert window.percentile(99) == pytest.approx(np.percentile([*range(12, 21), 100, 300], 99))
    assert dict(window.version_results) == {"m1": 9, "canary": 2}
    assert dict(window.dead_letters) == {"invalid": 1, "expired": 1}
    assert dict(stats.summary.dead_letters) == {"invalid": 2, "expired": 1}


def cells(frame: str, label: str) -> list[str]:
    """The cells of the frame's row that starts with `label` (cells are 2+ spaces apart)."""
    line, = [line for line in frame.splitlines() if line.strip().startswith(label + "  ")]
    return re.split(r"\s{2,}", line.strip())[1:]


def test_the_live_frame_shows_the_window_and_the_totals():
    stats = live_stats()
    message = versioned("canary", 100.0)
    stats.add_result(message, latency_of(message), arrived_ms=9_500)
    frame = render(stats, 10_500)  # m1 from 600 ms: 14 results, latencies 7..20
    assert frame.splitlines()[0].startswith("results viewer, live: elapsed 10.5 s, window 10 s")
    assert cells(frame, "results") == ["15", "1.5/s", "21"]
    assert cells(frame, "dead letters") == ["2", "0.2/s", "3"]
    assert cells(frame, "latency p50") == ["14.0 ms", "11.0 ms"]
    assert cells(frame, "invalid") == ["1", "2"] and cells(frame, "expired") == ["1", "1"]
    assert cells(frame, "m1") == ["14", "93.3%", "13.5 ms", "20", "95.2%", "10.5 ms"]
    assert cells(frame, "canary") == ["1", "6.7%", "100.0 ms", "1", "4.8%", "100.0 ms"]
    quiet = render(stats, 30_000)
    assert cells(quiet, "results") == ["0", "0.0/s", "21"]
    assert cells(quiet, "latency p50") == ["-", "11.0 ms"]
    assert cells(quiet, "m1") == ["0", "-", "-", "20", "95.2%", "10.5 ms"]


def test_the_live_frame_fits_a_24_by_100_terminal_whatever_it_is_given():
    stats = LiveStats(started_ms=0)
    for i in range(12):
        message = versioned(f"model-{i:02d}-" + "x" * 80, float(i))
        stats.add_result(message, latency_of(message), arrived_ms=i)
        stats.add_dead_letter(dead(f"code_{i:02d}"), arrived_ms=i)
    lines = render(stats, 1_000).splitlines()
    assert len(lines) <= 24 and max(map(len, lines)) <= 100
    assert lines.count("  … 7 more") == 2  # codes, then versions: 5 of 12 shown each
    assert any(line.startswith("  model-00-xxx") and "…" in line for line in lines)


def test_the_screen_redraws_in_place_on_a_terminal_and_in_sequence_elsewhere():
    terminal, pipe = io.StringIO(), io.StringIO()
    for frame in ("one", "two"):
        Screen(terminal, in_place=True).draw(frame)
        Screen(pipe).draw(frame)  # a StringIO is no terminal
    assert terminal.getvalue() == "\x1b[H\x1b[Jone\n\x1b[H\x1b[Jtwo\n"
    assert pipe.getvalue().split("\f\n") == ["", "one\n", "two\n"]


def test_redrawing_draws_while_nothing_arrives_and_stops_with_the_reading():
    async def run() -> tuple[int, set]:
        drawn, enough = 0, asyncio.Event()

        def draw() -> None:
            nonlocal drawn
            drawn += 1
            if drawn == 3:
                enough.set()
        # No message ever arrives; the wait_for only turns a hang into a failure.
        await asyncio.wait_for(redrawing(enough.wait(), draw, refresh_s=0.001), 30)
        return drawn, asyncio.all_tasks() - {asyncio.current_task()}
    drawn, left = asyncio.run(run())
    assert drawn == 3 and not left


@pytest.mark.parametrize("flags, error", [
    (["--live", "--json"], "--live draws its own screen"),
    (["--live", "--refresh-s", "0"], "--refresh-s must be > 0, got 0"),
    (["--live", "--window-s", "-1"], "--window-s must be > 0, got -1")],
    ids=["json", "refresh", "window"])
def test_the_viewer_refuses_live_flags_that_cannot_work(capsys, flags, error):
    from tools.viewer import main
    assert main(["--idle-timeout-s", "1", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"results: error: {error}") and err.count("\n") == 1


@pytest.mark.timeout(120)
def test_live_viewer_follows_the_broker_and_its_last_frame_has_the_totals(kafka):
    """`--live` in a pipe: frames after form feeds (no escapes), redrawn while the topics are
    quiet; the last one counts every message read, then the summary line."""
    from tools.launcher import ROOT
    from worker import codec

    results, dead_letters = kafka.new_topic(), kafka.new_topic()
    kafka.produce(results, [codec.encode_result(versioned(version, latency)) for version, latency
                            in (("m1", 10), ("m1", 20), ("canary", 100), ("m1", 30),
                                ("canary", 200), ("m1", 40))])
    kafka.produce(dead_letters, [
        codec.encode_dead_letter(b"x", topic="req", partition=0, offset=i, code=code,
                                 message="why")
        for i, code in enumerate(("invalid", "expired", "invalid"))])
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANKER_")}
    run = subprocess.run(
        [sys.executable, "-m", "tools.viewer", "--live", "--refresh-s", "0.2",
         "--idle-timeout-s", "2", "--bootstrap", kafka.bootstrap, "--results-topic", results,
         "--dead-letter-topic", dead_letters],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=100)
    assert run.returncode == 0, run.stderr
    assert "\x1b[" not in run.stdout and "legend:" not in run.stdout
    frames = run.stdout.split("\f\n")[1:]
    assert len(frames) >= 2, run.stdout  # redrawn during the 2 s idle, then the last frame
    last, summary = frames[-1].rstrip("\n").rsplit("\n", 1)
    assert cells(last, "results")[-1] == "6" and cells(last, "dead letters")[-1] == "3"
    assert cells(last, "latency p50")[-1] == "35.0 ms"
    assert cells(last, "invalid")[-1] == "2" and cells(last, "expired")[-1] == "1"
    assert cells(last, "m1")[-3:] == ["4", "66.7%", "25.0 ms"]
    assert cells(last, "canary")[-3:] == ["2", "33.3%", "150.0 ms"]
    assert summary.startswith("summary: results 6, dead letters 3 (expired 1, invalid 2)")

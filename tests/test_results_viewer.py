import subprocess
import sys

import numpy as np
import pytest

from phoenix.actions import ACTION_NAMES
from training.world import RequestTruth
from tools.broker import free_port
from tools.viewer import Summary, bar, format_dead_letter, format_result


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
    assert "r1" in text and "post" in text and "11" in text and "e2e 5.0 ms" in text
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


@pytest.mark.kafka  # starts a broker and a worker (as `make demo` does)
@pytest.mark.timeout(180)
def test_demo_runs_end_to_end():
    """`make demo`, shrunken: broker, worker, producer, viewer; exits 0 when every request
    was answered."""
    run = subprocess.run([sys.executable, "-m", "tools.demo", "--count", "40",
                          "--metrics-port", str(free_port())],
                         capture_output=True, text=True, timeout=170)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "summary: results" in run.stdout
    assert "ranker_requests_total 40.0" in run.stdout
    assert "worker stopped (exit code 0)" in run.stdout

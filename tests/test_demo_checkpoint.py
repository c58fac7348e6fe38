"""The shipped demo checkpoint loads, is the demo architecture, and ranks held-out world
requests far better than a random model (a small, fast version of `make eval`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from phoenix.config import TransformerConfig
from phoenix.runner import RankingRunner
from training.evaluate import EvalConfig, evaluate, held_out, rank_with_runner, zero_runner
from training.world import World, WorldConfig

DEMO = Path(__file__).resolve().parents[1] / "checkpoints" / "demo.npz"
# Held-out draws unlike training (seed 0) and the eval default (12345).
EVAL = EvalConfig(requests=200, seed=2024)


@pytest.fixture(scope="module")
def trained() -> RankingRunner:
    return RankingRunner.from_checkpoint(DEMO)


@pytest.fixture(scope="module")
def results(trained):
    return evaluate(trained, EVAL, methods=("trained", "table", "random", "oracle"))


def test_demo_checkpoint_is_small_and_the_demo_architecture(trained):
    assert DEMO.stat().st_size <= 20 * 1024 * 1024
    config = trained.config
    assert config.transformer == TransformerConfig()  # D=128, 2 layers: the golden model
    assert (config.history_seq_len, config.candidate_seq_len) == (32, 8)
    assert trained.model_version.startswith("demo-world0-")


@pytest.mark.slow
def test_trained_model_beats_the_random_model(results):
    trained, random = results["trained"], results["random"]
    assert trained.auc["favorite"] > 0.7
    assert trained.auc["favorite"] > random.auc["favorite"] + 0.15
    assert trained.mean_auc > random.mean_auc + 0.1
    assert trained.ndcg_at_5 > random.ndcg_at_5 + 0.1


def test_the_history_table_path_gives_the_trained_figures_exactly(results):
    # Same requests, history sent as engagements and read back from a table: same rankings.
    trained, table = results["trained"], results["table"]
    assert table.auc == trained.auc and table.ndcg_at_5 == trained.ndcg_at_5
    assert table.ndcg_all == trained.ndcg_all


def test_oracle_bounds_the_trained_model(results):
    # The oracle ranks by the very gains NDCG uses (only author diversity moves it off 1):
    # it fails if evaluation misaligns orders, probabilities or truths.
    oracle = results["oracle"]
    assert oracle.ndcg_at_5 > 0.97
    assert oracle.ndcg_at_5 >= results["trained"].ndcg_at_5
    assert oracle.auc["favorite"] > results["trained"].auc["favorite"] - 0.02


def test_zero_model_scores_one_half_and_keeps_input_order(trained):
    data = held_out(World.create(WorldConfig()), 30, seed=99)
    ranked = rank_with_runner(zero_runner(trained.config), data.wire)
    assert all(np.all(p == 0.5) for p in ranked.probabilities)
    distinct = [(order, request) for order, request in zip(ranked.orders, data.wire)
                if len({c["author_id"] for c in request["candidates"]})
                == len(request["candidates"])]
    assert distinct, "expected some requests whose candidates have distinct authors"
    for order, request in distinct:  # no author repeats: nothing but the tie-break moves
        np.testing.assert_array_equal(order, np.arange(len(request["candidates"])))

"""The synthetic world: determinism, probability shape and direction, sampling invariants."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from phoenix.actions import ACTION_INDEX, ACTION_NAMES, NEGATIVE_ACTIONS, NUM_ACTIONS
from training.world import RequestTruth, World, WorldConfig, WorldError

SMALL = WorldConfig(num_users=300, num_authors=40, num_posts=800, seed=3)


@pytest.fixture(scope="module")
def world() -> World:
    return World.create(WorldConfig())


@pytest.fixture(scope="module")
def batch(world) -> dict[str, np.ndarray]:
    return world.sample_training_batch(np.random.default_rng(11), 2048)


def _world_arrays(world: World) -> dict[str, np.ndarray]:
    return {f.name: getattr(world, f.name) for f in dataclasses.fields(world)
            if isinstance(getattr(world, f.name), np.ndarray)}


def test_world_is_deterministic_by_seed():
    a, b, c = World.create(SMALL), World.create(SMALL), World.create(
        dataclasses.replace(SMALL, seed=4))
    for name, value in _world_arrays(a).items():
        np.testing.assert_array_equal(value, _world_arrays(b)[name], err_msg=name)
    assert not np.array_equal(a.user_vec, c.user_vec)
    assert not np.array_equal(a.post_id(np.arange(10)), c.post_id(np.arange(10)))

    batch_a = a.sample_training_batch(np.random.default_rng(5), 64)
    batch_b = b.sample_training_batch(np.random.default_rng(5), 64)
    for name in batch_a:
        np.testing.assert_array_equal(batch_a[name], batch_b[name], err_msg=name)
    batch_c = a.sample_training_batch(np.random.default_rng(6), 64)
    assert not np.array_equal(batch_a["candidate_post_ids"], batch_c["candidate_post_ids"])


def test_probabilities_are_in_open_unit_interval(world):
    rng = np.random.default_rng(0)
    n = 20000
    probs = world.probabilities_by_index(rng.integers(world.config.num_users, size=n),
                                         rng.integers(world.config.num_posts, size=n),
                                         rng.integers(world.config.num_surfaces, size=n))
    assert probs.shape == (n, NUM_ACTIONS)
    assert np.all(np.isfinite(probs)) and np.all(probs > 0.0) and np.all(probs < 1.0)


def test_actions_follow_affinity_with_their_sign(world):
    # Affinity proxy independent of the probability code: the user-post cosine of the latent
    # vectors. Positive actions must correlate with it, the four negative ones anti-correlate.
    rng = np.random.default_rng(1)
    n = 20000
    users = rng.integers(world.config.num_users, size=n)
    posts = rng.integers(world.config.num_posts, size=n)
    probs = world.probabilities_by_index(users, posts, rng.integers(16, size=n))
    cosine = np.einsum("nk,nk->n", world.user_vec[users], world.post_vec[posts])
    for j, name in enumerate(ACTION_NAMES):
        corr = np.corrcoef(cosine, probs[:, j])[0, 1]
        if name in NEGATIVE_ACTIONS:
            assert corr < -0.3, (name, corr)
        else:
            assert corr > 0.3, (name, corr)


def test_actions_have_distinct_rates(batch):
    rates = batch["true_probs"].mean(axis=(0, 1))  # [A]
    assert rates[ACTION_INDEX["favorite"]] > 20 * rates[ACTION_INDEX["report"]]
    assert len(np.unique(np.round(rates, 4))) == NUM_ACTIONS


def test_relevant_candidates_are_more_engaging(batch):
    relevant = batch["relevant"]
    fav = batch["true_probs"][..., ACTION_INDEX["favorite"]]  # [B, C]
    not_interested = batch["true_probs"][..., ACTION_INDEX["not_interested"]]
    assert relevant.sum(axis=1).tolist() == [4] * len(relevant)  # round(0.5 * C) per request
    assert fav[relevant].mean() > fav[~relevant].mean() + 0.3
    assert not_interested[relevant].mean() < not_interested[~relevant].mean()
    # Per request too, not just on average: the best relevant beats the worst irrelevant.
    best_rel = np.where(relevant, fav, -1).max(axis=1)
    worst_irr = np.where(~relevant, fav, 2).min(axis=1)
    assert np.mean(best_rel > worst_irr) > 0.95


def test_labels_follow_the_true_probabilities(batch):
    probs, labels = batch["true_probs"], batch["labels"]
    assert set(np.unique(labels).tolist()) <= {0.0, 1.0}
    # Per action, the label rate matches the mean probability within 5 standard errors.
    n = probs.shape[0] * probs.shape[1]
    mean_p = probs.mean(axis=(0, 1))
    se = np.sqrt(mean_p * (1 - mean_p) / n)
    assert np.all(np.abs(labels.mean(axis=(0, 1)) - mean_p) < 5 * se + 1e-3)


def test_history_layout_and_bounds(world, batch):
    s = world.config.history_len
    lengths = batch["history_len"]
    assert lengths.min() >= s // 2 and lengths.max() <= s
    assert lengths.min() < lengths.max()  # lengths actually vary
    valid = np.arange(s)[None, :] < lengths[:, None]  # [B, S]
    np.testing.assert_array_equal(batch["history_post_ids"] != 0, valid)
    np.testing.assert_array_equal(batch["history_author_ids"] != 0, valid)
    assert not batch["history_actions"][~valid].any()
    assert not batch["history_surfaces"][~valid].any()
    # Calibration documented in training/world.py: about 30% of actions set per history item.
    assert 0.22 < batch["history_actions"][valid].mean() < 0.38


def test_ids_are_nonzero_distinct_and_invertible(world, batch):
    for name in ("user_ids", "candidate_post_ids", "candidate_author_ids"):
        assert np.all(batch[name] != 0), name
    cfg = world.config
    for to_id, to_index, n in ((world.user_id, world.user_index, cfg.num_users),
                               (world.post_id, world.post_index, cfg.num_posts),
                               (world.author_id, world.author_index, cfg.num_authors)):
        ids = to_id(np.arange(n))
        assert ids.dtype == np.uint64 and np.all(ids != 0)
        assert len(np.unique(ids)) == n
        assert ids.max() > np.uint64(2**60)  # spread over the u64 range, not small counters
        np.testing.assert_array_equal(to_index(ids), np.arange(n))
    # Authors of the batch are the authors of the posts.
    posts = world.post_index(batch["candidate_post_ids"])
    np.testing.assert_array_equal(world.author_index(batch["candidate_author_ids"]),
                                  world.post_author[posts])


def test_candidates_are_distinct_and_not_in_history(batch):
    cands, hist = batch["candidate_post_ids"], batch["history_post_ids"]
    for row in range(len(cands)):
        assert len(set(cands[row].tolist())) == cands.shape[1]
        assert not set(cands[row].tolist()) & set(hist[row][hist[row] != 0].tolist())
        assert len(set(hist[row][hist[row] != 0].tolist())) == int(batch["history_len"][row])


def test_true_probabilities_by_wire_id(world, batch):
    probs = world.true_probabilities(batch["user_ids"][:, None], batch["candidate_post_ids"],
                                     batch["candidate_surfaces"])
    np.testing.assert_allclose(probs, batch["true_probs"], rtol=1e-6)


def test_foreign_ids_and_surfaces_are_refused(world):
    other = World.create(dataclasses.replace(WorldConfig(), seed=99))
    with pytest.raises(WorldError, match="do not belong to the world with seed 0"):
        world.true_probabilities(other.user_id([0]), world.post_id([0]), [0])
    with pytest.raises(WorldError, match="post ids"):
        world.true_probabilities(world.user_id([0]), world.user_id([0]), [0])
    with pytest.raises(WorldError, match=r"surfaces must be in \[0, 16\)"):
        world.true_probabilities(world.user_id([0]), world.post_id([0]), [16])


def test_sample_request_follows_the_wire_contract(world):
    rng = np.random.default_rng(2)
    cfg = world.config
    for _ in range(20):
        request, truth = world.sample_request(rng)
        assert set(request) == {"schema", "request_id", "user_id", "history", "candidates"}
        assert request["schema"] == "ranking-request.v1"
        assert type(request["user_id"]) is int and 1 <= request["user_id"] < 2**64
        assert cfg.history_len // 2 <= len(request["history"]) <= cfg.history_len
        for item in request["history"]:
            assert set(item) == {"post_id", "author_id", "actions", "surface"}
            assert all(type(item[k]) is int for k in ("post_id", "author_id", "surface"))
            assert item["post_id"] > 0 and item["author_id"] > 0
            assert 0 <= item["surface"] < cfg.num_surfaces
            assert set(item["actions"]) <= set(ACTION_NAMES)
            assert len(set(item["actions"])) == len(item["actions"])
        post_ids = [c["post_id"] for c in request["candidates"]]
        assert len(post_ids) == cfg.num_candidates == len(set(post_ids))
        assert isinstance(truth, RequestTruth) and truth.request_id == request["request_id"]
        assert truth.probabilities.shape == (cfg.num_candidates, NUM_ACTIONS)
        assert truth.candidate_post_ids.tolist() == post_ids
        expected = world.true_probabilities(
            request["user_id"], np.array(post_ids, dtype=np.uint64),
            [c["surface"] for c in request["candidates"]])
        np.testing.assert_allclose(truth.probabilities, expected)


def test_truth_json_round_trip(world):
    _, truth = world.sample_request(np.random.default_rng(4), request_id="r-1")
    back = RequestTruth.from_json(truth.to_json())
    assert back.request_id == "r-1" and back.user_id == truth.user_id
    np.testing.assert_array_equal(back.candidate_post_ids, truth.candidate_post_ids)
    np.testing.assert_array_equal(back.relevant, truth.relevant)
    np.testing.assert_allclose(back.probabilities, truth.probabilities, atol=1e-6)


def test_small_world_samples(world):
    small = World.create(SMALL)
    batch = small.sample_training_batch(np.random.default_rng(0), 256)
    assert batch["candidate_post_ids"].shape == (256, SMALL.num_candidates)
    assert batch["history_actions"].shape == (256, SMALL.history_len, NUM_ACTIONS)


@pytest.mark.parametrize("changes, message", [
    pytest.param({"num_users": 0}, "num_users must be a positive int", id="no-users"),
    pytest.param({"relevant_fraction": 1.5}, r"relevant_fraction must be in \[0, 1\]",
                 id="fraction"),
    pytest.param({"num_posts": 50}, "num_posts .* is too small", id="few-posts"),
    pytest.param({"candidate_pool": 8}, "candidate_pool .* must be at least", id="small-pool"),
])
def test_config_errors(changes, message):
    with pytest.raises(WorldError, match=message):
        WorldConfig(**changes)

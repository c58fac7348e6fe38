"""Training on a shrunken model and world: the jitted step learns, compiles once, is
deterministic by seed, and writes a checkpoint the runner loads."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from phoenix.config import ConfigError, HashConfig, RankerConfig, TransformerConfig
from phoenix.model import build_model
from phoenix.runner import RankingRunner
from training.batches import BatchSampler, TrainBatch
from training.train import (TrainConfig, batch_loss, init_state, jitted_train_step,
                            make_optimizer, make_train_step, save_checkpoint, train)
from training.world import World, WorldConfig

SMALL_WORLD = WorldConfig(num_users=200, num_authors=30, num_posts=400, history_len=8,
                          num_candidates=4, history_pool=64, candidate_pool=16, seed=5)
TINY = RankerConfig(
    transformer=TransformerConfig(emb_size=16, num_layers=1, num_q_heads=2, num_kv_heads=1,
                                  key_size=8, widening_factor=2.0),
    hashes=HashConfig(user_rows=64, item_rows=128, author_rows=32),
    history_seq_len=8, candidate_seq_len=4)
TC = TrainConfig(steps=4, batch_size=16, learning_rate=1e-2, warmup_steps=0, log_every=2)


@pytest.fixture(scope="module")
def world() -> World:
    return World.create(SMALL_WORLD)


@pytest.fixture(scope="module")
def sampler(world) -> BatchSampler:
    return BatchSampler(world, TINY, TC.batch_size, seed=0)


@pytest.fixture(scope="module")
def loss_fn():
    apply_fn = build_model(TINY).apply
    return jax.jit(lambda trainable, batch: batch_loss(apply_fn, trainable, batch))


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(tree))]


@pytest.mark.slow
def test_steps_reduce_the_loss_on_a_fixed_batch(sampler, loss_fn):
    state = init_state(TINY, make_optimizer(TC), seed=0)
    step = jitted_train_step(TINY, TC)  # the step `train` runs
    batch = sampler.batch(0)
    before = float(loss_fn(state.trainable, batch))
    for _ in range(2):
        state, metrics = step(state, batch)
    after = float(loss_fn(state.trainable, batch))
    assert np.isfinite(float(metrics["grad_norm"]))
    assert after < before - 1e-3, (before, after)
    assert int(state.step) == 2


@pytest.mark.slow
def test_train_step_compiles_once(sampler):
    optimizer = make_optimizer(TC)
    pure_step = make_train_step(TINY, optimizer)
    traces = []

    def counted(state, batch):
        traces.append(1)  # runs only while tracing
        return pure_step(state, batch)

    step = jax.jit(counted)
    state = init_state(TINY, optimizer, seed=0)
    for i in range(3):
        state, _ = step(state, sampler.batch(i))
    assert len(traces) == 1


def test_loss_ignores_padded_candidates(sampler, loss_fn):
    batch = sampler.batch(1)
    valid = np.asarray(batch.valid).copy()
    valid[:, -1] = 0.0  # pretend the last slot is padding
    masked = batch._replace(valid=valid)
    flipped = masked._replace(labels=np.asarray(masked.labels).copy())
    flipped.labels[:, -1] = 1.0 - flipped.labels[:, -1]
    state = init_state(TINY, make_optimizer(TC), seed=0)
    loss = float(loss_fn(state.trainable, masked))
    assert float(loss_fn(state.trainable, flipped)) == pytest.approx(loss, abs=1e-7)
    # ...while the labels of a valid slot do count
    flipped.labels[:, 0] = 1.0 - flipped.labels[:, 0]
    assert float(loss_fn(state.trainable, flipped)) != pytest.approx(loss, abs=1e-4)


def test_training_is_deterministic_by_seed(world):
    first = train(TINY, TC, progress=False, world=world)
    again = train(TINY, TC, progress=False, world=world)
    other = train(TINY, dataclasses.replace(TC, seed=1), progress=False, world=world)
    for a, b in zip(_leaves(first.state.trainable), _leaves(again.state.trainable)):
        np.testing.assert_array_equal(a, b)
    assert first.losses == again.losses
    assert any(not np.array_equal(a, b) for a, b in
               zip(_leaves(first.state.trainable), _leaves(other.state.trainable)))
    # padding rows of every table stay exactly zero
    for table in first.state.trainable.tables:
        assert not np.any(np.asarray(table)[:, 0, :])


def test_checkpoint_loads_in_the_runner(world, sampler, tmp_path):
    result = train(TINY, TC, progress=False, world=world)
    path = tmp_path / "model.npz"
    version = save_checkpoint(path, TINY, TC, result.state.trainable)
    assert version.startswith(f"demo-world{TC.world_seed}-seed{TC.seed}-steps{TC.steps}-")
    runner = RankingRunner.from_checkpoint(path, expected_config=TINY)
    assert runner.model_version == version
    for a, b in zip(_leaves((runner.params, runner.tables)), _leaves(result.state.trainable)):
        np.testing.assert_array_equal(a, b)
    batch: TrainBatch = sampler.batch(2)
    out = runner.rank(batch.inputs)
    assert out.probabilities.shape == (TC.batch_size, TINY.candidate_seq_len,
                                       TINY.num_actions)
    assert np.all(np.isfinite(out.probabilities))


def test_world_that_does_not_fit_the_model_is_refused(world):
    with pytest.raises(ConfigError, match="history_len 8 > model S 4"):
        BatchSampler(world, RankerConfig(history_seq_len=4, candidate_seq_len=4), 4, seed=0)

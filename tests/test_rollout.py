"""Live rollout below Kafka: finding a new checkpoint, refusing broken ones, preparing a good
one beside the serving model, and swapping between batches (the live test is in
tests/test_reliability.py)."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np
import pytest

from phoenix import compilations
from phoenix.config import RankerConfig
from phoenix.params import dummy_batch
from phoenix.runner import RankingRunner
from worker.rollout import (CheckpointWatcher, RolloutError, in_canary, newest_checkpoint,
                            probe_batch)
from worker.serving import load_runner

SHAPES = [(1, 8), (4, 16)]  # the probe batch is (2, 8): one more shape


def _save(runner: RankingRunner, path: Path, version: str, mtime_s: float | None = None) -> Path:
    runner.model_version = version
    runner.save(path)
    if mtime_s is not None:
        os.utime(path, (mtime_s, mtime_s))
    return path


@pytest.fixture(scope="module")
def serving() -> RankingRunner:
    return RankingRunner.create(RankerConfig(), seed=0)


def test_newest_checkpoint_of_a_file_a_directory_and_nothing(tmp_path, serving):
    assert newest_checkpoint(tmp_path) is None
    old = _save(serving, tmp_path / "b.npz", "v1", mtime_s=1_000)
    new = _save(serving, tmp_path / "a.npz", "v2", mtime_s=2_000)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert newest_checkpoint(tmp_path) == new
    assert newest_checkpoint(old) == old
    assert newest_checkpoint(tmp_path / "missing.npz") is None
    assert load_runner(str(tmp_path)).model_version == "v2"


def test_the_watcher_offers_each_new_version_once(tmp_path, serving):
    _save(serving, tmp_path / "v1.npz", "v1", mtime_s=1_000)
    watcher = CheckpointWatcher(tmp_path)
    assert watcher.poll() is None  # the one serving at start
    second = _save(serving, tmp_path / "v2.npz", "v2", mtime_s=2_000)
    assert watcher.poll() == second
    assert watcher.poll() is None  # tried once, until it changes
    _save(serving, second, "v2b", mtime_s=3_000)
    assert watcher.poll() == second


def test_a_good_checkpoint_is_loaded_checked_and_compiled_beside_the_serving_one(
        tmp_path, serving):
    path = _save(RankingRunner.create(RankerConfig(), seed=7), tmp_path / "v2.npz", "v2")
    candidate = CheckpointWatcher.prepare(path, serving, SHAPES)
    assert candidate.runner.model_version == "v2" and candidate.path == path
    probe = probe_batch(serving)
    before = compilations.count()  # each shape and the probe's were compiled in `prepare`
    for rows, candidates in SHAPES:
        candidate.runner.rank_cached(dummy_batch(candidate.runner.config, rows, candidates))
    candidate.runner.rank_cached(probe)
    assert compilations.count() == before, compilations.last_function()
    assert not np.allclose(candidate.runner.rank_cached(probe).scores,
                           serving.rank_cached(probe).scores)


def _refusal(tmp_path: Path, serving: RankingRunner, path: Path) -> str:
    with pytest.raises(RolloutError) as refused:
        CheckpointWatcher.prepare(path, serving, SHAPES)
    return str(refused.value)


def test_truncated_and_garbage_files_are_refused_naming_the_file(tmp_path, serving):
    good = _save(serving, tmp_path / "good.npz", "v2").read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good[: len(good) // 2])
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"\x00junk")
    for path in (truncated, garbage):
        message = _refusal(tmp_path, serving, path)
        assert str(path) in message and "allow_pickle" not in message


def test_another_config_is_refused(tmp_path, serving):
    other = RankingRunner.create(RankerConfig(history_seq_len=16), seed=0)
    message = _refusal(tmp_path, serving, _save(other, tmp_path / "other.npz", "v2"))
    assert "other.npz" in message and "history_seq_len" in message


def test_non_finite_parameters_are_refused(tmp_path, serving):
    broken = RankingRunner.create(RankerConfig(), seed=3)
    params = jax.tree_util.tree_map(np.array, broken.params)
    params["phoenix_model"]["unembeddings"][0, 0] = np.nan
    bad = RankingRunner(broken.config, params, broken.tables)
    message = _refusal(tmp_path, serving, _save(bad, tmp_path / "nan.npz", "v2"))
    assert "unembeddings" in message and "non-finite" in message


def test_a_model_that_scores_everything_alike_is_refused(tmp_path, serving):
    flat = RankingRunner.create(RankerConfig(), seed=4)
    params = jax.tree_util.tree_map(np.zeros_like, flat.params)  # logits 0: all p = 0.5
    bad = RankingRunner(flat.config, params, flat.tables)
    message = _refusal(tmp_path, serving, _save(bad, tmp_path / "flat.npz", "v2"))
    assert "all equal" in message


def test_the_canary_split_is_stable_and_grows_with_the_share():
    users = np.arange(1, 20_001, dtype=np.uint64) * np.uint64(7919)
    tenth, third = in_canary(users, 0.1), in_canary(users, 1 / 3)
    assert np.array_equal(tenth, in_canary(users.copy(), 0.1))  # a user keeps their side
    assert not (tenth & ~third).any()  # raising the share only adds users
    assert abs(tenth.mean() - 0.1) < 0.01 and abs(third.mean() - 1 / 3) < 0.01
    assert not in_canary(users, 0.0).any() and in_canary(users, 1.0).all()

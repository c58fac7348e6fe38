import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest

from phoenix import checkpoint
from phoenix.checkpoint import CheckpointError
from phoenix.runner import RankingRunner
from tests.phoenix_helpers import TINY, random_batch

GOLDEN = Path(__file__).parent / "data" / "phoenix_golden_public.npz"


def test_round_trip_is_bit_exact(tmp_path):
    runner = RankingRunner.create(TINY, seed=5, model_version="v-test")
    path = tmp_path / "model.npz"
    runner.save(path)
    loaded = RankingRunner.from_checkpoint(path, expected_config=TINY)
    assert loaded.model_version == "v-test" and loaded.config == TINY
    for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(runner.state)),
                    jax.tree_util.tree_leaves(jax.device_get(loaded.state))):
        np.testing.assert_array_equal(a, b)
    batch = random_batch(TINY, 2, seed=0)
    np.testing.assert_array_equal(runner.rank(batch).probabilities,
                                  loaded.rank(batch).probabilities)


def test_config_mismatch_names_the_entry(tmp_path, tiny_runner):
    path = tmp_path / "model.npz"
    tiny_runner.save(path)
    other = dataclasses.replace(TINY, history_seq_len=7)
    with pytest.raises(CheckpointError, match=r"config\.history_seq_len is 6 in the file, 7"):
        checkpoint.load(path, expected_config=other)


def test_shape_mismatch_names_the_entry(tmp_path, tiny_runner):
    path = tmp_path / "model.npz"
    tiny_runner.save(path)
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    key = "param:transformer/decoder_layer_0/linear_v:w"
    arrays[key] = arrays[key][:, :-1]
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="linear_v:w' has shape"):
        checkpoint.load(path)


def test_foreign_and_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "nope.npz")
    with pytest.raises(CheckpointError, match="no 'meta' entry"):
        checkpoint.load(GOLDEN)  # a bare reference parameter set, not a checkpoint


def test_reference_layout_params_load():
    from phoenix.golden import config_from_golden
    import json
    with np.load(GOLDEN) as data:
        config = config_from_golden(json.loads(str(data["config"])))
        expected = data["param:transformer/decoder_layer_1/linear_1:w"]
    params = checkpoint.load_params(GOLDEN, config)
    np.testing.assert_array_equal(params["transformer/decoder_layer_1/linear_1"]["w"], expected)
    with pytest.raises(CheckpointError, match="missing entry"):
        checkpoint.load_params(GOLDEN, dataclasses.replace(
            config, transformer=dataclasses.replace(config.transformer, num_layers=3)))


def _truncated(tmp_path, runner) -> Path:
    whole = tmp_path / "whole.npz"
    runner.save(whole)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return cut


def _object_array_file(tmp_path) -> Path:
    path = tmp_path / "object.npz"
    pickled = np.array([{"format": "phoenix-checkpoint"}], dtype=object)
    np.savez(path, meta=pickled, **{"param:transformer/any:w": pickled})
    return path


@pytest.mark.parametrize("make, reason", [
    (lambda tmp, runner: _write(tmp / "five.npz", b"\x00garb"), "not an .npz checkpoint"),
    (_truncated, r"damaged or truncated \(BadZipFile"),
    (lambda tmp, runner: _object_array_file(tmp), "object array"),
], ids=["five_garbage_bytes", "truncated", "object_array"])
def test_damaged_files_name_the_path_and_never_suggest_pickles(tmp_path, tiny_runner, make,
                                                               reason):
    path = make(tmp_path, tiny_runner)
    for loader in (checkpoint.load, lambda p: checkpoint.load_params(p, TINY)):
        with pytest.raises(CheckpointError, match=reason) as caught:
            loader(path)
        assert str(caught.value).startswith(f"{path}: ")
        assert "pickle" not in str(caught.value)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phoenix.checkpoint import load_params, param_shapes
from phoenix.config import RankerConfig
from phoenix.embeddings import init_tables
from phoenix.golden import config_from_golden, golden_errors
from phoenix.runner import RankingRunner
from tests.phoenix_helpers import TINY, random_batch

GOLDEN = Path(__file__).parent / "data" / "phoenix_golden_public.npz"


def spec_param_table(c: RankerConfig) -> dict[str, tuple[int, ...]]:
    """The parameter table of docs/model.md, transcribed by hand."""
    d, a, v = c.emb_size, c.num_actions, c.product_surface_vocab_size
    nu, ni, na = c.hashes.num_user_hashes, c.hashes.num_item_hashes, c.hashes.num_author_hashes
    t = c.transformer
    hq_k, hkv_k, f = t.num_q_heads * t.key_size, t.num_kv_heads * t.key_size, t.ffn_size
    table = {
        "phoenix_model:proj_mat_1": (nu * d, d),
        "phoenix_model:proj_mat_2": ((ni + na + 1) * d, d),
        "phoenix_model:proj_mat_3": ((ni + na + 2) * d, d),
        "phoenix_model:action_projection": (a, d),
        "phoenix_model:product_surface_embedding_table": (v, d),
        "phoenix_model:unembeddings": (d, a),
        "phoenix_model/rms_norm:scale": (d,),
    }
    for i in range(t.num_layers):
        layer = f"transformer/decoder_layer_{i}"
        for norm in ("rms_norm", "rms_norm_1", "rms_norm_2", "rms_norm_3"):
            table[f"{layer}/{norm}:scale"] = (d,)
        table[f"{layer}/multi_head_attention/query:w"] = (d, hq_k)
        table[f"{layer}/multi_head_attention/key:w"] = (d, hkv_k)
        table[f"{layer}/multi_head_attention/value:w"] = (d, hkv_k)
        table[f"{layer}/multi_head_attention/linear:w"] = (hq_k, d)
        table[f"{layer}/linear:w"] = (d, f)
        table[f"{layer}/linear_v:w"] = (d, f)
        table[f"{layer}/linear_1:w"] = (f, d)
    return {f"param:{k}": s for k, s in table.items()}


def golden_config() -> RankerConfig:
    with np.load(GOLDEN) as data:
        return config_from_golden(json.loads(str(data["config"])))


def test_golden_parity():
    errors = golden_errors(str(GOLDEN))
    assert set(errors) == {"full", "cached"}
    assert max(errors.values()) < 1e-4, errors


@pytest.mark.slow
def test_golden_cli_exit_codes(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "phoenix.golden", str(GOLDEN)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "max abs error" in ok.stdout
    # The same file with its expected logits nudged must fail.
    with np.load(GOLDEN) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["logits"] = arrays["logits"] + 1e-3
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    fail = subprocess.run([sys.executable, "-m", "phoenix.golden", str(bad)],
                          capture_output=True, text=True)
    assert fail.returncode == 1 and "FAIL" in fail.stdout


@pytest.mark.parametrize("config", [RankerConfig(), TINY], ids=["demo", "tiny-gqa"])
def test_param_layout_matches_spec(config):
    assert param_shapes(config) == spec_param_table(config)


def test_param_layout_matches_golden_file():
    with np.load(GOLDEN) as data:
        found = {k: data[k].shape for k in data.files if k.startswith("param:")}
    assert found == spec_param_table(golden_config())


def golden_runner() -> RankingRunner:
    """Demo-config model with the golden file's random (non-zero) parameters."""
    config = golden_config()
    return RankingRunner(config, load_params(GOLDEN, config),
                         init_tables(config, jax.random.PRNGKey(3)))


def _swap(batch, row_from, index_pairs):
    """Copy candidate slots of `row_from` into the batch at the given (dst, src) slots."""
    fields = ("candidate_post_hashes", "candidate_author_hashes", "candidate_product_surface")
    out = {f: np.array(getattr(batch, f)) for f in fields}
    for dst, src in index_pairs:
        for f in fields:
            out[f][0, dst] = getattr(row_from, f)[0, src]
    return batch._replace(**out)


@pytest.fixture(scope="module")
def runner():
    return golden_runner()


@pytest.fixture(params=["rank", "rank_cached"])
def path(request):
    """The reference layout (`rank`) and the served cached-context path must both hold."""
    return request.param


def test_candidate_isolation(runner, path):
    rank = getattr(runner, path)
    config = runner.config
    base = random_batch(config, 1, seed=1)
    other = random_batch(config, 1, seed=2)
    reference = rank(base).probabilities[0]  # [C, A]
    c = config.candidate_seq_len

    altered = _swap(base, other, [(i, i) for i in range(1, c)])  # keep only candidate 0
    np.testing.assert_allclose(rank(altered).probabilities[0, 0], reference[0], atol=1e-5)

    # Reorder the others around candidate 0. (A candidate's own slot does matter: rotary
    # positions run over the whole sequence, as in the reference.)
    permutation = 1 + np.random.default_rng(0).permutation(c - 1)
    permuted = _swap(base, base, [(dst + 1, src) for dst, src in enumerate(permutation)])
    np.testing.assert_allclose(rank(permuted).probabilities[0, 0], reference[0],
                               atol=1e-5)

    removed = base._replace(candidate_post_hashes=np.array(base.candidate_post_hashes))
    removed.candidate_post_hashes[0, 3:] = 0  # candidates 3.. become padding
    np.testing.assert_allclose(rank(removed).probabilities[0, :3], reference[:3],
                               atol=1e-5)

    fewer = random_batch(config, 1, seed=1, num_candidates=2)
    added = _swap(fewer, other, [(2, 2), (3, 3)])  # two more candidates appear
    np.testing.assert_allclose(rank(added).probabilities[0, :2],
                               rank(fewer).probabilities[0, :2], atol=1e-5)


def test_other_candidates_do_change_with_the_user(runner, path):
    """Guards the isolation test: the model is not trivially constant."""
    rank = getattr(runner, path)
    base = random_batch(runner.config, 1, seed=1)
    moved = base._replace(user_hashes=random_batch(runner.config, 1, seed=9).user_hashes)
    diff = np.abs(rank(base).probabilities - rank(moved).probabilities).max()
    assert diff > 1e-3


def test_padding_content_is_ignored(runner, path):
    rank = getattr(runner, path)
    config = runner.config
    base = random_batch(config, 2, seed=4, history_len=5, num_candidates=3)
    noise = random_batch(config, 2, seed=5)
    h, c = 5, 3
    garbage = base._replace(
        history_author_hashes=np.concatenate(
            [base.history_author_hashes[:, :h], noise.history_author_hashes[:, h:]], axis=1),
        history_actions=np.concatenate(
            [base.history_actions[:, :h], noise.history_actions[:, h:]], axis=1),
        history_product_surface=np.concatenate(
            [base.history_product_surface[:, :h], noise.history_product_surface[:, h:]], 1),
        candidate_author_hashes=np.concatenate(
            [base.candidate_author_hashes[:, :c], noise.candidate_author_hashes[:, c:]], 1),
        candidate_product_surface=np.concatenate(
            [base.candidate_product_surface[:, :c], noise.candidate_product_surface[:, c:]], 1),
    )
    np.testing.assert_allclose(rank(garbage).probabilities[:, :c],
                               rank(base).probabilities[:, :c], atol=1e-5)


def test_padded_history_slots_are_ignored_with_tiny_gqa_config(path):
    runner = RankingRunner.create(TINY, seed=2)
    rank = getattr(runner, path)
    batch = random_batch(TINY, 2, seed=6, history_len=3)
    noisy = batch._replace(history_actions=np.ones_like(batch.history_actions),
                           history_product_surface=np.full_like(
                               batch.history_product_surface, TINY.product_surface_vocab_size - 1))
    noisy.history_actions[:, :3] = batch.history_actions[:, :3]
    noisy.history_product_surface[:, :3] = batch.history_product_surface[:, :3]
    np.testing.assert_allclose(rank(noisy).probabilities,
                               rank(batch).probabilities, atol=1e-5)
    # ...while the same change on a valid slot does move the scores.
    touched = batch._replace(history_actions=np.ones_like(batch.history_actions))
    assert np.abs(rank(touched).probabilities
                  - rank(batch).probabilities).max() > 1e-4


def test_bfloat16_forward_close_to_float32(path):
    f32 = golden_runner()
    bf16 = RankingRunner(f32.config, f32.params, f32.tables, dtype=jnp.bfloat16)
    batch = random_batch(f32.config, 2, seed=8)
    p32, p16 = (getattr(r, path)(batch).probabilities for r in (f32, bf16))
    assert p16.dtype == np.float32
    assert np.abs(p32 - p16).max() < 0.05
    assert jax.tree_util.tree_leaves(bf16.params)[0].dtype == jnp.float32

"""Check the model against a golden forward pass: `python -m phoenix.golden FILE.npz`.

The file (an `.npz`, e.g. tests/data/phoenix_golden_public.npz) holds a JSON `config`,
reference-layout `param:` entries, `batch:` inputs, `emb:` looked-up embeddings and the
expected `logits`. Both the reference layout and the cached-context path are checked.
Exit status 0 when the max abs error is below the tolerance, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import numpy as np

from phoenix.checkpoint import load_params
from phoenix.config import HashConfig, RankerConfig, TransformerConfig
from phoenix.model import RecsysBatch, RecsysEmbeddings, build_model, build_prefix_model

TOLERANCE = 1e-4


def config_from_golden(raw: dict) -> RankerConfig:
    """Maps the golden file's flat config keys onto our dataclasses."""
    nu, ni, na = raw["hashes"]
    return RankerConfig(
        transformer=TransformerConfig(
            emb_size=raw["emb_size"], num_layers=raw["layers"], num_q_heads=raw["q_heads"],
            num_kv_heads=raw["kv_heads"], key_size=raw["key_size"],
            widening_factor=float(raw["widening"]),
            attn_output_multiplier=float(raw["attn_mult"])),
        hashes=HashConfig(num_user_hashes=nu, num_item_hashes=ni, num_author_hashes=na),
        num_actions=raw["num_actions"], history_seq_len=raw["history_seq_len"],
        candidate_seq_len=raw["candidate_seq_len"],
        product_surface_vocab_size=raw["surfaces"])


def golden_errors(path: str) -> dict[str, float]:
    """Max abs difference between our float32 logits and the file's, for the reference
    layout ("full") and the cached-context path the worker serves ("cached")."""
    with np.load(path, allow_pickle=False) as data:
        config = config_from_golden(json.loads(str(data["config"])))
        batch = RecsysBatch(**{f: data[f"batch:{f}"] for f in RecsysBatch._fields})
        emb = RecsysEmbeddings(**{f: data[f"emb:{f}"] for f in RecsysEmbeddings._fields})
        expected = data["logits"]
    params = load_params(path, config)
    prefix = build_prefix_model(config)

    def cached(params, batch, emb):
        return prefix.score_candidates(params, batch, emb,
                                       prefix.encode_context(params, batch, emb))

    return {name: float(np.max(np.abs(np.asarray(jax.jit(fn)(params, batch, emb), np.float32)
                                      - expected)))
            for name, fn in (("full", build_model(config).apply), ("cached", cached))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", help="golden .npz file")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE)
    args = parser.parse_args(argv)
    ok = True
    for name, error in golden_errors(args.file).items():
        ok &= error < args.tolerance
        print(f"{args.file} {name}: max abs error {error:.3e} "
              f"({'OK' if error < args.tolerance else 'FAIL'}, tolerance {args.tolerance:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

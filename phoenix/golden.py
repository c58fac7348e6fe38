"""Check the model against a golden forward pass: `python -m phoenix.golden FILE.npz`.

The file (an `.npz`, e.g. tests/data/phoenix_golden_public.npz) holds a JSON `config`,
reference-layout `param:` entries, `batch:` inputs, `emb:` looked-up embeddings and the
expected `logits`.
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
from phoenix.model import RecsysBatch, RecsysEmbeddings, build_model

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


def golden_error(path: str) -> float:
    """Max abs difference between our float32 logits and the file's."""
    with np.load(path, allow_pickle=False) as data:
        config = config_from_golden(json.loads(str(data["config"])))
        batch = RecsysBatch(**{f: data[f"batch:{f}"] for f in RecsysBatch._fields})
        emb = RecsysEmbeddings(**{f: data[f"emb:{f}"] for f in RecsysEmbeddings._fields})
        expected = data["logits"]
    params = load_params(path, config)
    logits = jax.jit(build_model(config).apply)(params, batch, emb)
    return float(np.max(np.abs(np.asarray(logits, np.float32) - expected)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", help="golden .npz file")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE)
    args = parser.parse_args(argv)
    error = golden_error(args.file)
    ok = error < args.tolerance
    print(f"{args.file}: max abs error {error:.3e} "
          f"({'OK' if ok else 'FAIL'}, tolerance {args.tolerance:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

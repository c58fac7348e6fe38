import subprocess
import sys

import numpy as np
import pytest

from phoenix.config import HashConfig
from phoenix.hashing import Hasher, hash_ids

IDS = np.array([1, 2, 3, 2**63, 2**64 - 1, 123456789012345], dtype=np.uint64)


def test_deterministic_across_processes():
    code = ("import numpy as np; from phoenix.hashing import hash_ids; "
            f"print(hash_ids(np.array({[int(i) for i in IDS]}, dtype=np.uint64), "
            "'post', 3, 1000, 7).tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert eval(out.stdout) == hash_ids(IDS, "post", 3, 1000, 7).tolist()  # noqa: S307 (our own output)


def test_real_ids_never_hash_to_padding_and_zero_does():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 2**64 - 1, size=50_000, dtype=np.uint64, endpoint=True)
    rows = hash_ids(ids, "user", 2, 17, seed=0)
    assert rows.min() >= 1 and rows.max() <= 16
    assert (hash_ids(np.zeros(3, np.uint64), "user", 2, 17, 0) == 0).all()


def test_spread_across_rows():
    ids = np.arange(1, 200_001, dtype=np.uint64)  # sequential ids: the hard case
    rows = hash_ids(ids, "post", 2, 1024, seed=0)
    for i in range(2):
        counts = np.bincount(rows[:, i], minlength=1024)[1:]
        expected = len(ids) / 1023
        assert counts.min() > 0.7 * expected and counts.max() < 1.3 * expected


def test_hash_functions_are_independent():
    ids = np.arange(1, 100_001, dtype=np.uint64)
    rows = hash_ids(ids, "author", 2, 4096, seed=0)
    # Two functions agreeing should be as rare as chance (1/4095), not systematic.
    assert np.mean(rows[:, 0] == rows[:, 1]) < 5 / 4095


@pytest.mark.parametrize("kind_a,kind_b", [("user", "post"), ("post", "author")])
def test_kinds_and_seeds_differ(kind_a, kind_b):
    a = hash_ids(IDS, kind_a, 2, 4096, 0)
    assert not np.array_equal(a, hash_ids(IDS, kind_b, 2, 4096, 0))
    assert not np.array_equal(a, hash_ids(IDS, kind_a, 2, 4096, 1))


def test_hasher_shapes_follow_config():
    hasher = Hasher(HashConfig(num_user_hashes=1, num_item_hashes=3, num_author_hashes=2))
    assert hasher.users(np.ones((4,), np.uint64)).shape == (4, 1)
    assert hasher.posts(np.ones((4, 5), np.uint64)).shape == (4, 5, 3)
    assert hasher.authors(np.ones((4, 5), np.uint64)).shape == (4, 5, 2)
    assert hasher.posts(np.ones((4, 5), np.uint64)).dtype == np.int32

"""The pigeonhole multi-index gives exactly the all-pairs answer of near-duplicate search (issue 28).

Two hashes within ``t`` bits agree exactly on at least one of ``t + 1`` chunks, so comparing only
hashes that share a chunk loses no pair; these tests hold the two methods to the same sorted
``(i, j, d)`` on random, clustered and adversarial hashes, self-join and cross-join.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.integrity.hashing import hamming_pairs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_hamming import clustered_hashes, random_hashes  # noqa: E402


def same_answer(a, b, t):
    x = hamming_pairs(a, b, max_distance=t, method="all-pairs")
    y = hamming_pairs(a, b, max_distance=t, method="pigeonhole")
    assert [v.dtype for v in y] == [np.int64, np.int64, np.uint16]
    for u, v in zip(x, y):
        np.testing.assert_array_equal(u, v)
    return len(x[0])


@pytest.mark.parametrize("t", [0, 1, 5, 12, 15, 30])
@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_pigeonhole_equals_all_pairs_self_and_cross(kind, t):
    rng = np.random.default_rng(t)
    h = (random_hashes if kind == "random" else clustered_hashes)(1500, rng)
    rng.shuffle(h)  # clusters spread over both halves of the cross-join
    found = same_answer(h, None, t) + same_answer(h[:600], h[600:], t)
    if kind == "clustered" and t >= 12:
        assert found > 1000  # the clusters' pairs really are there to be found


def test_a_threshold_of_every_bit_pairs_complementary_hashes():
    h = np.array([[0, 0], [np.iinfo(np.uint64).max] * 2], dtype=np.uint64)
    assert hamming_pairs(h, max_distance=128, method="pigeonhole")[2].tolist() == [128]


def test_a_pair_differing_only_across_chunk_edges_is_found():
    # 13 chunks of ~20 bits for t = 12: flip 12 bits, one in each of 12 chunks, leaving one chunk equal
    base = np.zeros((1, 4), dtype=np.uint64)
    bits = np.unpackbits(base.view(np.uint8), axis=1)
    edges = [round(i * 256 / 13) for i in range(14)]
    twin = bits.copy()
    twin[0, [edges[c] for c in range(12)]] = 1
    pair = np.concatenate([base, np.packbits(twin, axis=1).view(np.uint64)])
    i, j, d = hamming_pairs(pair, max_distance=12, method="pigeonhole")
    assert i.tolist() == [0] and j.tolist() == [1] and d.tolist() == [12]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(0, 80), st.integers(2, 120), st.integers(0, 2**32 - 1))
def test_pigeonhole_equals_all_pairs_on_any_width_threshold_and_size(words, t, n, seed):
    rng = np.random.default_rng(seed)
    h = rng.integers(0, np.iinfo(np.uint64).max, size=(n, words), dtype=np.uint64, endpoint=True)
    h[n // 2:] = h[:n - n // 2] ^ (h[n // 2:] & rng.integers(0, 2**8, size=(n - n // 2, words), dtype=np.uint64))
    t = min(t, 64 * words)
    same_answer(h, None, t)
    same_answer(h[: n // 3], h[n // 3:], t)


def test_auto_uses_the_index_above_the_limit_for_wide_chunks_and_agrees(monkeypatch):
    import engine.integrity.hashing as hashing

    h = clustered_hashes(400, np.random.default_rng(1))
    calls = []
    real = hashing._pigeonhole_pairs
    monkeypatch.setattr(hashing, "_pigeonhole_pairs", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(hashing, "ALL_PAIRS_LIMIT", 1000)
    hamming_pairs(h, max_distance=40)  # 256 / 41 bits per chunk: too narrow to index
    assert not calls
    auto = hamming_pairs(h, max_distance=12)
    assert calls and all(np.array_equal(u, v) for u, v in zip(auto, hamming_pairs(h, max_distance=12,
                                                                                  method="all-pairs")))
    with pytest.raises(ValueError, match="method must be"):
        hamming_pairs(h, max_distance=12, method="faiss")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_pigeonhole_equals_all_pairs_at_20000(kind):
    h = (random_hashes if kind == "random" else clustered_hashes)(20_000, np.random.default_rng(7))
    found = same_answer(h, None, 12)
    assert (found == 0) if kind == "random" else (found == 40_000)

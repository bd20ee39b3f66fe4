"""Near-duplicate search timings (issue 28): all-pairs vs the pigeonhole multi-index vs faiss.

    python benchmarks/bench_hamming.py [N ...]

faiss (faiss-cpu, when installed) runs its own pigeonhole index, ``IndexBinaryMultiHash`` with 13
exact 19-bit sub-hashes (nflip 0), and ``range_search`` radius 13 (faiss counts distances < r).
Its pairs are checked equal to ours at every N.

Random 256-bit hashes, and clustered ones (groups of 5 near copies, each a centre with up to 5
bits flipped), threshold 12 (the audit's default). Prints seconds and pairs found per method; the
all-pairs path runs only up to 20,000 hashes, where it also checks both answers are equal.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.integrity.hashing import hamming_pairs  # noqa: E402


def random_hashes(n: int, rng) -> np.ndarray:
    return rng.integers(0, np.iinfo(np.uint64).max, size=(n, 4), dtype=np.uint64, endpoint=True)


def clustered_hashes(n: int, rng, size: int = 5, flips: int = 5) -> np.ndarray:
    centres = random_hashes(n // size + 1, rng)
    out = np.repeat(centres, size, axis=0)[:n].copy()
    bits = np.unpackbits(out.view(np.uint8), axis=1)
    rows = np.repeat(np.arange(n), flips)
    cols = rng.integers(0, 256, size=n * flips)
    bits[rows, cols] ^= 1
    return np.packbits(bits, axis=1).view(np.uint64)


def faiss_pairs(h: np.ndarray, max_distance: int = 12):
    """Every pair (i < j) within ``max_distance`` through faiss's multi-hash binary index."""
    import faiss

    codes = np.ascontiguousarray(h.view(np.uint8))
    nhash = max_distance + 1
    index = faiss.IndexBinaryMultiHash(256, nhash, 256 // nhash)
    index.nflip = 0
    index.add(codes)
    lims, dist, ids = index.range_search(codes, max_distance + 1)
    rows = np.repeat(np.arange(len(h)), np.diff(lims.astype(np.int64)))
    keep = rows < ids
    i, j, d = rows[keep], ids[keep].astype(np.int64), dist[keep].astype(np.int64)
    order = np.lexsort((j, i))
    return i[order], j[order], d[order]


def main(sizes: list[int]) -> None:
    rng = np.random.default_rng(0)
    print(f"{'kind':10} {'N':>9} {'method':11} {'seconds':>8} {'pairs':>9}")
    for n in sizes:
        for kind, make in (("random", random_hashes), ("clustered", clustered_hashes)):
            h = make(n, rng)
            answers = {}
            for method in ("pigeonhole", "all-pairs", "faiss"):
                if method == "all-pairs" and n > 20_000:
                    continue
                t0 = time.perf_counter()
                if method == "faiss":
                    try:
                        answers[method] = faiss_pairs(h)
                    except ImportError:
                        continue
                else:
                    answers[method] = hamming_pairs(h, max_distance=12, method=method)
                print(f"{kind:10} {n:>9} {method:11} {time.perf_counter() - t0:>8.2f} {len(answers[method][0]):>9}")
            ours = answers["pigeonhole"]
            for method, other in answers.items():
                if method != "pigeonhole":
                    same = all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(ours, other))
                    print(f"{'':10} {n:>9} pigeonhole == {method}: {same}")


if __name__ == "__main__":
    main([int(x) for x in sys.argv[1:]] or [10_000, 20_000, 100_000, 1_000_000])

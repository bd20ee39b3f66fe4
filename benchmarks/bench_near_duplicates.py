"""Time the all-pairs near-duplicate search (engine.integrity.hashing.hamming_pairs) on random hashes.

    .venv/bin/python benchmarks/bench_near_duplicates.py [--n 10000] [--hash-size 16] [--threshold 12]

Random hashes stand in for real ones: the search cost depends only on n and the hash width, not on
the content. A few planted near copies check the answer is not empty. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.integrity.hashing import hamming_pairs, n_words  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--hash-size", type=int, default=16)
    ap.add_argument("--threshold", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    words = n_words(args.hash_size)
    hashes = rng.integers(0, np.iinfo(np.uint64).max, size=(args.n, words), dtype=np.uint64, endpoint=True)
    planted = min(100, args.n // 2)
    # Rows n-planted.. are copies of rows 0.. with one bit flipped: known near pairs.
    flip = np.uint64(1) << rng.integers(0, 64, size=planted).astype(np.uint64)
    hashes[args.n - planted:] = hashes[:planted]
    hashes[args.n - planted:, 0] ^= flip

    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        i, j, d = hamming_pairs(hashes, max_distance=args.threshold)
        times.append(time.perf_counter() - t0)
    assert len(i) >= planted, "planted near pairs not found"
    print(json.dumps({
        "what": "all-pairs phash Hamming search (engine.integrity.hashing.hamming_pairs)",
        "n_images": args.n,
        "pairs_compared": args.n * (args.n - 1) // 2,
        "hash_bits": args.hash_size ** 2,
        "threshold": args.threshold,
        "pairs_found": int(len(i)),
        "seconds_best": round(min(times), 3),
        "seconds_all": [round(t, 3) for t in times],
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
    }))


if __name__ == "__main__":
    main()

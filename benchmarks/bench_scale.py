"""How auditrun's cost grows with the number of images (issue 28).

    python benchmarks/bench_scale.py build POOL N            # N distinct images (see below) in POOL
    python benchmarks/bench_scale.py check-data POOL N [N ...] # auditrun check-data at each N
    python benchmarks/bench_scale.py audit POOL N [N ...]      # a one-head-epoch lite0 audit at each N
    python benchmarks/bench_scale.py hashes [N ...]            # near-duplicate search alone (bench_hamming)

The images are **2 x 2 mosaics of four Sartaj MRI slices of one class and one split** (Training
mosaics from Training slices, Testing from Testing), 512 x 512 grey JPEGs at quality 90, labelled by
that class. Random draws of four from the ~100-800 slices of a class make every mosaic distinct
(no two share all four quadrants in place), so the leakage search meets the near-copies the Sartaj
set itself holds, not copies the benchmark planted. Image ``i`` is a fixed function of ``i`` and the
seed; one image in eight is a Testing image, so the first N images of a pool are a dataset of N.

``check-data`` and ``audit`` build ``POOL/n<N>`` (hard links to the pool's first N files, so each N
is its own dataset with its own caches), run the command under ``/usr/bin/time -v`` with the output
root ``POOL/n<N>-out`` and print N, wall seconds, seconds per 1,000 images and peak RSS. The audit
manifest is experiments/lite0.toml's backbone with one head epoch, no fine-tuning, no report PDF.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SARTAJ = REPO.parent / "shared" / "datasets" / "sartaj-brain-tumor-mri"
CLASSES = ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")
TILE = 256
SEED = 2028


def placement(i: int) -> tuple[str, str]:
    """(split folder, class folder) of pool image ``i``."""
    return ("Testing" if (i // len(CLASSES)) % 8 == 7 else "Training"), CLASSES[i % len(CLASSES)]


def image_path(pool: Path, i: int) -> Path:
    split, cls = placement(i)
    return pool / "all" / split / cls / f"m{i:07d}.jpg"


def _sources() -> dict[tuple[str, str], np.ndarray]:
    from PIL import Image

    out = {}
    for split in ("Training", "Testing"):
        for cls in CLASSES:
            files = sorted((SARTAJ / split / cls).iterdir())
            tiles = []
            for f in files:
                with Image.open(f) as im:
                    tiles.append(np.asarray(im.convert("L").resize((TILE, TILE), Image.Resampling.BILINEAR)))
            out[(split, cls)] = np.stack(tiles)
    return out


_SOURCES: dict | None = None


def _write_range(args: tuple[str, int, int]) -> int:
    from PIL import Image

    global _SOURCES
    pool, start, stop = Path(args[0]), args[1], args[2]
    if _SOURCES is None:
        _SOURCES = _sources()
    for i in range(start, stop):
        path = image_path(pool, i)
        if path.exists():
            continue
        tiles = _SOURCES[placement(i)]
        pick = np.random.default_rng([SEED, i]).choice(len(tiles), 4, replace=False)
        mosaic = np.block([[tiles[pick[0]], tiles[pick[1]]], [tiles[pick[2]], tiles[pick[3]]]])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        Image.fromarray(mosaic, mode="L").save(tmp, format="JPEG", quality=90)
        os.replace(tmp, path)
    return stop - start


def build(pool: Path, n: int, workers: int = 2) -> None:
    from multiprocessing import Pool

    t0 = time.perf_counter()
    chunks = [(str(pool), s, min(s + 2000, n)) for s in range(0, n, 2000)]
    done = 0
    with Pool(workers) as p:
        for k in p.imap_unordered(_write_range, chunks):
            done += k
            print(f"\r{done}/{n} images, {time.perf_counter() - t0:.0f}s", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


def subset(pool: Path, n: int) -> Path:
    """``POOL/n<N>``: hard links to the pool's first ``n`` images."""
    root = pool / f"n{n}"
    for i in range(n):
        src = image_path(pool, i)
        dst = root / src.relative_to(pool / "all")
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, dst)
    return root


MANIFEST = """\
[experiment]
name = "scale-{n}"
seed = 42

[data]
root = "{root}"
validation_fraction = 0.15

[training]
epochs = 1
batch_size = 32
class_weights = "balanced"

[[backbones]]
name = "EfficientNet-Lite0"
file = "{weights}"
input_size = 224

[gradcam]
images_per_class = 2

[evaluation]
bootstrap_resamples = 200

[report]
formats = ["html"]
"""


def timed(cmd: list[str], log: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS GiB, exit code) of ``cmd`` under /usr/bin/time -v; output to ``log``."""
    with open(log, "w") as out:
        t0 = time.perf_counter()
        rc = subprocess.call(["/usr/bin/time", "-v", *cmd], stdout=out, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - t0
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", log.read_text())
    return wall, (int(rss.group(1)) / 1024**2 if rss else float("nan")), rc


def run(kind: str, pool: Path, sizes: list[int]) -> None:
    exe = str(REPO / ".venv" / "bin" / "auditrun")
    print(f"{'command':10} {'N':>8} {'wall s':>8} {'s/1k img':>9} {'peak RSS GiB':>13} {'rc':>3}")
    for n in sizes:
        root = subset(pool, n)
        out = pool / f"n{n}-out"
        manifest = pool / f"n{n}.toml"
        manifest.write_text(MANIFEST.format(n=n, root=root, weights=REPO.parent / "shared" / "weights" /
                                            "efficientnet_lite0_imagenet.keras"))
        cmd = [exe, "check-data", str(manifest)] if kind == "check-data" else \
            [exe, str(manifest), "--output-dir", str(out), "--quiet"]
        env_out = ["--output-dir", str(out)] if kind == "check-data" else []
        wall, rss, rc = timed(cmd + env_out, pool / f"n{n}-{kind}.log")
        print(f"{kind:10} {n:>8} {wall:>8.1f} {1000 * wall / n:>9.2f} {rss:>13.2f} {rc:>3}", flush=True)


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("build", "check-data", "audit", "hashes"):
        raise SystemExit(__doc__)
    if argv[0] == "hashes":
        sys.path.insert(0, str(REPO / "benchmarks"))
        from bench_hamming import main as hashes

        hashes([int(x) for x in argv[1:]] or [10_000, 100_000, 1_000_000])
    elif argv[0] == "build":
        build(Path(argv[1]), int(argv[2]))
    else:
        run(argv[0], Path(argv[1]), [int(x) for x in argv[2:]])


if __name__ == "__main__":
    main(sys.argv[1:])

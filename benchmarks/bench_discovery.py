"""Cost of issue 26's discovery and message rules on a real data set.

Discovery now walks with ``os.walk`` and skips hidden and auditrun output folders (one
``paths.is_output_folder`` look per folder) where it used ``Path.rglob``; a data set with patient
ids passes every message through ``identity.Redactor``. This times, in one process and
interleaved so that both sides see the same machine state:

* the old walk (``rglob``) against the new one over the data root's class folders;
* a Redactor over messages quoting known files, absolute and relative, per message.

    .venv/bin/python benchmarks/bench_discovery.py [DATA_ROOT] [--repeats N]

Default DATA_ROOT: ../shared/datasets/sartaj-brain-tumor-mri beside the checkout.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from engine.data import discovery  # noqa: E402
from engine.data.formats import is_image_file  # noqa: E402
from engine.data.identity import Pseudonymizer, Redactor, file_reference  # noqa: E402


def old_image_files(folder: Path) -> list[Path]:
    """``discovery._image_files`` before issue 26."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))


def class_folders(root: Path) -> list[Path]:
    return [c for split in sorted(root.iterdir()) if split.is_dir() for c in sorted(split.iterdir()) if c.is_dir()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", nargs="?", default=str(HERE.parents[1] / "shared" / "datasets" / "sartaj-brain-tumor-mri"))
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    root = Path(args.root).resolve()
    folders = class_folders(root)
    old_t, new_t = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        old = [p for f in folders for p in old_image_files(f)]
        old_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        new = [p for f in folders for p in discovery._image_files(f)]
        new_t.append(time.perf_counter() - t0)
        assert old == new, "the two walks disagree"
    print(f"files: {len(new)} in {len(folders)} class folders")
    print(f"walk, rglob (before): median {statistics.median(old_t) * 1e3:.1f} ms")
    print(f"walk, os.walk + output-folder check (after): median {statistics.median(new_t) * 1e3:.1f} ms")
    print(f"ratio after/before: {statistics.median(new_t) / statistics.median(old_t):.2f}")

    pseudo = Pseudonymizer(os.urandom(32), "bench")
    refs = {str(p): file_reference(p.relative_to(root).as_posix(), None, pseudo) for p in new}
    redact = Redactor(root, pseudo, structural={"training", "testing", "glioma_tumor", "meningioma_tumor",
                                                "no_tumor", "pituitary_tumor"}, refs=refs)
    named = new[:500] * 2
    messages = [f"cannot decode image {str(p)!r}: truncated" for p in new[:500]]
    messages += [f"{root}/labels.csv: row {i}, column 'path': {p.relative_to(root).as_posix()!r} is the file of row 2 too"
                 for i, p in enumerate(new[:500])]
    t0 = time.perf_counter()
    out = [redact(m) for m in messages]
    dt = time.perf_counter() - t0
    assert not any(p.name in m for p, m in zip(named, out)), "a file name survived redaction"
    assert all(refs[str(p)] in m for p, m in zip(named, out))
    print(f"redaction: {len(messages)} messages in {dt * 1e3:.1f} ms ({dt / len(messages) * 1e6:.0f} us each)")


if __name__ == "__main__":
    main()

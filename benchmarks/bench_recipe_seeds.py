"""How much a manifest's recipe moves with the training draw alone: validation macro-F1 of the
frozen head and the fine-tuned model for several training seeds, on one fixed split.

The split (validation carved from training) comes from the manifest's seed, as in an audit; only
the seed of the training draw (head initialisation, batch order, flips) changes. The frozen layers'
activations are computed once (they do not depend on the seed) and every seed trains the head and
fine-tunes the first backbone of the manifest as ``auditrun`` does (engine.training). Validation
only: the test split is never read.

    python benchmarks/bench_recipe_seeds.py experiments/lite0.toml --seeds 42 1 2 3 4

Prints one line per seed and the mean, standard deviation and range.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("manifest", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4])
    args = ap.parse_args()

    import keras

    from engine import manifest as manifest_mod
    from engine.evaluation.metrics import classification_metrics
    from engine.data.synth import prepare_data_root
    from engine.pipeline import RunContext, prepare_data
    from engine.training import activations as act
    from engine.training import backbones as bb
    from engine.training.train import fine_tune, train_head

    m = manifest_mod.load(args.manifest)
    prepare_data_root(m)  # [data.synthetic]: load writes nothing, prepare_data below reads the data
    cfg = m.backbones[0]
    ft = cfg.fine_tune
    assert ft is not None, "the first backbone needs [backbones.fine_tune]"
    with tempfile.TemporaryDirectory() as tmp:
        ctx = RunContext(manifest=m, run_dir=Path(tmp), output_root=m.experiment.output_dir,
                         echo=lambda msg: None, now=lambda: datetime.now(timezone.utc), results={"timings": {}})
        prepare_data(ctx)
        ds, size = ctx.dataset, cfg.input_size
        x_tr, x_va = ctx.cache.load(ds.train, size, "training"), ctx.cache.load(ds.val, size, "validation")
        y_tr, y_va = ds.labels("train"), ds.labels("val")
        aug = m.training.augmentation
        flips = bool(aug.enabled and aug.flip)

        def model_for(seed):
            keras.utils.set_random_seed(seed)
            loaded = bb.load_backbone(cfg)
            return bb.build_classifier(loaded.model, loaded.preprocessing, size, len(ds.class_names),
                                       m.training.head_units, m.training.dropout, seed)

        t0 = time.perf_counter()
        first_model = model_for(args.seeds[0])
        bb.set_backbone_trainable(first_model, ft.layers)
        first, _ = act.share(first_model, x_tr, x_va, batch=m.training.batch_size, flips=flips, tta=False,
                             budget=m.training.activation_cache_bytes, store=None)
        print(f"frozen-layer activations: {time.perf_counter() - t0:.0f}s; {len(x_tr)} training, "
              f"{len(x_va)} validation images", flush=True)
        rows = []
        for seed in args.seeds:
            t0 = time.perf_counter()
            model = model_for(seed)
            bb.set_backbone_trainable(model, ft.layers)
            split = act.split_classifier(model)
            model.get_layer("backbone").trainable = False
            shared = act.Shared(split, first.train, first.val, first.test, first.batch, first.nbytes)
            result = train_head(model, x_tr, y_tr, x_va, y_va, cfg=m.training, seed=seed, train_backbone=False,
                                label="head", features=shared.features())
            frozen = classification_metrics(y_va, result.validation_probs(), ds.class_names).macro_f1
            fine_tune(model, x_tr, y_tr, x_va, y_va, cfg=m.training, ft=ft, seed=seed, label="ft", cached=shared)
            tuned = classification_metrics(y_va, shared.probs("val"), ds.class_names).macro_f1
            rows.append((seed, frozen, tuned))
            print(f"seed {seed:3d}: validation macro-F1 frozen head {frozen:.3f}, fine-tuned {tuned:.3f} "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
    a = np.array(rows)
    for j, name in ((1, "frozen head"), (2, "fine-tuned")):
        v = a[:, j]
        print(f"{name}: mean {v.mean():.3f}, sd {v.std(ddof=1):.3f}, range {v.min():.3f}-{v.max():.3f} "
              f"over {len(v)} seeds")


if __name__ == "__main__":
    main()

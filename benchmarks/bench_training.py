"""Time one transfer-learning schedule the study's way and auditrun's way, in one process.

Study way: ``keras.utils.image_dataset_from_directory`` decodes every image from disk every
epoch, and each phase is one ``model.fit`` over the whole network (frozen backbone included).
auditrun's way: images decoded once, the head trained on backbone features computed once, then
fine-tuning on cached activations below the unfrozen layers (engine.training.train).

    python benchmarks/bench_training.py DATA --backbone FILE_OR_NAME --size 224 \\
        --head-epochs 10 --ft-layers 40 --ft-epochs 4 [--per-class 100]

DATA holds one folder per class (a Kaggle ``Training`` folder, or its parent). Prints both times
and ends with ``ratio: X.XX`` (study-style seconds / auditrun seconds).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp"}


def class_folders(data: Path) -> Path:
    training = data / "Training"
    return training if training.is_dir() else data


def subset(root: Path, per_class: int | None, into: Path) -> Path:
    """A folder of symlinks to the first ``per_class`` images of each class (all when None)."""
    for cls in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(f for f in cls.iterdir() if f.suffix.lower() in EXTENSIONS)[:per_class]
        (into / cls.name).mkdir(parents=True)
        for f in files:
            (into / cls.name / f.name).symlink_to(f.resolve())
    return into


def backbone_config(spec: str, size: int):
    from engine.manifest import BackboneConfig

    path = Path(spec)
    return BackboneConfig(name=path.stem, file=path, input_size=size) if path.suffix == ".keras" \
        else BackboneConfig(name=spec, input_size=size)


def build(args, n_classes: int):
    import keras

    from engine.training import backbones as bb

    keras.utils.set_random_seed(args.seed)
    loaded = bb.load_backbone(backbone_config(args.backbone, args.size))
    return bb.build_classifier(loaded.model, loaded.preprocessing, args.size, n_classes, seed=args.seed)


def study_way(args, folder: Path) -> float:
    import keras

    from engine.training.backbones import set_backbone_trainable

    t0 = time.perf_counter()
    train, val = keras.utils.image_dataset_from_directory(
        folder, image_size=(args.size, args.size), batch_size=args.batch, validation_split=0.15, subset="both",
        seed=args.seed, label_mode="int", verbose=False)
    model = build(args, len(train.class_names))
    model.get_layer("backbone").trainable = False
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train, validation_data=val, epochs=args.head_epochs, verbose=0)
    set_backbone_trainable(model, args.ft_layers)
    model.compile(optimizer=keras.optimizers.Adam(3e-5), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train, validation_data=val, epochs=args.ft_epochs, verbose=0)
    return time.perf_counter() - t0


def auditrun_way(args, folder: Path) -> float:
    from PIL import Image

    from engine.manifest import AugmentationConfig, FineTuneConfig, TrainingConfig
    from engine.training.train import fine_tune, train_head

    t0 = time.perf_counter()
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((folder / c).iterdir())]
    x = np.stack([np.asarray(Image.open(f).convert("RGB").resize((args.size, args.size), Image.BILINEAR))
                  for f, _ in files])
    y = np.array([i for _, i in files])
    order = np.random.default_rng(args.seed).permutation(len(y))
    n_val = int(round(0.15 * len(y)))
    va, tr = order[:n_val], order[n_val:]
    aug = AugmentationConfig(enabled=True, flip=True, rotation=0.0, shift=0.0, zoom=0.0, brightness=0.0, contrast=0.0)
    cfg = TrainingConfig(epochs=args.head_epochs, batch_size=args.batch, early_stopping_patience=0, augmentation=aug)
    ft = FineTuneConfig(layers=args.ft_layers, learning_rate=3e-5, epochs=args.ft_epochs, warmup_epochs=0.0)
    model = build(args, len(classes))
    result = train_head(model, x[tr], y[tr], x[va], y[va], cfg=cfg, seed=args.seed, train_backbone=False,
                        label="auditrun", echo=print)
    fine_tune(model, x[tr], y[tr], x[va], y[va], cfg=cfg, ft=ft, seed=args.seed, label="auditrun", echo=print,
              result=result)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path)
    p.add_argument("--backbone", required=True, help="a keras.applications name or a local .keras backbone file")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--head-epochs", type=int, default=10)
    p.add_argument("--ft-layers", type=int, default=40)
    p.add_argument("--ft-epochs", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--per-class", type=int, default=None, help="only the first N images of each class")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory() as tmp:
        folder = subset(class_folders(args.data), args.per_class, Path(tmp) / "data")
        study = study_way(args, folder)
        print(f"study-style: {study:.1f}s (decoded from disk every epoch, whole network per phase)")
        ours = auditrun_way(args, folder)
        print(f"auditrun:    {ours:.1f}s (decoded once, features and activations cached)")
    print(f"ratio: {study / ours:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

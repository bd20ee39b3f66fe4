"""Discovery, class aliasing, layouts, decoding of awkward files, seeded splits."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import data
from engine.errors import InputError
from engine.manifest import DEFAULT_ALIASES

CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]
ALIASES = {k: v for k, v in DEFAULT_ALIASES.items()}


def _img(path: Path, size=(40, 30), mode="RGB", value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        arr = (np.arange(size[0] * size[1]).reshape(size[1], size[0]) * 20).astype(np.uint16)
        Image.fromarray(arr).save(path)
        return
    Image.new(mode, size, value if mode in ("L", "I;16") else (value,) * len(mode)).save(path)


def test_kaggle_layout_with_aliases_and_awkward_names(tmp_path):
    for split in ("Training", "Testing"):
        for folder in ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"):
            for i in range(3):
                _img(tmp_path / split / folder / f"img ({i}).jpg")
    layout, records = data.discover(tmp_path, layout="auto", train_dir="Training", test_dir="Testing",
                                    classes=CLASSES, aliases=ALIASES, test_fraction=0.2, seed=0)
    assert layout == "kaggle"
    counts = Counter((r.split, r.label) for r in records)
    assert counts == {(s, c): 3 for s in ("train", "test") for c in CLASSES}


def test_imagefolder_layout_with_other_release_names(tmp_path):
    for folder in ("glioma", "meningioma", "notumor", "pituitary"):
        for i in range(10):
            _img(tmp_path / folder / f"{i}.png")
    layout, records = data.discover(tmp_path, layout="auto", train_dir="Training", test_dir="Testing",
                                    classes=CLASSES, aliases=ALIASES, test_fraction=0.2, seed=1)
    assert layout == "imagefolder"
    assert {r.label for r in records} == set(CLASSES)
    test = Counter(r.label for r in records if r.split == "test")
    assert test == {c: 2 for c in CLASSES}  # stratified 20 %


def test_unknown_class_folder_is_named(tmp_path):
    _img(tmp_path / "glioma" / "a.png")
    _img(tmp_path / "astrocytoma" / "b.png")
    with pytest.raises(InputError, match="astrocytoma"):
        data.discover(tmp_path, layout="imagefolder", train_dir="Training", test_dir="Testing",
                      classes=CLASSES, aliases=ALIASES, test_fraction=0.2, seed=0)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "I;16", "P"])
def test_decode_any_mode_and_size(tmp_path, mode):
    path = tmp_path / f"x ({mode.replace(';', '')}).png"
    _img(path, size=(70, 33), mode=mode)
    arr = data.decode_image(path, 48)
    assert arr.shape == (48, 48, 3) and arr.dtype == np.uint8


def test_decode_broken_file_names_it(tmp_path):
    bad = tmp_path / "broken (1).jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(InputError, match=r"broken \(1\)\.jpg"):
        data.decode_image(bad, 32)


def _records(n_per_class=20):
    return [data.ImageRecord(Path(f"/x/{c}/{i}.png"), "train", c) for c in CLASSES for i in range(n_per_class)]


def test_validation_split_is_stratified_and_seeded():
    recs = _records()
    tr1, va1 = data.split_validation(recs, 0.25, seed=5)
    tr2, va2 = data.split_validation(recs, 0.25, seed=5)
    _, va3 = data.split_validation(recs, 0.25, seed=6)
    assert va1 == [data.ImageRecord(r.path, "val", r.label) for r in va2]
    assert {r.path for r in va1} != {r.path for r in va3}
    assert Counter(r.label for r in va1) == {c: 5 for c in CLASSES}
    assert not {r.path for r in tr1} & {r.path for r in va1}


def test_validation_split_keeps_duplicate_groups_together():
    recs = _records()
    groups = {recs[i].path: 1000 + i // 2 for i in range(0, 80)}  # pairs of copies
    tr, va = data.split_validation(recs, 0.2, seed=0, groups=groups)
    side = {r.path: "tr" for r in tr} | {r.path: "va" for r in va}
    for i in range(0, 80, 2):
        assert side[recs[i].path] == side[recs[i + 1].path]


def test_image_cache_decodes_once(tmp_path, monkeypatch):
    recs = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        _img(p, value=40 * i)
        recs.append(data.ImageRecord(p, "train", "glioma"))
    calls = []
    real = data.decode_image
    monkeypatch.setattr(data, "decode_image", lambda p, s: calls.append(p) or real(p, s))
    cache = data.ImageCache(tmp_path / "cache")
    a = cache.load(recs, 32)
    b = cache.load(recs, 32)
    assert len(calls) == 3 and a is b
    c = data.ImageCache(tmp_path / "cache").load(recs, 32)  # a new run reads the disk cache
    assert len(calls) == 3 and np.array_equal(a, c)
    assert a[2].mean() > a[1].mean() > a[0].mean()


def test_class_coverage_warnings_name_each_unscored_class():
    counts = {"train": {c: 10 for c in CLASSES}, "val": {**{c: 2 for c in CLASSES}, "pituitary": 0},
              "test": {"glioma": 5, "meningioma": 4, "no_tumor": 0, "pituitary": 3}}
    warnings = data.class_coverage_warnings(CLASSES, counts, {"glioma": 2, "meningioma": 0, "no_tumor": 0,
                                                              "pituitary": 3})
    assert len(warnings) == 3
    assert warnings[0].startswith("class no_tumor has no test images")
    assert "min_recall gate on it is not evaluated" in warnings[0]
    assert warnings[1].startswith("class pituitary has no validation images")
    # no_tumor is not repeated for the leakage-free subset: it has no test images at all
    assert warnings[2].startswith("class meningioma has no leakage-free test images (all 4 test images")
    assert data.class_coverage_warnings(CLASSES, {s: {c: 1 for c in CLASSES} for s in ("val", "test")},
                                        {c: 1 for c in CLASSES}) == []


def test_discovery_warns_of_a_class_without_test_images_and_records_it(tmp_path):
    # Integration of prepare_data (no training): Testing/ lacks no_tumor, and meningioma's test
    # images are byte copies of training images, so the leakage-free subset lacks meningioma too.
    import shutil
    from datetime import datetime, timezone

    from engine.manifest import loads
    from engine.pipeline import RunContext, prepare_data

    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for split, n in (("Training", 8), ("Testing", 2)):
        for folder in ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"):
            if split == "Testing" and folder == "no_tumor":
                continue
            for i in range(n):
                path = root / split / folder / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                if split == "Testing" and folder == "meningioma_tumor":
                    shutil.copy(root / "Training" / folder / f"{i}.png", path)
                else:
                    Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(path)
    m = loads(f'[experiment]\nname = "cov"\n[data]\nroot = "{root}"\ncache = false\n'
              '[integrity]\nshift = false\n[[backbones]]\nname = "ResNet50"\n', base=tmp_path)
    echoed = []
    ctx = RunContext(m, tmp_path / "run", tmp_path, echoed.append, lambda: datetime.now(timezone.utc),
                     {"timings": {}})
    ctx.run_dir.mkdir()
    prepare_data(ctx)
    stored = ctx.results["data"]["warnings"]
    assert [w.split(":")[0] for w in stored] == ["class no_tumor has no test images",
                                                 "class meningioma has no leakage-free test images (all 2 test "
                                                 "images have a copy or near-copy in training)"]
    assert [f"warning: {w}" for w in stored] == [e for e in echoed if e.startswith("warning: class")]

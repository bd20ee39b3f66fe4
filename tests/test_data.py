"""Discovery, class aliasing, layouts, decoding of awkward files, seeded splits."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.data import discovery as data
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


def test_images_by_class_applies_aliases_and_ignores_what_is_not_a_class_folder(tmp_path):
    from engine.manifest import folder_aliases

    aliases = folder_aliases(CLASSES, {"Tumour_G": "glioma"})
    _img(tmp_path / "Glioma_Tumor" / "b.png")  # a default alias, any case
    _img(tmp_path / "tumour_g" / "deeper" / "a.jpg")  # [data.aliases], images below sub-folders too
    _img(tmp_path / "Normal" / "c.png")
    (tmp_path / "Normal" / "notes.txt").write_text("not an image")
    _img(tmp_path / ".thumbnails" / "d.png")  # hidden folder
    _img(tmp_path / "loose.png")  # a file beside the class folders
    found = data.images_by_class(tmp_path, aliases)
    assert found == {"glioma": [tmp_path / "Glioma_Tumor" / "b.png", tmp_path / "tumour_g" / "deeper" / "a.jpg"],
                     "no_tumor": [tmp_path / "Normal" / "c.png"]}


def test_images_by_class_names_a_folder_that_is_no_class(tmp_path):
    _img(tmp_path / "glioma" / "a.png")
    _img(tmp_path / "astrocytoma" / "b.png")
    with pytest.raises(InputError, match=r"'astrocytoma' match no class; known folder names: .*'glioma'") as info:
        data.images_by_class(tmp_path, ALIASES)
    assert str(info.value).startswith(repr(str(tmp_path)))


def test_folder_aliases_are_the_manifest_class_aliases():
    from engine.manifest import class_aliases, folder_aliases, loads

    m = loads('[data]\nclasses = ["glioma", "no_tumor"]\n[data.aliases]\n"GBM" = "glioma"\n'
              '"Normal" = "glioma"\n[[backbones]]\nname = "EfficientNetB0"\n', base=Path("."), check_data=False)
    assert class_aliases(m) == folder_aliases(["glioma", "no_tumor"], {"GBM": "glioma", "Normal": "glioma"})
    assert class_aliases(m)["gbm"] == "glioma" and class_aliases(m)["normal"] == "glioma"  # [data.aliases] win
    assert "meningioma_tumor" not in class_aliases(m) and class_aliases(m)["notumor"] == "no_tumor"


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
    groups = {recs[i].key: 1000 + i // 2 for i in range(0, 80)}  # pairs of copies
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
    monkeypatch.setattr(data, "decode_image", lambda p, s, *a: calls.append(p) or real(p, s, *a))
    cache = data.ImageCache(tmp_path / "cache")
    a = cache.load(recs, 32)
    b = cache.load(recs, 32)
    assert len(calls) == 3 and a is b
    c = data.ImageCache(tmp_path / "cache").load(recs, 32)  # a new run reads the disk cache
    assert len(calls) == 3 and np.array_equal(a, c)
    assert a[2].mean() > a[1].mean() > a[0].mean()


# ---------------------------------------------------------------------------------------------
# Too few images for the requested splits (issue 14, item 8)


def test_min_training_images_matches_the_validation_fraction():
    assert data.min_training_images(0.15) == 7  # 7 * 0.15 = 1.05: one validation image
    assert data.min_training_images(0.2) == 5  # not 6: 1 / 0.2 is 5.000000000000001 in floats
    assert data.min_training_images(0.5) == 2
    assert data.min_training_images(0.8) == 2  # one image must stay for training
    assert data.min_class_images(0.2, 0.15) == 9  # 2 test + 7 for training and validation


def test_validation_split_names_a_class_too_small_for_it():
    recs = _records(20)[:-20] + [r for r in _records(4) if r.label == "pituitary"]
    with pytest.raises(InputError, match=r"class 'pituitary' has 4 training images, fewer than the 7 that "
                                         r"data.validation_fraction = 0.15 needs.*at least 0.25"):
        data.split_validation(recs, 0.15, seed=0)


def test_validation_split_names_a_class_with_no_training_images():
    recs = [r for r in _records(10) if r.label != "no_tumor"]
    with pytest.raises(InputError, match="class 'no_tumor' has 0 training images"):
        data.split_validation(recs, 0.15, seed=0, classes=CLASSES)


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("fraction", [0.1, 0.15, 0.2, 0.3, 0.5])
def test_validation_split_at_the_minimum_gives_every_class_both_sides(fraction, grouped):
    n = data.min_training_images(fraction)
    recs = _records(n)
    groups = {r.key: i for i, r in enumerate(recs)} if grouped else None
    for seed in range(5):
        tr, va = data.split_validation(recs, fraction, seed=seed, groups=groups, classes=CLASSES)
        assert set(Counter(r.label for r in tr)) == set(CLASSES) == set(Counter(r.label for r in va))


def test_validation_split_names_a_class_whose_copies_cannot_be_split():
    recs = _records(10)
    groups = {r.key: (0 if r.label == "glioma" else 1 + i) for i, r in enumerate(recs)}  # glioma: one group
    with pytest.raises(InputError, match=r"class 'glioma'.* 10 images form 1 near-duplicate group"):
        data.split_validation(recs, 0.15, seed=0, groups=groups)


def _imagefolder(root: Path, per_class: dict[str, int]) -> None:
    for folder, n in per_class.items():
        for i in range(n):
            _img(root / folder / f"{i}.png", value=10 * i)


def test_imagefolder_names_a_class_too_small_for_test_and_validation(tmp_path):
    _imagefolder(tmp_path, {"glioma": 20, "meningioma": 20, "notumor": 6, "pituitary": 20})
    kw = dict(layout="auto", train_dir="Training", test_dir="Testing", classes=CLASSES, aliases=ALIASES,
              test_fraction=0.2, seed=0)
    with pytest.raises(InputError, match=r"class 'no_tumor' has 6 images, fewer than the 9 that data.test_fraction"
                                         r" = 0.2 and data.validation_fraction = 0.15 need per class"):
        data.discover(tmp_path, validation_fraction=0.15, **kw)
    data.discover(tmp_path, **kw)  # the test split alone (check-data) needs 5


def test_imagefolder_test_split_of_a_one_image_class_is_an_input_error(tmp_path):
    _imagefolder(tmp_path, {"glioma": 10, "meningioma": 10, "notumor": 1, "pituitary": 10})
    with pytest.raises(InputError, match="class 'no_tumor' has 1 images, fewer than the 5"):
        data.discover(tmp_path, layout="imagefolder", train_dir="Training", test_dir="Testing", classes=CLASSES,
                      aliases=ALIASES, test_fraction=0.2, seed=0)


def test_imagefolder_at_the_minimum_splits_into_all_three(tmp_path):
    _imagefolder(tmp_path, {"glioma": 9, "meningioma": 9, "notumor": 9, "pituitary": 9})
    _, records = data.discover(tmp_path, layout="auto", train_dir="Training", test_dir="Testing", classes=CLASSES,
                               aliases=ALIASES, test_fraction=0.2, seed=0, validation_fraction=0.15)
    train = [r for r in records if r.split == "train"]
    tr, va = data.split_validation(train, 0.15, seed=0, classes=CLASSES)
    for split in (tr, va, [r for r in records if r.split == "test"]):
        assert set(Counter(r.label for r in split)) == set(CLASSES)


def test_readable_skips_images_below_min_size_like_the_audit(tmp_path):
    """Without the integrity audit, readable() applies integrity.min_image_size the same way."""
    from engine.integrity.audit import IntegrityConfig, audit

    recs = []
    for name, size in (("one.png", (1, 1)), ("eight.png", (8, 8)), ("fine.png", (40, 32))):
        _img(tmp_path / name, size=size)
        recs.append(data.ImageRecord(tmp_path / name, "train", "glioma"))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    recs.append(data.ImageRecord(tmp_path / "broken.png", "train", "glioma"))
    ok, skipped = data.readable(recs, min_size=32)
    assert [r.path.name for r in ok] == ["fine.png"]
    reasons = {Path(s["path"]).name: s["reason"] for s in skipped}
    assert set(reasons) == {"one.png", "eight.png", "broken.png"}
    assert reasons["eight.png"] == "image is 8x8 px, smaller than integrity.min_image_size = 32"
    audited = {u.path.name: u.reason for u in audit(recs, IntegrityConfig(min_image_size=32)).unreadable}
    assert audited["eight.png"] == reasons["eight.png"] and audited["one.png"] == reasons["one.png"]
    assert len(data.readable(recs)[0]) == 3  # the default keeps any size: callers pass the manifest's


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
    from engine.results import RunResults

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
                     RunResults())
    ctx.run_dir.mkdir()
    prepare_data(ctx)
    stored = ctx.results.data.warnings
    assert [w.split(":")[0] for w in stored] == ["class no_tumor has no test images",
                                                 "class meningioma has no leakage-free test images (all 2 test "
                                                 "images have a copy or near-copy in training)"]
    assert [f"warning: {w}" for w in stored] == [e for e in echoed if e.startswith("warning: class")]


def test_decode_image_refuses_a_truncated_file_even_after_weasyprint_flipped_pil(tmp_path, monkeypatch):
    """The full suite renders reports (WeasyPrint sets PIL's LOAD_TRUNCATED_IMAGES) before training
    tests: the training decoder must refuse what the audit refuses, whatever that switch says."""
    from PIL import ImageFile

    path = tmp_path / "cut.png"
    _img(path, size=(48, 48))
    path.write_bytes(path.read_bytes()[:-40])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(InputError, match="cut.png"):
        data.decode_image(path, 32)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored, not left changed


def test_image_cache_decodes_on_threads_as_one_thread_does_and_refuses_truncated_files(tmp_path, monkeypatch):
    """Several decoding threads give the one-thread array byte for byte, in record order; a truncated
    file among many still fails (naming it) even with PIL's padding switch left on by WeasyPrint,
    and the switch is restored afterwards."""
    from PIL import ImageFile

    rng = np.random.default_rng(0)
    records = []
    for i in range(24):
        path = tmp_path / f"img ({i}).png"
        Image.fromarray(rng.integers(0, 256, (30 + i, 41, 3), dtype=np.uint8)).save(path)
        records.append(data.ImageRecord(path, "train", CLASSES[i % 4]))
    one = data.ImageCache(None, workers=1).load(records, 20)
    many = data.ImageCache(None, workers=4).load(records, 20)
    assert np.array_equal(one, many)
    assert not np.array_equal(many[0], many[1])  # distinct images, so order is checked

    cut = tmp_path / "cut.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(cut)
    cut.write_bytes(cut.read_bytes()[:-200])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(InputError, match="cut.png"):
        data.ImageCache(None, workers=4).load(records[:10] + [data.ImageRecord(cut, "train", "glioma")]
                                              + records[10:], 20)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True

"""Integrity audit (issue 4): planted defects are found, and nothing else is."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.distance import cdist

import engine.integrity.hashing as hashing
from engine.errors import InputError
from engine.integrity.hashing import hamming_pairs
from engine.integrity.audit import IntegrityConfig, audit, duplicate_groups, summary_text

from conftest import SARTAJ as REAL_DATA


@dataclass(frozen=True)
class Rec:  # the fields engine.data.discovery.ImageRecord exposes
    path: Path
    split: str
    label: str


def texture(seed: int, size: int = 128) -> Image.Image:
    """Smooth random colour field plus grain: unrelated seeds sit ~100 of 256 phash bits apart,
    while a resized JPEG copy stays within a few bits (128 px so phash down-samples, as on MRI)."""
    rng = np.random.default_rng(seed)
    low = Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    arr = np.asarray(low, dtype=float) + rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def save(img: Image.Image, path: Path, fmt: str = "PNG", **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **kw)
    return path


def records_under(root: Path) -> list[Rec]:
    return [Rec(p, p.parts[-3], p.parts[-2]) for p in sorted(root.glob("*/*/*")) if p.is_file()]


@pytest.fixture
def planted(tmp_path: Path) -> dict:
    root = tmp_path / "data with space"
    seed = iter(range(1000))
    for split, n in (("train", 5), ("test", 3)):
        for label in ("glioma", "meningioma"):
            for k in range(n):
                save(texture(next(seed)), root / split / label / f"{label[0]} ({k}).png")
    tr, te = root / "train", root / "test"
    p = {"root": root}
    # 1. byte-identical copy across splits
    p["exact_src"] = tr / "glioma" / "g (0).png"
    p["exact_copy"] = te / "glioma" / "copy of g0.png"
    shutil.copyfile(p["exact_src"], p["exact_copy"])
    # 2. same pixels, other container: exact by pixels, not by bytes
    p["resaved_src"] = tr / "glioma" / "g (2).png"
    p["resaved"] = save(Image.open(p["resaved_src"]), te / "glioma" / "resaved g2.bmp", "BMP")
    # 3. resized + re-encoded JPEG copy across splits: near, not exact
    p["resized_src"] = tr / "meningioma" / "m (0).png"
    p["resized"] = save(
        Image.open(p["resized_src"]).resize((96, 96), Image.BILINEAR), te / "meningioma" / "m0 small.jpg",
        "JPEG", quality=85,
    )
    # 4. the same image under another class (within train): a label conflict
    p["conflict_src"] = tr / "glioma" / "g (1).png"
    p["conflict"] = tr / "meningioma" / "looks like g1.png"
    shutil.copyfile(p["conflict_src"], p["conflict"])
    # 5. unreadable: truncated JPEG, zero-byte file, text posing as an image
    good = io.BytesIO()
    texture(999).save(good, "JPEG", quality=90)
    p["truncated"] = tr / "glioma" / "truncated.jpg"
    p["truncated"].write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    p["empty"] = te / "meningioma" / "empty.png"
    p["empty"].write_bytes(b"")
    p["text"] = tr / "meningioma" / "notes.jpg"
    p["text"].write_text("not an image")
    p["records"] = records_under(root)
    return p


def test_audit_finds_each_planted_defect_and_nothing_else(planted, tmp_path):
    p = planted
    report = audit(p["records"], IntegrityConfig(), cache_dir=tmp_path / "cache")

    reasons = {u.path: u.reason for u in report.unreadable}
    assert set(reasons) == {p["truncated"], p["empty"], p["text"]}
    assert "truncated" in reasons[p["truncated"]]
    assert reasons[p["empty"]] == "zero-byte file"
    assert "not a recognised image" in reasons[p["text"]]
    assert report.unreadable_paths == {(path, 0) for path in reasons}  # record keys: (path, frame)

    pairs = {(x.a.path, x.b.path): x for x in report.cross_split_pairs}
    assert set(pairs) == {
        (p["exact_copy"], p["exact_src"]),
        (p["resaved"], p["resaved_src"]),
        (p["resized"], p["resized_src"]),
    }
    assert pairs[(p["exact_copy"], p["exact_src"])].byte_identical
    assert pairs[(p["resaved"], p["resaved_src"])].exact
    assert not pairs[(p["resaved"], p["resaved_src"])].byte_identical
    resized_pair = pairs[(p["resized"], p["resized_src"])]
    assert not resized_pair.exact and 0 < resized_pair.distance <= IntegrityConfig().near_threshold

    assert report.cross_split_exact == 2
    assert report.leaked_test_paths == {(p[k], 0) for k in ("exact_copy", "resaved", "resized")}
    assert report.cross_split_near == 3

    assert len(report.label_conflicts) == 1
    conflict = report.label_conflicts[0]
    assert {f.path for f in conflict.files} == {p["conflict_src"], p["conflict"]}
    assert conflict.classes == ("glioma", "meningioma") and conflict.kind == "exact"

    # The conflict pair is also the only duplicate inside a split.
    assert len(report.within_split_groups) == 1
    group = report.within_split_groups[0]
    assert group.split == "train" and group.exact
    assert {f.path for f in group.files} == {p["conflict_src"], p["conflict"]}

    assert report.counts == {
        "train": {"glioma": 5, "meningioma": 6},
        "test": {"glioma": 5, "meningioma": 4},
    }
    assert report.listed_counts["train"] == {"glioma": 6, "meningioma": 7}
    # test: glioma 5 readable - 2 leaked; meningioma 4 readable - 1 leaked
    assert report.leakage_free_test_counts == {"glioma": 3, "meningioma": 3}


def test_to_dict_has_the_keys_outside_checks_read(planted):
    p = planted
    report = audit(p["records"], IntegrityConfig())
    block = json.loads(json.dumps(report.to_dict(root=p["root"])))  # must be JSON-serialisable
    assert block["cross_split_exact"] == 2
    assert block["cross_split_exact_bytes"] == 1
    assert block["cross_split_near"] == 3
    assert block["leakage_free_test_counts"] == {"glioma": 3, "meningioma": 3}
    assert block["near_threshold"] == IntegrityConfig().near_threshold
    assert {u["path"] for u in block["unreadable"]} == {
        "train/glioma/truncated.jpg", "test/meningioma/empty.png", "train/meningioma/notes.jpg"
    }
    assert all(u["reason"] for u in block["unreadable"])
    [conflict] = block["label_conflicts"]
    assert conflict["classes"] == ["glioma", "meningioma"]
    assert {f["path"] for f in conflict["files"]} == {"train/glioma/g (1).png", "train/meningioma/looks like g1.png"}
    assert sorted(block["leaked_test_files"]) == [
        "test/glioma/copy of g0.png", "test/glioma/resaved g2.bmp", "test/meningioma/m0 small.jpg"
    ]
    assert ["test/meningioma/m0 small.jpg", "train/meningioma/m (0).png"] in [
        x["files"] for x in block["cross_split_pairs"]
    ]
    assert [(x["test"], x["exact"], x["byte_identical"]) for x in block["example_pairs"]] == [
        ("test/glioma/copy of g0.png", True, True),
        ("test/glioma/resaved g2.bmp", True, False),
        ("test/meningioma/m0 small.jpg", False, False),
    ]
    assert block["image_stats"]["test"]["formats"] == {"BMP": 1, "JPEG": 1, "PNG": 7}
    assert block["within_split"]["train"]["n_redundant_exact_copies"] == 1
    # Without a root the paths are left as given.
    assert str(p["truncated"]) in {u["path"] for u in report.to_dict()["unreadable"]}


def test_summary_names_leakage_conflicts_and_unreadable(planted):
    text = summary_text(audit(planted["records"], IntegrityConfig()))
    assert "3 unreadable" in text
    assert "2 of 9 test images are exact copies" in text
    assert "3 (33.3%) have an exact or near twin" in text
    assert "label conflicts: 1 groups (2 files)" in text
    assert "WARNING" in text  # 33 % > 5 %


def test_fail_on_unreadable_raises_input_error_naming_files(planted):
    with pytest.raises(InputError) as err:
        audit(planted["records"], IntegrityConfig(fail_on_unreadable=True))
    assert "3 unreadable" in str(err.value)
    for key in ("truncated", "empty", "text"):
        assert str(planted[key]) in str(err.value)
    assert err.value.exit_code == 2


def test_cache_means_a_rerun_decodes_nothing(planted, tmp_path, monkeypatch):
    cfg = IntegrityConfig()
    first = audit(planted["records"], cfg, cache_dir=tmp_path / "cache")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a file that was in the cache")

    monkeypatch.setattr(hashing, "fingerprint_bytes", no_decoding)
    # Zero-byte files are never decoded, everything else must come from the cache.
    second = audit(planted["records"], cfg, cache_dir=tmp_path / "cache")
    assert second.to_dict()["cross_split_pairs"] == first.to_dict()["cross_split_pairs"]
    assert second.unreadable == first.unreadable
    assert second.cache_stats["misses"] == 0


def test_near_duplicate_pair_stays_in_one_validation_group(tmp_path):
    root = tmp_path / "d"
    for k in range(6):
        save(texture(100 + k), root / "train" / ("glioma" if k % 2 else "pituitary") / f"{k}.png")
    src = root / "train" / "glioma" / "1.png"
    twin = save(Image.open(src).resize((100, 100)), root / "train" / "glioma" / "1 twin.jpg", "JPEG", quality=80)
    records = records_under(root)
    report = audit(records, IntegrityConfig())
    groups = duplicate_groups(records, report)

    assert set(groups) == {(r.path, 0) for r in records}  # record keys: (path, frame)
    assert groups[(src, 0)] == groups[(twin, 0)]
    others = [g for key, g in groups.items() if key not in ((src, 0), (twin, 0))]
    assert len(set(others)) == len(others) and groups[(src, 0)] not in others
    assert sorted(set(groups.values())) == list(range(len(records) - 1))
    [near] = report.within_split_groups
    assert not near.exact and {f.path for f in near.files} == {src, twin}


@pytest.mark.parametrize("words", [1, 3])
def test_hamming_pairs_matches_brute_force(words):
    rng = np.random.default_rng(words)
    a = rng.integers(0, 2**63, size=(60, words), dtype=np.uint64)
    b = rng.integers(0, 2**63, size=(45, words), dtype=np.uint64)
    b[:10] = a[:10] ^ (np.uint64(1) << rng.integers(0, 63, size=(10, words)).astype(np.uint64))  # planted near
    bits = lambda x: np.unpackbits(x.astype(">u8").view(np.uint8), axis=1).astype(bool)
    full = np.rint(cdist(bits(a), bits(b), "hamming") * 64 * words).astype(int)
    self_full = np.rint(cdist(bits(a), bits(a), "hamming") * 64 * words).astype(int)
    limit = 26 * words  # deep enough into the random tail to have plenty of hits
    for block in (1 << 22, 320 * words):  # one block, and many uneven blocks (7 and 5 rows)
        i, j, d = hamming_pairs(a, b, max_distance=limit, max_block_elements=block)
        ref = {(x, y) for x, y in zip(*np.nonzero(full <= limit))}
        assert set(zip(i.tolist(), j.tolist())) == ref and len(i) == len(ref) > 10
        assert (d == full[i, j]).all()
        i, j, d = hamming_pairs(a, max_distance=limit, max_block_elements=block)
        ref = {(x, y) for x, y in zip(*np.nonzero(self_full <= limit)) if x < y}
        assert set(zip(i.tolist(), j.tolist())) == ref and len(i) == len(ref) > 0
        assert (d == self_full[i, j]).all()


@pytest.mark.parametrize("kwargs", [{"near_threshold": -1}, {"near_threshold": 128}, {"hash_size": 1},
                                    {"min_image_size": 0}, {"min_image_size": 32.5}, {"min_image_size": True}])
def test_config_rejects_bad_values_naming_the_key(kwargs):
    with pytest.raises(InputError, match=f"integrity.{next(iter(kwargs))}"):
        IntegrityConfig(**kwargs)


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"Sartaj dataset not present at {REAL_DATA}")
def test_real_sartaj_data_has_88_byte_identical_test_copies(request):
    def canonical(folder: str) -> str:
        return folder if folder == "no_tumor" else folder.removesuffix("_tumor")

    splits = {"Training": "train", "Testing": "test"}
    records = [
        Rec(p, splits[p.parts[-3]], canonical(p.parts[-2]))
        for p in sorted(REAL_DATA.glob("*/*/*"))
        if p.is_file()
    ]
    # pytest's cache keeps the fingerprints, so only the first run decodes 3,264 images.
    report = audit(records, IntegrityConfig(), cache_dir=request.config.cache.mkdir("integrity-fingerprints"))
    block = report.to_dict(root=REAL_DATA)
    assert block["cross_split_exact_bytes"] == 88
    assert 88 <= block["cross_split_exact"] <= block["cross_split_near"] <= block["n_test"]
    assert block["unreadable"] == []


def test_audit_stays_strict_after_weasyprint_import(planted):
    """WeasyPrint flips PIL's LOAD_TRUNCATED_IMAGES on import; a report rendered earlier in the
    same process must not let the truncated file pass as readable."""
    from PIL import ImageFile

    import weasyprint  # noqa: F401

    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        report = audit(planted["records"], IntegrityConfig())
        assert (Path(planted["truncated"]), 0) in report.unreadable_paths
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for the caller
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def test_images_below_min_image_size_are_listed_as_unusable(tmp_path):
    """1x1 and 8x8 files (issue 14) are skipped with a reason, not upscaled and trained on."""
    root = tmp_path / "data"
    recs = [Rec(save(texture(i), root / "train" / "glioma" / f"{i}.png"), "train", "glioma") for i in range(3)]
    tiny = {(1, 1): "one.png", (8, 8): "eight.png", (40, 31): "thin.png", (32, 32): "ok32.png"}
    for (w, h), name in tiny.items():
        recs.append(Rec(save(texture(7).resize((w, h)), root / "test" / "glioma" / name), "test", "glioma"))
    report = audit(recs, IntegrityConfig(), cache_dir=tmp_path / "cache")
    reasons = {Path(u.path).name: u.reason for u in report.unreadable}
    assert reasons == {
        "one.png": "image is 1x1 px, smaller than integrity.min_image_size = 32",
        "eight.png": "image is 8x8 px, smaller than integrity.min_image_size = 32",
        "thin.png": "image is 40x31 px, smaller than integrity.min_image_size = 32",
    }
    assert report.counts["test"]["glioma"] == 1 and report.listed_counts["test"]["glioma"] == 4
    assert report.image_stats["test"].widths == (32,)  # left out of every other figure
    block = report.to_dict(root=root)
    assert {u["path"] for u in block["unreadable"]} == {"test/glioma/one.png", "test/glioma/eight.png",
                                                       "test/glioma/thin.png"}
    assert "3 unreadable" in summary_text(report)
    # cached fingerprints of the same bytes get the same verdict; a lower limit keeps the 8x8 one
    again = audit(recs, IntegrityConfig(min_image_size=8), cache_dir=tmp_path / "cache")
    assert {Path(u.path).name for u in again.unreadable} == {"one.png"}

"""Issue 30: tumour outlines behind one reader interface (YOLO boxes and polygons, mask images, NIfTI
label volumes, boxes.csv), mask-based localisation scores with chance values, and one localisation
block per model and method (engine.explain.localise). Planted shapes: a map equal to the outline
scores 1 on every score, a map outside it 0."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.data.annotations import Outline, as_outline, is_annotation_file, parse_yolo, read_annotations
from engine.data.records import ImageRecord
from engine.explain import localisation
from engine.explain.localise import localise

SIDE = 40


def _record(path: Path, label: str = "glioma", frame: int = 0, frame_name: str | None = None) -> ImageRecord:
    return ImageRecord(path, "test", label, frame, frame_name)


def _image(path: Path, size=(SIDE, SIDE)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0]), 90, np.uint8)).save(path)
    return path


def _square(y0, y1, x0, x1, shape=(SIDE, SIDE)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


# ------------------------------------------------------------------------------------- readers

def test_yolo_polygon_box_and_mixed_lines(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("3 0.25 0.25 0.75 0.25 0.75 0.75 0.25 0.75\n")
    poly = parse_yolo(txt)
    assert poly.kind == "polygon" and len(poly.polygons) == 1
    assert np.array_equal(poly.mask((SIDE, SIDE)), _square(10, 30, 10, 30))
    txt.write_text("0 0.5 0.5 0.5 0.5\n\n")
    box = parse_yolo(txt)
    assert box.kind == "box" and np.array_equal(box.mask((SIDE, SIDE)), _square(10, 30, 10, 30))
    txt.write_text("0 0.125 0.125 0.25 0.25\n1 0.5 0.5 1.0 0.5 1.0 1.0 0.5 1.0\n")
    both = parse_yolo(txt)
    assert both.kind == "polygon" and np.array_equal(both.mask((SIDE, SIDE)),
                                                     _square(0, 10, 0, 10) | _square(20, 40, 20, 40))


def test_a_triangle_is_not_its_bounding_box(tmp_path):
    txt = tmp_path / "t.txt"
    txt.write_text("0 0.0 0.0 1.0 0.0 0.0 1.0\n")  # the upper-left half of the image
    mask = parse_yolo(txt).mask((SIDE, SIDE))
    assert mask.mean() == pytest.approx(0.5, abs=0.03) and mask[2, 2] and not mask[-3, -3]


def test_a_malformed_annotation_is_listed_with_file_and_line_and_the_rest_still_read(tmp_path):
    root = tmp_path / "data"
    good = _image(root / "glioma" / "good.png")
    good.with_suffix(".txt").write_text("0 0.5 0.5 0.4 0.4\n")
    bad = _image(root / "glioma" / "bad.png")
    bad.with_suffix(".txt").write_text("0 0.5 0.5 0.4 0.4\n0 0.1 0.2 0.3\n")
    odd = _image(root / "meningioma" / "odd.png")
    odd.with_suffix(".txt").write_text("0 0.1 0.1 0.2 0.1 1.7 0.4\n")
    none = _image(root / "pituitary" / "none.png")
    found = read_annotations([_record(p) for p in (good, bad, odd, none)], root)
    assert [o is not None for o in found.outlines] == [True, False, False, False]
    assert found.problems == [
        {"path": "glioma/bad.txt", "line": 2, "reason": found.problems[0]["reason"]},
        {"path": "meningioma/odd.txt", "line": 1, "reason": found.problems[1]["reason"]}]
    assert "4 fields" in found.problems[0]["reason"] and "outside 0..1" in found.problems[1]["reason"]
    assert found.kinds == {"box": 1}


def test_mask_image_beside_the_slice_or_in_a_masks_folder(tmp_path):
    root = tmp_path / "data"
    a = _image(root / "glioma" / "a.png", size=(SIDE * 2, SIDE * 2))
    Image.fromarray((_square(20, 60, 0, 40, (SIDE * 2, SIDE * 2)) * 255).astype(np.uint8)).save(
        root / "glioma" / "a_mask.png")
    b = _image(root / "glioma" / "b.jpg")
    (root / "glioma" / "masks").mkdir()
    Image.fromarray((_square(0, 10, 30, 40) * 7).astype(np.uint8)).save(root / "glioma" / "masks" / "b.png")
    c = _image(root / "glioma" / "c.png")
    Image.fromarray(np.zeros((SIDE, SIDE), np.uint8)).save(root / "glioma" / "c_mask.png")
    found = read_annotations([_record(p) for p in (a, b, c)], root)
    ma, mb = found.outlines[0], found.outlines[1]
    assert ma.kind == mb.kind == "mask" and found.outlines[2] is None
    # a mask of another resolution is read in normalised coordinates
    assert np.array_equal(ma.mask((SIDE, SIDE)), _square(10, 30, 0, 20))
    assert np.array_equal(mb.mask((SIDE, SIDE)), _square(0, 10, 30, 40))  # any non-zero pixel is tumour
    assert found.problems == [{"path": "glioma/c_mask.png", "line": None, "reason": "the mask has no non-zero pixel"}]


def test_annotation_files_are_never_images(tmp_path):
    from engine.data.discovery import images_by_class

    root = tmp_path / "data"
    _image(root / "glioma" / "a.png")
    _image(root / "glioma" / "a_mask.png")
    _image(root / "glioma" / "masks" / "a.png")
    (root / "glioma" / "vol_seg.nii.gz").write_bytes(b"")
    found = images_by_class(root, {"glioma": "glioma"})
    assert [p.name for p in found["glioma"]] == ["a.png"]
    assert is_annotation_file(Path("x/case_seg.nii.gz")) and not is_annotation_file(Path("x/case_flair.nii.gz"))


def _volumes(folder: Path, label_name: str):
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    data = np.full((SIDE, SIDE, 6), 10.0, np.float32)
    label = np.zeros(data.shape, np.uint8)
    data[5:15, 22:34, 2:4] = 200.0  # a bright block off centre on slices 2 and 3: the "tumour"
    label[5:15, 22:34, 2:4] = 1
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    image = folder / "case_flair.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(image))
    nib.save(nib.Nifti1Image(label, affine), str(folder / label_name))
    return image


@pytest.mark.parametrize("label_name", ["case_seg.nii.gz", "case_flair_mask.nii.gz"])
def test_nifti_label_volume_outlines_the_same_pixels_as_the_image_slice(tmp_path, label_name):
    from engine.data.discovery import decode_image, frame_records

    image = _volumes(tmp_path / "data" / "glioma", label_name)
    records = frame_records(image, "test", "glioma")
    found = read_annotations(records, tmp_path / "data")
    by_slice = {r.frame: o for r, o in zip(records, found.outlines)}
    assert by_slice[0] is None and by_slice[5] is None  # slices without tumour have no outline
    outline = by_slice[2]
    assert outline.kind == "mask" and found.problems == []
    # the outline lies where the bright block lies in the slice the image reader decodes
    pixels = decode_image(image, SIDE, frame=2)[..., 0]
    assert np.array_equal(outline.mask((SIDE, SIDE)), pixels > pixels.mean())


def test_nifti_label_volume_of_another_shape_is_a_problem(tmp_path):
    import nibabel as nib

    from engine.data.discovery import frame_records

    image = _volumes(tmp_path / "data" / "glioma", "case_seg.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 6), np.uint8), np.eye(4)), str(image.parent / "case_seg.nii.gz"))
    found = read_annotations(frame_records(image, "test", "glioma"), tmp_path / "data")
    assert all(o is None for o in found.outlines)
    assert found.problems and "differs from the image's" in found.problems[0]["reason"]


def test_boxes_csv_in_pixels_of_each_image(tmp_path):
    root = tmp_path / "data"
    a = _image(root / "glioma" / "a.png", size=(80, 40))  # width 80, height 40
    b = _image(root / "glioma" / "b.png")
    (root / "boxes.csv").write_text("image,x_min,y_min,x_max,y_max\nglioma/a.png,40,0,80,20\n"
                                    "glioma/a.png,0,20,20,40\nglioma/b.png,5,5,500,9\n")
    found = read_annotations([_record(a), _record(b)], root)
    assert found.outlines[0].kind == "box" and found.outlines[1] is None
    assert np.array_equal(found.outlines[0].mask((SIDE, SIDE)), _square(0, 20, 20, 40) | _square(20, 40, 0, 10))
    assert found.problems == [{"path": "boxes.csv", "line": 4, "reason": found.problems[0]["reason"]}]
    assert "do not lie inside the 40x40 image" in found.problems[0]["reason"]


# ------------------------------------------------------------------------------------- scores

def _outlines() -> dict[str, Outline]:
    """The same 12x16 block as each kind of outline."""
    box = as_outline((0.6, 0.35, 16 / SIDE, 12 / SIDE))  # rows 8..20, columns 16..32
    poly = Outline("polygon", Path("p.txt"), polygons=(np.array([[16, 8], [32, 8], [32, 20], [16, 20]]) / SIDE,))
    mask = Outline("mask", Path("m.png"), pixels=_square(8, 20, 16, 32))
    return {"box": box, "polygon": poly, "mask": mask}


@pytest.mark.parametrize("kind", ["box", "polygon", "mask"])
def test_a_map_equal_to_the_outline_scores_one_and_a_map_outside_it_zero(kind):
    outline = _outlines()[kind]
    inside = outline.mask((SIDE, SIDE)).astype(np.float32)
    assert np.array_equal(inside > 0, _square(8, 20, 16, 32))
    outside = _square(28, 38, 2, 12).astype(np.float32)
    on = localisation.score_image(inside, outline)
    off = localisation.score_image(outside, outline)
    assert {k: on[k] for k in ("hit", "tolerant_hit", "energy", "coverage", "iou")} == \
        {"hit": True, "tolerant_hit": True, "energy": 1.0, "coverage": 1.0, "iou": 1.0}
    assert {k: off[k] for k in ("hit", "tolerant_hit", "energy", "coverage", "iou")} == \
        {"hit": False, "tolerant_hit": False, "energy": 0.0, "coverage": 0.0, "iou": 0.0}
    assert on["area"] == pytest.approx(12 * 16 / SIDE ** 2)


def test_tolerance_is_measured_in_original_pixels_for_every_kind():
    outlines = _outlines()
    peak = np.zeros((SIDE, SIDE), np.float32)
    peak[24, 24] = 1.0  # 4 map pixels below the block; at 10x the original size that is ~40 px away
    for kind, outline in outlines.items():
        near = localisation.score_image(peak, outline, (SIDE, SIDE))
        far = localisation.score_image(peak, outline, (SIDE * 10, SIDE * 10))
        assert near["tolerant_hit"] and not near["hit"], kind
        assert not far["tolerant_hit"], kind


def test_summary_has_intervals_chance_values_and_verdicts():
    outline = _outlines()["mask"]
    good = np.stack([outline.mask((SIDE, SIDE)).astype(np.float32)] * 20)
    summary = localisation.localisation_scores(good, [outline] * 20, seed=1, n_boot=100)
    assert summary["total"] == 20 and summary["rate"] == summary["energy"] == summary["iou"] == 1.0
    random, centre = summary["chance"]["random"], summary["chance"]["centre"]
    assert random["energy"] == pytest.approx(outline.mask((SIDE, SIDE)).mean()) and random["coverage"] == 0.2
    assert 0 <= random["iou"] < 0.5 and 0 < centre["energy"] < 1
    assert summary["beats_chance"] == {k: True for k in localisation.SCORES}
    assert summary["beats_centre"]["energy"] is True
    flat = np.full((20, SIDE, SIDE), 0.5, np.float32)  # knows nothing: its energy is the area share
    none = localisation.localisation_scores(flat, [outline] * 20, seed=1, n_boot=100)
    assert none["energy"] == pytest.approx(random["energy"]) and none["beats_chance"]["energy"] is False
    empty = localisation.localisation_scores(flat[:2], [None, []], seed=1)
    assert empty["total"] == 0 and empty["rate"] is None and empty["beats_chance"] is None


# ------------------------------------------------------------------------------------- the stage

def _planted(n=10):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, SIDE, SIDE, 3)).astype(np.uint8)
    y = np.array([i % 3 for i in range(n)])  # class 2 is no_tumor
    outlines = []
    for i in range(n):
        y0, x0 = 2 + 2 * i, 4 + i
        outlines.append(Outline("mask", Path(f"{i}.png"), pixels=_square(y0, y0 + 8, x0, x0 + 10)) if i != 3 else None)
    return images, y, outlines


def test_localise_scores_every_annotated_tumour_image_once_per_method(tmp_path):
    images, y, outlines = _planted()
    def perfect(x, cls):  # knows where each image's tumour is
        return np.stack([next(o for i, o in enumerate(outlines) if o is not None and np.array_equal(images[i], im))
                         .mask((SIDE, SIDE)).astype(np.float32) for im in x])

    def lost(x, cls):
        out = np.zeros((len(x), SIDE, SIDE), np.float32)
        out[:, -3:, -3:] = 1.0  # the bottom-right corner: no outline reaches it
        return out

    def broken(x, cls):
        raise RuntimeError("no maps today")

    names = [f"img{i}" for i in range(len(images))]
    blocks = localise(None, images, y, outlines, ["perfect", "lost", "broken"], 5, tmp_path / "out", tmp_path,
                      class_names=["glioma", "meningioma", "no_tumor"], names=names, skip_class=2,
                      heatmaps={"perfect": perfect, "lost": lost, "broken": broken}, n_boot=50)
    good, bad, failed = blocks
    scored = [i for i in range(len(images)) if outlines[i] is not None and y[i] != 2]
    assert good["n_images"] == good["total"] == good["n_annotated"] == len(scored) and not good["sampled"]
    assert (good["rate"], good["energy"], good["coverage"], good["iou"]) == (1.0, 1.0, 1.0, 1.0)
    assert (bad["rate"], bad["energy"], bad["iou"]) == (0.0, 0.0, 0.0) and bad["beats_chance"]["energy"] is False
    assert failed == {"method": "broken", "error": "RuntimeError: no maps today"}
    assert set(good["per_class"]) == {"glioma", "meningioma"} and good["annotation_kinds"] == {"mask": len(scored)}
    ranks = [e["rank"] for e in good["examples"]]
    assert ranks.count("best") == ranks.count("worst") == 3 and all(e["image"] in names for e in good["examples"])
    figure = tmp_path / good["figure"]["path"]
    assert figure.is_file() and good["figure"]["path"] == "out/localisation_perfect.png"
    assert f"{good['total']} annotated images" in good["figure"]["caption"] and "energy 1.00" in good["figure"]["caption"]
    json.dumps(blocks, allow_nan=False)
    capped = localise(None, images, y, outlines, ["perfect"], 5, tmp_path / "c", tmp_path, skip_class=2,
                      class_names=["glioma", "meningioma", "no_tumor"], names=names, max_images=3,
                      heatmaps={"perfect": perfect}, n_boot=50)[0]
    assert capped["n_images"] == 3 and capped["sampled"] and capped["n_annotated"] == len(scored)
    again = localise(None, images, y, outlines, ["perfect"], 5, tmp_path / "d", tmp_path, skip_class=2,
                     class_names=["glioma", "meningioma", "no_tumor"], names=names, max_images=3,
                     heatmaps={"perfect": perfect}, n_boot=50)[0]
    assert [e["image"] for e in again["examples"]] == [e["image"] for e in capped["examples"]]  # seeded
    assert localise(None, images, y, [None] * len(images), ["perfect"], 5, tmp_path, tmp_path,
                    class_names=["a", "b", "c"], names=names, heatmaps={"perfect": perfect}) == []

"""Issue 17, frames: multi-frame DICOM and NIfTI volumes as inputs of an audit, frame by frame, and the
``[data]`` keys ``windowing``, ``window_percentiles`` and ``slices``.

Data: ``auditrun synth-data --format nifti`` (3 patients per class, 4 slices, 2 sites, 32 px: 16
volumes, 48 slices) and ``write_hospital_dataset(..., multiframe=True)`` (the same patients as
Enhanced MR multi-frame DICOM files). The truth file says how many slices each file holds. The run
trains a tiny CNN for one epoch at 32 px.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.data import discovery
from engine.data.discovery import ImageCache, decode_image, discover, patient_groups, readable, split_validation
from engine.data.readers import SliceSelection, Windowing
from engine.data.synth_hospital import write_hospital_dataset
from engine.errors import InputError
from engine.integrity.audit import IntegrityConfig, audit, duplicate_groups
from engine.integrity.hashing import FingerprintCache, fingerprint_files

from conftest import as_path, shown_names, write_manifest
from test_hospital_data import ALIASES, CLASSES, TRUTH, hospital_manifest
from test_nightly_e2e import tiny_backbone

SIZES = dict(patients_per_class=3, slices_per_patient=4, sites=2, size=32)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """{"nifti": root, "multi": root} and their truth files."""
    tmp = tmp_path_factory.mktemp("frames")
    result = invoke("synth-data", tmp / "nifti", "--format", "nifti", "--patients-per-class", 3,
                    "--slices-per-patient", 4, "--sites", 2, "--size", 32)
    assert result.exit_code == 0, result.output
    write_hospital_dataset(tmp / "multi", fmt="dicom", multiframe=True, **SIZES)
    truth = {k: json.loads((tmp / k / TRUTH).read_text()) for k in ("nifti", "multi")}
    return tmp, truth


def slices_per_file(truth: dict) -> dict[str, int]:
    """{relative file: number of slices it holds}, from the truth file."""
    return {files[0]: len(p["slices"][split]) for p in truth["patients"] for split, files in p["files"].items()}


def kaggle(root: Path, **kw):
    return discover(root, layout="kaggle", train_dir="Training", test_dir="Testing", classes=CLASSES,
                    aliases=ALIASES, test_fraction=0.25, seed=0, **kw)[1]


def rel(r, root: Path) -> str:
    return r.path.relative_to(root.resolve()).as_posix()


# ------------------------------------------------------------------------------ discovery


@pytest.mark.parametrize("kind", ["nifti", "multi"])
def test_every_slice_or_frame_is_one_record_and_a_selection_changes_the_count_exactly(sets, kind):
    # mutations: frame_records returns one record per file -> 16 records, not 48; the selection
    # ignored for multi-frame DICOM -> [1, 3] still gives 48
    tmp, truth = sets
    root, per_file = tmp / kind, slices_per_file(truth[kind])
    assert sum(per_file.values()) == 48 and len(per_file) == 16  # the fixture: 4 leaked patients of 2+2
    records = kaggle(root)
    counted = defaultdict(list)
    for r in records:
        counted[rel(r, root)].append(r.frame)
    assert {f: len(frames) for f, frames in counted.items()} == per_file
    assert all(sorted(frames) == list(range(per_file[f])) for f, frames in counted.items())
    assert len({r.key for r in records}) == len(records) == 48
    name = "slice" if kind == "nifti" else "frame"
    assert {r.frame_name for r in records} == {name}
    one = next(r for r in records if r.frame == 1)
    assert discovery.record_label(one, root.resolve()) == f"{rel(one, root)} [{name} 1]"

    for selection, kept in (([1, 3], lambda n: len(range(1, min(3, n)))), (3, lambda n: math.ceil(n / 3)),
                            ("all", lambda n: n)):
        got = kaggle(root, slices=SliceSelection.parse(selection))
        assert len(got) == sum(kept(n) for n in per_file.values()), selection
    # [1, 3] keeps slices 1 and 2: exactly those frame numbers
    assert {r.frame for r in kaggle(root, slices=SliceSelection(1, 3))} == {1}  | {2}


def test_a_selection_that_selects_nothing_lists_the_volume_as_unreadable_not_as_a_slice(sets, tmp_path):
    # mutation: frame_records drops the file when frames_of fails -> the volume silently disappears
    tmp, _ = sets
    root = tmp / "nifti"
    records = kaggle(root, slices=SliceSelection(10, 20))  # every volume has 2 or 4 slices
    assert len(records) == 16 and all(r.unreadable and r.frame_name is None for r in records)
    ok, skipped = readable(records)
    assert not ok and all("selects none of its" in s["reason"] for s in skipped)
    report = audit(records, IntegrityConfig(), cache_dir=tmp_path / "cache")
    assert len(report.unreadable) == 16 and report.cache_stats["misses"] == 0  # nothing decoded
    entry = report.to_dict(root=root.resolve())["unreadable"][0]
    assert "[slice" not in entry["path"] and entry["path"].endswith(".nii.gz")


def test_a_volumes_slices_never_straddle_training_and_validation_or_training_and_test(sets, tmp_path):
    # mutations: patient_groups returns `groups` when no record has a patient -> NIfTI slices (no
    # PatientID) split freely between training and validation; _group_keys returns None -> the
    # folder-per-class test split cuts volumes
    tmp, _ = sets
    root = tmp / "nifti"
    train = [r for r in kaggle(root) if r.split == "train"]
    assert not any(r.patient for r in train)
    report = audit(train, IntegrityConfig())
    for dup in (None, duplicate_groups(train, report)):
        groups = patient_groups(train, dup)
        assert groups is not None
        for seed in range(4):
            tr, va = split_validation(train, 0.5, seed, groups, classes=CLASSES)
            assert va and not {r.path for r in tr} & {r.path for r in va}

    flat = tmp_path / "flat"  # the same volumes, folder per class
    for src in root.rglob("*.nii.gz"):
        dest = flat / src.parent.name / f"{src.parent.parent.name}-{src.name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
    for seed in range(3):
        layout, records = discover(flat, layout="auto", train_dir="Training", test_dir="Testing", classes=CLASSES,
                                   aliases=ALIASES, test_fraction=0.25, seed=seed)
        assert layout == "imagefolder" and len(records) == 48
        by_split = {s: {r.path for r in records if r.split == s} for s in ("train", "test")}
        assert by_split["test"] and not by_split["train"] & by_split["test"]


# ------------------------------------------------------------------------------ decoding and windowing


def test_windowing_changes_pixels_and_is_part_of_every_cache_key(sets, tmp_path):
    # mutations: ImageCache ignores its windowing (or _cache_key leaves it out) -> the percentile
    # array equals the dicom one; the fingerprint cache key without the windowing -> a hit on the
    # second windowing and the same pixel hash
    tmp, _ = sets
    root = tmp / "multi"
    records = [r for r in kaggle(root) if "S1-" in r.path.name][:3]  # S1 stores a window
    dicom, pct = Windowing("dicom"), Windowing("percentile", (2.0, 98.0))
    a = decode_image(records[1].path, 32, records[1].frame, dicom)
    b = decode_image(records[1].path, 32, records[1].frame, pct)
    assert a.shape == b.shape == (32, 32, 3) and np.abs(a.astype(int) - b.astype(int)).mean() > 2
    assert not np.array_equal(decode_image(records[0].path, 32, 0, dicom), a)  # another frame, other pixels

    cache_dir = tmp_path / "cache"
    x_dicom = ImageCache(cache_dir, windowing=dicom).load(records, 32)
    x_pct = ImageCache(cache_dir, windowing=pct).load(records, 32)
    assert np.array_equal(x_dicom[1], a) and np.array_equal(x_pct[1], b)
    assert len(list(cache_dir.glob(ImageCache.FILE_GLOB))) == 2
    assert np.array_equal(ImageCache(cache_dir, windowing=pct).load(records, 32), x_pct)  # from disk

    keys = [r.key for r in records]
    cache = FingerprintCache(tmp_path / "fp", 16)
    first = fingerprint_files(keys, 16, cache=cache, workers=1, windowing=dicom)
    second = fingerprint_files(keys, 16, cache=cache, workers=1, windowing=pct)
    assert cache.hits == 0 and cache.misses == 6
    assert all(f.pixel_sha256 != s.pixel_sha256 and f.format == "DICOM" for f, s in zip(first, second))
    again = fingerprint_files(keys, 16, cache=cache, workers=1, windowing=pct)
    assert cache.hits == 3 and again == second


def test_two_frames_of_one_file_are_not_byte_twins_but_a_copied_file_pairs_frame_for_frame(sets, tmp_path):
    # mutations: fingerprint_frame keeps the file's sha256 for every frame -> the frames of one volume
    # are byte-identical twins of each other and every test frame leaks to every training frame;
    # thumbnails open the labelled path with PIL -> no thumbnail
    tmp, _ = sets
    src = next((tmp / "multi" / "Training" / "glioma_tumor").glob("*.dcm"))
    for split in ("Training", "Testing"):
        (tmp_path / split / "glioma_tumor").mkdir(parents=True)
        shutil.copy(src, tmp_path / split / "glioma_tumor" / src.name)
    records = discover(tmp_path, layout="kaggle", train_dir="Training", test_dir="Testing", classes=["glioma"],
                       aliases=ALIASES, test_fraction=0.25, seed=0)[1]
    n = len(records) // 2
    assert n >= 2
    report = audit(records, IntegrityConfig(near_threshold=0))
    assert report.cross_split_exact == len(report.byte_leaked_test_paths) == n
    byte_pairs = {(p.a.frame, p.b.frame) for p in report.cross_split_pairs if p.byte_identical}
    assert byte_pairs == {(k, k) for k in range(n)}
    d = report.to_dict(root=tmp_path.resolve())
    assert sorted(d["leaked_test_files"]) == sorted(f"Testing/glioma_tumor/{src.name} [frame {k}]" for k in range(n))

    # the report's thumbnails of example pairs read the named frame (PIL alone cannot open DICOM)
    from PIL import Image

    from engine.report.thumbnails import add_pair_thumbnails

    results = {"integrity": d}
    assert d["example_pairs"] and add_pair_thumbnails(results, tmp_path / "run", data_root=tmp_path) == len(
        d["example_pairs"])
    pair = d["example_pairs"][0]
    assert pair["test"].endswith("]")
    with Image.open(tmp_path / "run" / pair["files"]["test"]) as thumb:
        assert thumb.size == (32, 32)


# ------------------------------------------------------------------------------ manifest keys, commands


def nifti_manifest(tmp: Path, out: Path, data: Path, extra: str = "") -> Path:
    return write_manifest(tmp / f"{out.name}.toml", f"""
[experiment]
name = "frames"
output_dir = "{out}"
[data]
root = "{data}"
{extra}
[[backbones]]
name = "MobileNetV2"
""")


@pytest.mark.parametrize("line, key", [
    ('windowing = "window"', "data.windowing"),
    ("window_percentiles = [99.5, 0.5]", "data.window_percentiles"),
    ("window_percentiles = [1]", "data.window_percentiles"),
    ("window_percentiles = [0, 101]", "data.window_percentiles"),
    ("slices = [5, 2]", "data.slices"),
    ('slices = "half"', "data.slices"),
    ("slices = 0", "data.slices"),
    ("slices = 1.5", "data.slices"),
])
def test_a_bad_data_key_exits_2_naming_it(sets, line, key):
    tmp, _ = sets
    result = invoke("check-data", nifti_manifest(tmp, tmp / "bad", tmp / "nifti", line), "--quiet")
    assert result.exit_code == 2, result.output
    assert f"'{key}'" in result.output and "Traceback" not in result.output


def test_check_data_on_a_nifti_set_counts_slices_and_windowing_dicom_refuses_volumes_without_a_window(sets):
    # mutations: check-data drops slices= -> 48 images, not 32; drops windowing= -> nothing unreadable
    tmp, truth = sets
    out = tmp / "check-nifti"
    result = invoke("check-data", nifti_manifest(tmp, out, tmp / "nifti", "slices = [0, 2]"), "--quiet")
    assert result.exit_code == 0, result.output
    integrity = json.loads(result.stdout)["integrity"]
    assert integrity["n_files"] == integrity["n_readable"] == sum(min(n, 2) for n in slices_per_file(truth["nifti"]).values())
    assert integrity["image_stats"]["train"]["formats"] == {"NIfTI": sum(integrity["counts"]["train"].values())}
    assert integrity["patients"] == {}  # NIfTI carries no patient id

    # the synthetic volumes store no cal_min/cal_max: "dicom" (stored window only) refuses every slice
    result = invoke("check-data", nifti_manifest(tmp, out, tmp / "nifti", 'windowing = "dicom"'), "--quiet")
    assert result.exit_code == 0, result.output
    integrity = json.loads(result.stdout)["integrity"]
    assert integrity["n_readable"] == 0 and len(integrity["unreadable"]) == 48
    first = integrity["unreadable"][0]
    assert first["path"].startswith(("Testing/", "Training/")) and first["path"].endswith("[slice 0]")
    assert "needs a stored window" in first["reason"]


# ------------------------------------------------------------------------------ a full run and evaluate


@pytest.mark.slow
def test_a_run_and_evaluate_on_multiframe_dicom_go_frame_by_frame(tmp_path):
    # mutations: leakage_free_mask by path -> a KeyError-free but wrong mask (every frame kept: 16, not
    # 12); predictions keep the bare path -> no "[frame k]"; patient_groups by path -> a patient
    # straddles training and validation
    write_hospital_dataset(tmp_path / "data", fmt="dicom", multiframe=True, patients_per_class=4,
                           slices_per_patient=3, sites=2, size=32)
    truth = json.loads((tmp_path / "data" / TRUTH).read_text())
    tiny_backbone(tmp_path / "tiny.keras")
    result = invoke("run", hospital_manifest(tmp_path, tmp_path / "out"), "--quiet")
    assert result.exit_code in (0, 1), (result.exit_code, result.output, result.exception)
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    results = json.loads((run_dir / "results.json").read_text())
    per_file = slices_per_file(truth)
    n_test = sum(n for f, n in per_file.items() if f.startswith("Testing/"))
    assert sum(results["data"]["counts"]["test"].values()) == n_test == 16
    assert sum(sum(c.values()) for c in results["data"]["counts"].values()) == sum(per_file.values()) == 48
    assert results["data"]["validation_grouped_by_patient"] is True
    backbone = results["backbones"][0]
    assert backbone["status"] == "ok"
    leaked = sum(len(p["slices"]["Testing"]) for p in truth["patients"] if p["leaked"])
    assert backbone["leakage_free"]["n_images"] == n_test - leaked == 12

    with open(run_dir / "predictions" / "tiny.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = shown_names(run_dir)  # the data holds patient ids: artefacts show neutral references
    test_paths = [as_path(row["path"], names) for row in rows]
    assert len(set(test_paths)) == n_test
    # a file of several frames is shown with the frame; a leaked patient's one-frame test file by its path
    assert sorted(test_paths) == sorted(f if per_file[f] == 1 else f"{f} [frame {k}]"
                                        for f, n in per_file.items() if f.startswith("Testing/") for k in range(n))
    with open(run_dir / "predictions" / "tiny.validation.csv", newline="") as fh:
        val_files = {as_path(row["path"], names).split(" [")[0] for row in csv.DictReader(fh)}
    key_of = {files[0]: p["key"] for p in truth["patients"] for files in p["files"].values()}
    train_files = {f for f in key_of if f.startswith("Training/")} - val_files
    assert val_files and not {key_of[f] for f in val_files} & {key_of[f] for f in train_files}

    result = invoke("evaluate", run_dir, "--data", tmp_path / "data" / "Testing", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert sum(report["counts"].values()) == n_test and not report["skipped"]
    assert report["backbones"][0]["n_images"] == n_test
    # the same frames, decoded as the run decoded them: the run's test accuracy is reproduced
    assert report["backbones"][0]["accuracy"] == pytest.approx(backbone["test"]["accuracy"], abs=1e-6)


def test_evaluate_reads_an_external_folder_frame_by_frame_with_the_runs_windowing(sets):
    # mutations: ExternalImages decodes frame 0 of every file -> the rows of one file's frames are
    # equal; run_settings ignores data.windowing -> the pixels are the "auto" ones
    from engine.evaluation.external import ExternalImages, discover_folder, usable_images
    from engine.manifest import run_settings, slice_selection, windowing_options

    tmp, truth = sets
    folder = tmp / "multi" / "Testing"
    (tmp / "windowing-run").mkdir(exist_ok=True)
    (tmp / "windowing-run" / "manifest.toml").write_text('[data]\nwindowing = "percentile"\nwindow_percentiles = [5, 95]\n'
                                               'slices = [0, 2]\n')
    settings = run_settings(tmp / "windowing-run")
    windowing, slices = windowing_options(settings.data), slice_selection(settings.data)
    records, y = discover_folder(folder, CLASSES, ALIASES, slices)
    per_file = {f: n for f, n in slices_per_file(truth["multi"]).items() if f.startswith("Testing/")}
    assert len(records) == len(y) == sum(min(n, 2) for n in per_file.values())
    records, y, skipped = usable_images(folder, records, y, 32, lambda _m: None, windowing)
    assert not skipped
    x = ExternalImages(records, y, CLASSES, [[]] * len(records), [], windowing=windowing).pixels(32)
    first = next(i for i, r in enumerate(records) if r.frame == 1)
    assert records[first - 1].path == records[first].path and not np.array_equal(x[first - 1], x[first])
    assert np.array_equal(x[first], decode_image(records[first].path, 32, 1, Windowing("percentile", (5, 95))))
    assert not np.array_equal(x[first], decode_image(records[first].path, 32, 1))
    (tmp / "windowing-run" / "manifest.toml").write_text("[data]\nslices = [3, 1]\n")
    with pytest.raises(InputError, match="data.slices"):
        run_settings(tmp / "windowing-run")


def test_16_bit_png_is_windowed_by_the_data_windowing_keys(tmp_path):
    # mutation: decode_image min-max scaling raw 16-bit images again -> the outlier squeezes the tissue
    # into a few grey levels and the percentile check fails; "dicom" would then not refuse the file
    from PIL import Image

    from engine.data.discovery import decode_image
    from engine.data.readers import Windowing
    from engine.errors import InputError

    rng = np.random.default_rng(0)
    signal = rng.integers(1000, 3000, size=(64, 64)).astype(np.uint16)
    signal[0, 0] = 65000  # one hot pixel, as a 16-bit export often has
    path = tmp_path / "slice.png"
    Image.fromarray(signal).save(path)
    assert Image.open(path).mode.startswith("I")
    windowed = decode_image(path, 64, windowing=Windowing("percentile", (0.5, 99.5)))[..., 0]
    lo, hi = np.percentile(signal, [0.5, 99.5])
    expected = np.clip(np.rint((signal - lo) / (hi - lo) * 255), 0, 255)
    assert np.abs(windowed.astype(float) - expected).max() <= 1
    assert windowed.std() > 50  # the tissue spans the grey range; min-max would leave it near 0..12
    full = decode_image(path, 64, windowing=Windowing("percentile", (0.0, 100.0)))[..., 0]
    assert full.max() == 255 and full[1:, 1:].max() < 15
    with pytest.raises(InputError, match="stored window"):
        decode_image(path, 64, windowing=Windowing("dicom"))

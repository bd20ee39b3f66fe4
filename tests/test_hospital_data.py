"""Issue 17, first wiring: DICOM class folders through discovery, the integrity audit, check-data and a
run, with patients counted and grouped by pseudonym and no patient identity in any artefact.

The data is ``auditrun synth-data --format dicom`` (4 patients per class, 3 slices, 2 sites, 64 px):
its truth file ``.auditrun-hospital.json`` says which patients are in which split, which are leaked
(slices in both Training and Testing), and the identifying values planted in every header.
The full run trains a tiny CNN for one epoch at 32 px (about 10 s on 2 cores).
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.data import discovery
from engine.data.discovery import ImageRecord, discover, patient_groups
from engine.data.identity import Pseudonymizer
from engine.integrity.audit import IntegrityConfig, audit, summary_text

from conftest import write_manifest
from test_nightly_e2e import tiny_backbone

TRUTH = ".auditrun-hospital.json"
ALIASES = {"glioma_tumor": "glioma", "meningioma_tumor": "meningioma", "no_tumor": "no_tumor",
           "pituitary_tumor": "pituitary"}
CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def hospital(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hospital")
    result = invoke("synth-data", tmp / "data", "--format", "dicom", "--patients-per-class", 4,
                    "--slices-per-patient", 3, "--sites", 2, "--size", 64)
    assert result.exit_code == 0, result.output
    truth = json.loads((tmp / "data" / TRUTH).read_text())
    tiny_backbone(tmp / "tiny.keras")
    return tmp, truth


def planted_values(truth: dict) -> set[str]:
    """Every planted value, a person name's parts (the surname alone), the MRN's digits alone and
    the birth date in ISO form too."""
    values = set()
    for p in truth["patients"]:
        for field, value in p.get("identifiers", {}).items():
            values.add(str(value))
            if field == "PatientName" or "^" in str(value):
                values.update(part for part in str(value).split("^") if len(part) >= 4)
            if field == "PatientID":
                values.add(str(value).split("-")[-1])
            if field == "PatientBirthDate":
                values.add(f"{value[:4]}-{value[4:6]}-{value[6:]}")
    assert len(values) > 60  # the truth file holds them: the searches below are not empty
    return values


def assert_no_planted_value(texts: dict[str, bytes], truth: dict) -> None:
    """No planted value in any text, whatever its case (a file name may spell a name Fairweather)."""
    lowered = {name: data.lower() for name, data in texts.items()}
    for value in planted_values(truth):
        needle = value.lower().encode()
        hits = [name for name, data in lowered.items() if needle in data]
        assert not hits, f"planted identifying value {value!r} found in {hits}"


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, each file's name among them (a name is an artefact too), and the text
    of every PDF (its streams are compressed: the bytes alone would hide a name)."""
    out = {}
    for p in folder.rglob("*"):
        out[f"name of {p}"] = p.name.encode()
        if p.is_file():
            out[str(p)] = p.read_bytes()
            if p.suffix == ".pdf":
                from pypdf import PdfReader

                text = "\n".join(page.extract_text() or "" for page in PdfReader(p).pages)
                assert len(text) > 500, f"{p}: no text extracted; the search would be empty"
                out[f"text of {p}"] = text.encode()
    return out


def identifying_copy(tmp: Path, truth: dict) -> dict[str, str]:
    """``tmp/named``: the set again, with the file names a DICOM export often has: a folder per
    patient named by name and MRN, files by accession number, birth date and slice
    (``FAIRWEATHER_ROSALIND_MRN-12345678/ACC123456789_19790312_001.dcm``), YOLO boxes beside them.
    Returns {neutral path: identifying path}, both relative to their roots."""
    renamed = {}
    for p in truth["patients"]:
        ids = p["identifiers"]
        folder = f"{ids['PatientName'].replace('^', '_')}_{ids['PatientID']}"
        for files in p["files"].values():
            for f in files:
                split, cls, name = Path(f).parts
                slice_no = Path(name).stem.rsplit("-", 1)[-1]
                new = f"{split}/{cls}/{folder}/{ids['AccessionNumber']}_{ids['PatientBirthDate']}_{slice_no}.dcm"
                (tmp / "named" / new).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(tmp / "data" / f, tmp / "named" / new)
                box = (tmp / "data" / f).with_suffix(".txt")
                if box.is_file():
                    shutil.copy(box, (tmp / "named" / new).with_suffix(".txt"))
                renamed[f] = new
    return renamed


def hospital_manifest(tmp: Path, out: Path, data: str = "data") -> Path:
    return write_manifest(tmp / f"{out.name}.toml", f"""
[experiment]
name = "hospital"
seed = 3
output_dir = "{out}"
[data]
root = "{tmp / data}"
validation_fraction = 0.34
[training]
epochs = 1
batch_size = 8
[[backbones]]
name = "tiny"
file = "{tmp / 'tiny.keras'}"
preprocessing = "unit"
input_size = 32
train_backbone = true
[gradcam]
images_per_class = 1
[evaluation]
bootstrap_resamples = 50
[integrity]
shift = false
[report]
formats = ["html", "pdf"]
""")


def truth_patients(truth: dict) -> dict[str, int]:
    """{split: patients} as the audit names its splits."""
    names = {"Training": "train", "Testing": "test"}
    out = {"train": 0, "test": 0}
    for p in truth["patients"]:
        for split in p["files"]:
            out[names[split]] += 1
    return out


def key_of_file(truth: dict) -> dict[str, str]:
    return {f: p["key"] for p in truth["patients"] for files in p["files"].values() for f in files}


# ------------------------------------------------------------------------------ discovery, unit level


def test_dicom_files_at_any_depth_and_without_suffix_are_discovered(hospital, tmp_path):
    # mutation: drop `or is_dicom_path(p)` in formats.is_image_file -> no record, the test fails
    tmp, truth = hospital
    root = tmp_path / "root"
    src = sorted((tmp / "data" / "Training" / "glioma_tumor").glob("*.dcm"))
    for cls in ALIASES:
        train, test = root / "Training" / cls, root / "Testing" / cls
        (train / "series" / "deeper").mkdir(parents=True)
        test.mkdir(parents=True)
        shutil.copy(src[0], train / "series" / "deeper" / "IM0001")  # no suffix, DICOM preamble
        shutil.copy(src[1], train / "series" / "slice.dcm")
        shutil.copy(src[2], test / "1.2.840.99")  # a UID-like name
        (train / "notes.txt").write_text("not an image")
    _, records = discover(root, layout="kaggle", train_dir="Training", test_dir="Testing", classes=CLASSES,
                          aliases=ALIASES, test_fraction=0.34, seed=0)
    assert len(records) == 12
    assert {r.path.name for r in records} == {"IM0001", "slice.dcm", "1.2.840.99"}
    assert all(r.frame == 0 and r.patient is None for r in records)  # no pseudonymizer: no patient


def test_a_png_named_dcm_is_unreadable_even_when_its_bytes_are_cached_as_a_png(tmp_path):
    # mutation: key the fingerprint cache by the bytes' sha256 alone for DICOM too -> the second
    # audit takes the PNG's cached fingerprint and calls scan.dcm readable
    from PIL import Image

    Image.new("L", (40, 40), 128).save(tmp_path / "a.png")
    (tmp_path / "scan.dcm").write_bytes((tmp_path / "a.png").read_bytes())
    cache = tmp_path / "cache"
    audit([ImageRecord(tmp_path / "a.png", "train", "glioma")], IntegrityConfig(), cache_dir=cache)
    report = audit([ImageRecord(tmp_path / "scan.dcm", "train", "glioma")], IntegrityConfig(), cache_dir=cache)
    assert [u.path.name for u in report.unreadable] == ["scan.dcm"]
    assert "scan.dcm" not in report.unreadable[0].reason  # the reason, without the path again


def test_patient_groups_merge_duplicate_groups_and_patients():
    # mutation: skip `parent[...] = find(("patient", ...))` -> the two patient-p files get different ids
    recs = [ImageRecord(Path(f"/x/{i}.dcm"), "train", "glioma", patient=p)
            for i, p in enumerate(["p-a", "p-a", "p-b", "p-c", None])]
    dup = {Path("/x/2.dcm"): 7, Path("/x/3.dcm"): 7, Path("/x/4.dcm"): 9}
    g = {path: v for (path, _frame), v in patient_groups(recs, {(k, 0): v for k, v in dup.items()}).items()}
    assert g[Path("/x/0.dcm")] == g[Path("/x/1.dcm")]
    assert g[Path("/x/2.dcm")] == g[Path("/x/3.dcm")]  # p-b and p-c share a duplicate group
    assert len({g[Path("/x/0.dcm")], g[Path("/x/2.dcm")], g[Path("/x/4.dcm")]}) == 3
    assert patient_groups([ImageRecord(Path("/y.png"), "train", "glioma")], None) is None


# ------------------------------------------------------------------------------ check-data


@pytest.fixture(scope="module")
def named(hospital):
    """The hospital set copied under file names that carry identity (``identifying_copy``)."""
    tmp, truth = hospital
    return identifying_copy(tmp, truth)


def references(truth: dict, renamed: dict[str, str], out: Path) -> dict[str, str]:
    """{neutral path: the reference artefacts must show} under the experiment's key in ``out``."""
    from engine.data.identity import Pseudonymizer, file_reference

    pseudonymize = Pseudonymizer((out / ".keys" / "hospital.key").read_bytes(), "test")
    return {f: file_reference(renamed[f], pseudonymize(p["identifiers"]["PatientID"]), pseudonymize)
            for p in truth["patients"] for files in p["files"].values() for f in files}


def test_check_data_counts_patients_and_cross_split_patients_with_no_identity(hospital, named):
    # mutations: audit._patients returns cross = () -> cross_split_patients 0 != 4;
    # with_patients stores meta.patient_id instead of its pseudonym -> the MRN is found in stdout;
    # IntegrityReport.shown ignores display -> the identifying file names are in stdout
    tmp, truth = hospital
    out = tmp / "check-out"
    result = invoke("check-data", hospital_manifest(tmp, out, "named"))
    assert result.exit_code == 0, result.output
    integrity = json.loads(result.stdout)["integrity"]
    assert integrity["patients"] == truth_patients(truth)
    assert integrity["cross_split_patients"] == truth["leaked_patients"] == 4
    ids = integrity["cross_split_patient_ids"]
    assert len(ids) == 4 and all(i.startswith("p-") and len(i) == 18 for i in ids)
    assert integrity["n_readable"] == integrity["n_files"] == 48 and not integrity["unreadable"]
    # files are shown by reference: "<patient pseudonym>/f-<16 hex digits>.dcm"
    ref_of = references(truth, named, out)
    assert all(re.fullmatch(r"p-[0-9a-f]{16}/f-[0-9a-f]{16}\.dcm", r) for r in ref_of.values())
    assert len(set(ref_of.values())) == 48
    leaked_test = [f for p in truth["patients"] if p["leaked"] for f in p["files"]["Testing"]]
    assert sorted(integrity["patient_leaked_test_files"]) == sorted(ref_of[f] for f in leaked_test)
    assert {r.split("/")[0] for r in integrity["patient_leaked_test_files"]} <= set(ids)
    assert sum(integrity["leakage_free_test_counts"].values()) == integrity["n_test"] - len(leaked_test)
    # the key lives under <output>/.keys, never printed
    key = (out / ".keys" / "hospital.key").read_bytes()
    assert len(key) == 32 and key.hex() not in result.output
    texts = {k: v for k, v in files_under(out).items() if ".keys" not in k}
    assert_no_planted_value({"check-data output": result.output.encode(), **texts}, truth)


def test_unreadable_files_of_a_patient_set_are_listed_by_reference(hospital, named, tmp_path):
    # a broken file named after its patient: listed, with its reason, under a reference, by check-data and
    # by readable (the run's path when the audit is off). mutation: readable keeps str(r.path) -> the name
    tmp, truth = hospital
    root = tmp_path / "named"
    shutil.copytree(tmp / "named", root)
    victim = root / next(iter(named.values()))
    victim.write_bytes(victim.read_bytes()[:400])
    out = tmp_path / "out"
    manifest = hospital_manifest(tmp, out, "named").read_text().replace(str(tmp / "named"), str(root))
    result = invoke("check-data", write_manifest(tmp_path / "m.toml", manifest))
    assert result.exit_code == 0, result.output
    unreadable = json.loads(result.stdout)["integrity"]["unreadable"]
    assert len(unreadable) == 1 and re.fullmatch(r"(p-[0-9a-f]{16}/)?f-[0-9a-f]{16}\.dcm", unreadable[0]["path"])
    assert unreadable[0]["reason"]
    _, records = discover(root, layout="kaggle", train_dir="Training", test_dir="Testing", classes=CLASSES,
                          aliases=ALIASES, test_fraction=0.25, seed=0,
                          pseudonymizer=lambda: Pseudonymizer(b"k" * 32, "test"))
    ok, skipped = discovery.readable(records, root=root)
    assert len(ok) == 47 and len(skipped) == 1 and skipped[0]["path"].endswith(".dcm")
    assert_no_planted_value({"check-data output": result.output.encode(),
                             "readable": json.dumps(skipped).encode()}, truth)


# ------------------------------------------------------------------------------ a full run


@pytest.mark.slow
def test_a_run_on_dicom_groups_validation_by_patient_and_leaks_no_identity(hospital, named):
    # mutations: pipeline drops `groups = data_mod.patient_groups(train, groups)` -> a patient straddles
    # training and validation; ctx.leaked_test = report.leaked_test_paths only -> leakage_free n is 16, not 12;
    # predictions show relative_to_root instead of display_path -> the names are in the CSVs
    tmp, truth = hospital
    out = tmp / "run-out"
    result = invoke("run", hospital_manifest(tmp, out, "named"))
    assert result.exit_code in (0, 1), (result.exit_code, result.output, result.exception)
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    results = json.loads((run_dir / "results.json").read_text())
    assert results["data"]["validation_grouped_by_patient"] is True
    assert results["integrity"]["cross_split_patients"] == truth["leaked_patients"]

    key_of = key_of_file(truth)
    neutral_of = {ref: f for f, ref in references(truth, named, out).items()}
    with open(run_dir / "predictions" / "tiny.validation.csv", newline="") as fh:
        val_files = {neutral_of[row["path"]] for row in csv.DictReader(fh)}
    train_files = {f for f in key_of if f.startswith("Training/")} - val_files
    assert val_files and train_files
    assert not {key_of[f] for f in val_files} & {key_of[f] for f in train_files}

    leaked_test = [f for p in truth["patients"] if p["leaked"] for f in p["files"]["Testing"]]
    n_test = sum(results["data"]["counts"]["test"].values())
    backbone = results["backbones"][0]
    assert backbone["status"] == "ok"
    assert backbone["leakage_free"]["n_images"] == n_test - len(leaked_test) == 12
    # the Grad-CAM gallery names its images by reference too
    gallery = backbone["gradcam"]["items"]
    assert gallery and all(item["image"] in neutral_of for item in gallery)

    assert not any(p.is_relative_to(run_dir) for p in (out / ".keys").rglob("*"))
    # every artefact: the run directory (results.json, report.html, report.pdf's text, predictions,
    # gradcam/, integrity/, figures, logs, tracebacks) and the experiment's history beside it, the
    # cache, and everything the command printed
    texts = {k: v for k, v in files_under(out).items() if ".keys" not in k}
    assert any(k.endswith("report.pdf") for k in texts) and any("history" in k for k in texts)
    assert any("/gradcam/" in k for k in texts) and any(k.endswith(".csv") for k in texts)
    assert_no_planted_value({"run output": result.output.encode(), **texts}, truth)
    # the report lists the patients too (by pseudonym)
    html = (run_dir / "report.html").read_text()
    assert "Patients with images in more than one split" in html
    assert "neighbouring slices of one patient (not duplicates)" in html
    assert all(i in html for i in results["integrity"]["cross_split_patient_ids"])

    # external validation on a folder that names patients, with one broken file among them: the
    # skipped file and the warning show its reference under the run's key, never the name
    # (mutation: usable_images labels by record_label -> the patient folder is in the output)
    external = tmp / "named-external"
    shutil.rmtree(external, ignore_errors=True)
    shutil.copytree(tmp / "named" / "Testing", external)
    patient_folder = next(p for p in external.rglob("*") if p.is_dir() and "MRN" in p.name)
    broken = patient_folder / f"{patient_folder.name}_broken.dcm"
    broken.write_bytes(b"DICM but not really")
    result = invoke("evaluate", run_dir, "--data", external, "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [s["path"].split("/")[-1][:2] for s in report["skipped"]] == ["f-"]
    assert re.fullmatch(r"f-[0-9a-f]{16}\.dcm", report["skipped"][0]["path"])
    pseudonymize = Pseudonymizer((out / ".keys" / "hospital.key").read_bytes(), "test")
    from engine.data.identity import file_reference
    assert report["skipped"][0]["path"] == file_reference(str(broken.relative_to(external)), None, pseudonymize)
    assert report["backbones"][0]["n_images"] == n_test
    texts = files_under(run_dir)
    assert any("/external/" in k for k in texts)
    assert_no_planted_value({"evaluate output": result.output.encode(), **texts}, truth)


def test_the_folder_per_class_layout_splits_test_by_patient(hospital, tmp_path):
    # mutation: `_patient_keys` returns None -> the per-file split puts some patient's slices in both splits
    tmp, truth = hospital
    root = tmp_path / "flat"
    for p in truth["patients"]:
        for files in p["files"].values():
            for f in files:
                dest = root / Path(f).parts[1] / p["key"] / Path(f).name  # a folder per patient
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(tmp / "data" / f, dest)
    layout, records = discover(root, layout="auto", train_dir="Training", test_dir="Testing", classes=CLASSES,
                               aliases=ALIASES, test_fraction=0.25, seed=0,
                               pseudonymizer=lambda: (lambda pid: "p-" + str(abs(hash(pid)))))
    assert layout == "imagefolder" and len(records) == 48
    by_split = {s: {r.patient for r in records if r.split == s} for s in ("train", "test")}
    assert by_split["test"] and not by_split["train"] & by_split["test"]
    assert {r.label for r in records if r.split == "test"} == set(CLASSES)


# ------------------------------------------------------------------------------ neighbouring slices


def test_neighbouring_slices_of_one_patient_are_not_near_duplicate_leakage(tmp_path):
    # 10 slices per patient: neighbours sit within the near threshold. mutation: audit passes no
    # `neighbours` to _within_split_groups / _cross_split_pairs -> near groups of one patient's slices,
    # and the leaked patients' slices counted as near-duplicate twins (cross_split_near > 0)
    from dataclasses import replace

    from engine.data.synth_hospital import write_hospital_dataset

    write_hospital_dataset(tmp_path / "data", patients_per_class=3, slices_per_patient=10, sites=2, size=64)
    _, records = discover(tmp_path / "data", layout="kaggle", train_dir="Training", test_dir="Testing",
                          classes=CLASSES, aliases=ALIASES, test_fraction=0.25, seed=0,
                          pseudonymizer=lambda: Pseudonymizer(b"k" * 32, "test"))
    report = audit(records, IntegrityConfig(), class_names=CLASSES)
    anonymous = audit([replace(r, patient=None) for r in records], IntegrityConfig(), class_names=CLASSES)
    # without patient ids the same pairs are near duplicates, within and across splits
    n_near_pairs = {s: sum(len(g.files) - 1 for g in anonymous.within_split_groups if g.split == s and not g.exact)
                    for s in ("train", "test")}
    assert min(n_near_pairs.values()) > 0 and anonymous.cross_split_near > 0
    # with them: no near group, no twin; counted as neighbouring slices and as patient leakage
    assert not report.within_split_groups and not report.cross_split_pairs and report.cross_split_near == 0
    for split in ("train", "test"):
        slices = report.neighbouring_slices[split]
        assert slices["pairs"] >= n_near_pairs[split] and slices["images"] > slices["patients"] > 0
    assert report.cross_split_same_patient_pairs > 0 and len(report.cross_split_patient_ids) == 4
    # the leakage-free subset still leaves out every test image of a training patient, and only those
    n_test = report.n_test
    assert sum(report.leakage_free_test_counts.values()) == n_test - len(report.patient_leaked_test_paths) < n_test
    block = report.to_dict(tmp_path / "data")
    assert block["within_split"]["test"]["neighbouring_slices"] == report.neighbouring_slices["test"]
    assert block["cross_split_same_patient_pairs"] == report.cross_split_same_patient_pairs
    assert "neighbouring slices of one patient" in summary_text(report)

    # an image filed under another patient is a near duplicate of a different patient again
    victim = next(iter(g.files[1].path for g in anonymous.within_split_groups if g.split == "train" and not g.exact))
    relabelled = [replace(r, patient="p-0000000000000000") if r.path == victim else r for r in records]
    mixed = audit(relabelled, IntegrityConfig(), class_names=CLASSES)
    assert any(victim in {f.path for f in g.files} for g in mixed.within_split_groups if not g.exact)

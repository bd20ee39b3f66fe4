"""Issue 17: labels and metadata from a CSV (``[data] labels``, ``[data.columns]``).

The data is ``auditrun synth-data --format png16`` (4 patients per class, 3 slices, 2 sites, 32 px)
turned into a labels CSV from its truth file (``.auditrun-hospital.json``: per patient the class,
site, sex, age and files). Each patient gets a made-up MRN that appears nowhere but in the CSV, so
searching what auditrun writes for it shows whether a raw id leaked.
"""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.data.discovery import discover
from engine.data.identity import Pseudonymizer
from engine.data.labels_csv import fingerprint_entries
from engine.data.synth import KAGGLE_FOLDERS
from engine.errors import InputError
from engine.manifest import CANONICAL_CLASSES, folder_aliases, loads

from conftest import as_path, shown_names, write_manifest
from test_nightly_e2e import tiny_backbone

TRUTH = ".auditrun-hospital.json"
CLASSES = list(CANONICAL_CLASSES)
SPLITS = {"Training": "train", "Testing": "test"}
KEY = bytes(range(32))


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def mrn(i: int, patient: dict) -> str:
    """A made-up raw patient id: not the file-name key, so it is in no path."""
    return f"MRN{i:04d}Q{patient['key'][::-1].upper()}"


def labels_csv_from_truth(root: Path, truth: dict, *, name: str = "labels.csv", split: bool = True,
                          header: dict[str, str] | None = None, folder_labels: bool = False) -> Path:
    """Write a labels CSV for a ``synth-data`` hospital set from its truth file: one row per file
    with path, label, (split,) patient, site, sex and age. ``header`` renames columns; with
    ``folder_labels`` the label is the class folder's name (``glioma_tumor``), an alias."""
    names = {c: (header or {}).get(c, c) for c in ("path", "label", "split", "patient", "site", "sex", "age")}
    if not split:
        del names["split"]
    rows = []
    for i, p in enumerate(truth["patients"]):
        for folder, files in p["files"].items():
            for f in files:
                label = KAGGLE_FOLDERS[p["class"]] if folder_labels else p["class"]
                values = {"path": f, "label": label, "split": folder, "patient": mrn(i, p), "site": p["site"],
                          "sex": {"F": "female", "M": "Male"}.get(p["sex"], p["sex"]), "age": p["age"]}
                rows.append({names[k]: values[k] for k in names})
    path = root / name
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(names.values()))
        writer.writeheader()
        writer.writerows(rows)
    return path


def all_mrns(truth: dict) -> list[str]:
    return [mrn(i, p) for i, p in enumerate(truth["patients"])]


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def assert_no_raw_id(texts: dict[str, bytes], truth: dict) -> None:
    ids = all_mrns(truth)
    assert len(ids) == 16
    for value in ids:
        hits = [name for name, data in texts.items() if value.encode() in data]
        assert not hits, f"raw patient id {value} found in {hits}"


@pytest.fixture(scope="module")
def hospital(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("csvlabels")
    result = invoke("synth-data", tmp / "data", "--format", "png16", "--patients-per-class", 4,
                    "--slices-per-patient", 3, "--sites", 2, "--size", 32)
    assert result.exit_code == 0, result.output
    truth = json.loads((tmp / "data" / TRUTH).read_text())
    tiny_backbone(tmp / "tiny.keras")  # the manifest names it; check-data too checks that it exists
    return tmp, truth


def find(root: Path, labels="labels.csv", columns=None, aliases=None, test_fraction=0.25, seed=0):
    return discover(root, layout="auto", train_dir="Training", test_dir="Testing", classes=CLASSES,
                    aliases=folder_aliases(CLASSES, aliases or {}), test_fraction=test_fraction, seed=seed,
                    pseudonymizer=lambda: Pseudonymizer(KEY, "test"), labels=labels, columns=columns)


# ------------------------------------------------------------------------------ discovery


def test_a_csv_with_a_split_column_gives_the_truth_files_labels_splits_patients_and_meta(hospital):
    # mutations: drop the split overlay in discover_csv -> every record "train"; store row.patient instead
    # of its pseudonym -> the MRN is on the record
    tmp, truth = hospital
    root = tmp / "data"
    labels_csv_from_truth(root, truth, folder_labels=True)  # labels are aliases: glioma_tumor, ...
    layout, records = find(root)
    assert layout == "csv"
    expected = {}
    pseudonymizer = Pseudonymizer(KEY, "test")
    for i, p in enumerate(truth["patients"]):
        for folder, files in p["files"].items():
            for f in files:
                expected[(root / f).resolve()] = (SPLITS[folder], p["class"], pseudonymizer(mrn(i, p)),
                                                  {"site": p["site"], "sex": p["sex"], "age": float(p["age"])})
    got = {r.path: (r.split, r.label, r.patient, r.meta) for r in records}
    assert got == expected and len(records) == 48
    assert len({r.patient for r in records}) == 16
    assert not any(m in repr(records) for m in all_mrns(truth))


def test_without_a_split_column_the_test_split_is_carved_by_patient_independent_of_row_order(hospital, tmp_path):
    # mutation: _carve_test keys by file instead of patient -> some patient's slices straddle the split
    tmp, truth = hospital
    root = tmp / "data"
    labels_csv_from_truth(root, truth, name="nosplit.csv", split=False)
    _, records = find(root, labels="nosplit.csv")
    train = {r.patient for r in records if r.split == "train"}
    test = {r.patient for r in records if r.split == "test"}
    assert train and test and not train & test
    assert {r.label for r in records if r.split == "test"} == set(CLASSES)
    assert len(records) == 48
    # the same split whatever order the rows come in
    lines = (root / "nosplit.csv").read_text().splitlines()
    body = lines[1:]
    random.Random(1).shuffle(body)
    shuffled = tmp_path / "shuffled.csv"
    shuffled.write_text("\n".join([lines[0]] + body) + "\n")
    _, again = find(root, labels=str(shuffled))  # an absolute path outside the root is fine for the CSV
    assert [(r.path, r.split) for r in again] == [(r.path, r.split) for r in records]
    # and another seed gives another split
    _, other = find(root, labels="nosplit.csv", seed=7)
    assert [(r.path, r.split) for r in other] != [(r.path, r.split) for r in records]


def test_columns_map_roles_to_other_names_and_aliases_apply_to_label_values(hospital):
    tmp, truth = hospital
    root = tmp / "data"
    header = {"path": "File", "label": "Diagnosis", "split": "Set", "patient": "MRN", "sex": "Gender"}
    labels_csv_from_truth(root, truth, name="renamed.csv", header=header, folder_labels=True)
    text = (root / "renamed.csv").read_text().replace("glioma_tumor", "GBM")
    (root / "renamed.csv").write_text(text)
    columns = {"path": "File", "label": "Diagnosis", "split": "Set", "patient": "MRN", "sex": "Gender"}
    with pytest.raises(InputError, match=r"renamed.csv: row \d+, column 'Diagnosis': 'GBM' is not a class"):
        find(root, labels="renamed.csv", columns=columns)
    _, records = find(root, labels="renamed.csv", columns=columns, aliases={"gbm": "glioma"})
    assert sum(r.label == "glioma" for r in records) == 12
    assert {r.meta["sex"] for r in records} == {"F", "M"}
    assert len({r.patient for r in records}) == 16


def test_the_labels_csv_is_part_of_the_data_fingerprint(tmp_path):
    (tmp_path / "labels.csv").write_text("path,label\na.png,glioma\n")
    before = fingerprint_entries(tmp_path, "labels.csv")
    (tmp_path / "labels.csv").write_text("path,label\na.png,no_tumor\n")
    assert fingerprint_entries(tmp_path, "labels.csv") != before and fingerprint_entries(tmp_path, None) == []


# ------------------------------------------------------------------------------ bad tables: exit 2


def manifest(tmp: Path, out: Path, *, root: Path | None = None, labels: str = "labels.csv", extra: str = "") -> Path:
    return write_manifest(tmp / f"{out.name}.toml", f"""
[experiment]
name = "csvlabels"
seed = 3
output_dir = "{out}"
[data]
root = "{root or tmp / 'data'}"
labels = "{labels}"
validation_fraction = 0.34
{extra}
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
enabled = false
[evaluation]
bootstrap_resamples = 50
[integrity]
shift = false
[report]
formats = ["html"]
""")


def _edit(rows: list[list[str]], case: str) -> tuple[list[list[str]], str]:
    """Break a copy of the table one way; return it with the message expected (row 3 = 2nd image)."""
    rows = [list(r) for r in rows]
    if case == "missing column":
        return [r[:1] + r[2:] for r in rows], r"row 1 has no column 'label' for the label"
    if case == "escaping path":
        rows[2][0] = "../outside.png"
        return rows, r"row 3, column 'path': '../outside.png' lies outside the data root"
    if case == "unknown label":
        rows[2][1] = "astrocytoma"
        return rows, r"row 3, column 'label': 'astrocytoma' is not a class"
    if case == "duplicated path":
        rows[4][0] = rows[2][0]
        return rows, r"row 5, column 'path': .* is the file of row 3 too"
    if case == "bad split":
        rows[2][2] = "val"
        return rows, r"row 3, column 'split': 'val' is not a split"
    if case == "bad sex":
        rows[2][5] = "X"
        return rows, r"row 3, column 'sex': 'X' is not a sex"
    if case == "bad age":
        rows[2][6] = "forty"
        return rows, r"row 3, column 'age': 'forty' is not an age"
    assert case == "folder path"
    rows[2][0] = "Training"
    return rows, r"row 3, column 'path': 'Training' is a folder"


@pytest.mark.parametrize("case", ["missing column", "escaping path", "unknown label", "duplicated path",
                                  "bad split", "bad sex", "bad age", "folder path"])
def test_a_bad_csv_exits_2_naming_the_file_row_and_column(hospital, case):
    tmp, truth = hospital
    root = tmp / "data"
    good = labels_csv_from_truth(root, truth, name="good.csv")
    rows, expected = _edit(list(csv.reader(good.open(newline=""))), case)
    name = f"bad-{case.replace(' ', '-')}.csv"
    with open(root / name, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    result = invoke("check-data", manifest(tmp, tmp / "bad-out", labels=name), "--quiet")
    assert result.exit_code == 2, result.output
    assert f"{root / name}:" in result.output
    assert re.search(expected, result.output), result.output
    assert "Traceback" not in result.output
    assert_no_raw_id({"output": result.output.encode()}, truth)


def test_manifest_keys_are_checked(tmp_path):
    backbone = tmp_path / "b.keras"
    backbone.write_bytes(b"")  # only its existence is checked here

    def load(data: str):
        text = f'[data]\nroot = "{tmp_path}"\n{data}\n[[backbones]]\nname = "x"\nfile = "{backbone}"\n'
        return loads(text, base=tmp_path, check_data=False)

    with pytest.raises(InputError, match=r"data.columns.mrn' is not a column role"):
        load('labels = "l.csv"\n[data.columns]\nmrn = "MRN"')
    with pytest.raises(InputError, match=r"data.layout' is 'kaggle', but data.labels"):
        load('labels = "l.csv"\nlayout = "kaggle"')
    with pytest.raises(InputError, match=r"data.columns' maps CSV columns, which needs data.labels"):
        load('[data.columns]\npath = "file"')
    with pytest.raises(InputError, match=r"data.layout' is \"csv\": set data.labels"):
        load('layout = "csv"')


# ------------------------------------------------------------------------------ check-data and a run


def test_missing_files_are_listed_unreadable_and_none_existing_is_an_error(hospital):
    # mutation: read_rows raises for the first missing file -> check-data exits 2 instead of listing it
    tmp, truth = hospital
    root = tmp / "data"
    good = labels_csv_from_truth(root, truth, name="good.csv")
    rows = list(csv.reader(good.open(newline="")))
    rows.append(["Training/glioma_tumor/gone.png", "glioma", "train", "", "", "", ""])
    with open(root / "missing.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    result = invoke("check-data", manifest(tmp, tmp / "missing-out", labels="missing.csv"), "--quiet")
    assert result.exit_code == 0, result.output
    unreadable = json.loads(result.stdout)["integrity"]["unreadable"]
    # the data holds patient ids, so the file is named by reference; `locate` finds it again
    assert len(unreadable) == 1 and re.fullmatch(r"f-[0-9a-f]{16}\.png", unreadable[0]["path"])
    assert "No such file" in unreadable[0]["reason"]
    found = invoke("locate", manifest(tmp, tmp / "missing-out", labels="missing.csv"), unreadable[0]["path"])
    assert found.exit_code == 0, found.output
    assert found.stdout == f"{unreadable[0]['path']}\tTraining/glioma_tumor/gone.png\n"
    wrong = invoke("locate", manifest(tmp, tmp / "missing-out", labels="missing.csv"), "f-0000000000000000.png")
    assert wrong.exit_code == 2 and "f-0000000000000000.png" in wrong.output

    with open(root / "none.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([rows[0]] + [["x/" + r[0]] + r[1:] for r in rows[1:]])
    result = invoke("check-data", manifest(tmp, tmp / "none-out", labels="none.csv"), "--quiet")
    assert result.exit_code == 2 and "none of the 49 files it lists exists (row 2, column 'path'" in result.output


def test_check_data_counts_csv_patients_and_writes_no_raw_id(hospital):
    # mutation: _with_identity keeps r.patient (None for PNG) -> patients {} and 0 cross-split patients
    tmp, truth = hospital
    labels_csv_from_truth(tmp / "data", truth)
    out = tmp / "check-out"
    result = invoke("check-data", manifest(tmp, out), "--quiet")
    assert result.exit_code == 0, result.output
    integrity = json.loads(result.stdout)["integrity"]
    expected = {"train": 0, "test": 0}
    for p in truth["patients"]:
        for folder in p["files"]:
            expected[SPLITS[folder]] += 1
    assert integrity["patients"] == expected
    assert integrity["cross_split_patients"] == truth["leaked_patients"] == 4
    assert len((out / ".keys" / "csvlabels.key").read_bytes()) == 32
    assert_no_raw_id({"check-data output": result.output.encode(), **files_under(out)}, truth)


@pytest.mark.slow
def test_a_run_on_a_csv_set_groups_by_patient_and_writes_no_raw_id(hospital):
    tmp, truth = hospital
    labels_csv_from_truth(tmp / "data", truth)
    out = tmp / "run-out"
    result = invoke("run", manifest(tmp, out), "--quiet")
    assert result.exit_code in (0, 1), (result.exit_code, result.output, result.exception)
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    results = json.loads((run_dir / "results.json").read_text())
    assert results["data"]["layout"] == "csv"
    assert results["data"]["validation_grouped_by_patient"] is True
    assert results["integrity"]["cross_split_patients"] == truth["leaked_patients"]
    assert results["backbones"][0]["status"] == "ok"
    # validation patients are not training patients
    patient_of = {f: mrn(i, p) for i, p in enumerate(truth["patients"]) for fs in p["files"].values() for f in fs}
    with open(run_dir / "predictions" / "tiny.validation.csv", newline="") as fh:
        val_refs = [row["path"] for row in csv.DictReader(fh)]
    # the data holds patient ids: artefacts name files by neutral reference, never by path
    assert not {r for r in val_refs if not re.fullmatch(r"p-[0-9a-f]{16}/f-[0-9a-f]{16}\.png", r)}
    val_files = {as_path(r, shown_names(run_dir, patient_of)) for r in val_refs}
    train_files = {f for f in patient_of if f.startswith("Training/")} - val_files
    assert val_files and train_files
    assert not {patient_of[f] for f in val_files} & {patient_of[f] for f in train_files}
    assert_no_raw_id({"run output": result.output.encode(), **files_under(out)}, truth)


# ------------------------------------------------------------------------------ DICOM and NIfTI files


def test_csv_values_win_over_dicom_headers_and_empty_cells_fall_back(tmp_path):
    # mutation: merge the header's meta over the CSV's -> the site is the InstitutionName
    result = invoke("synth-data", tmp_path / "d", "--format", "dicom", "--patients-per-class", 3,
                    "--slices-per-patient", 2, "--sites", 2, "--size", 32)
    assert result.exit_code == 0, result.output
    truth = json.loads((tmp_path / "d" / TRUTH).read_text())
    files = [(f, p) for p in truth["patients"] for fs in p["files"].values() for f in fs]
    with open(tmp_path / "d" / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split", "patient", "site", "age"])
        for k, (f, p) in enumerate(files):
            # even rows: the CSV's own patient id, site and age; odd rows: empty cells (the header's)
            cells = [f"CSV{p['key']}", "Site from CSV", "33"] if k % 2 == 0 else ["", "", ""]
            writer.writerow([f, p["class"], f.split("/")[0]] + cells)
    _, records = find(tmp_path / "d")
    pseudonymizer = Pseudonymizer(KEY, "test")
    by_path = {r.path: r for r in records}
    for k, (f, p) in enumerate(files):
        r = by_path[(tmp_path / "d" / f).resolve()]
        if k % 2 == 0:
            assert r.patient == pseudonymizer(f"CSV{p['key']}")
            assert r.meta["site"] == "Site from CSV" and r.meta["age"] == 33.0
        else:
            assert r.patient == pseudonymizer(p["identifiers"]["PatientID"])
            assert r.meta["site"] != "Site from CSV" and r.meta["age"] == float(p["age"])
        assert r.meta["sex"] == p["sex"]  # no sex column: the header's
    assert "scanner" in records[0].meta


def test_nifti_volumes_listed_in_a_csv_are_discovered(tmp_path):
    # NIfTI frames (one record per slice) are another change; this checks the CSV finds the files
    result = invoke("synth-data", tmp_path / "n", "--format", "nifti", "--patients-per-class", 3,
                    "--slices-per-patient", 2, "--sites", 2, "--size", 32)
    assert result.exit_code == 0, result.output
    truth = json.loads((tmp_path / "n" / TRUTH).read_text())
    labels_csv_from_truth(tmp_path / "n", truth)
    _, records = find(tmp_path / "n")
    expected = {(tmp_path / "n" / f).resolve(): (SPLITS[s], p["class"])
                for p in truth["patients"] for s, fs in p["files"].items() for f in fs}
    assert {r.path: (r.split, r.label) for r in records} == expected
    assert all(r.path.name.endswith(".nii.gz") for r in records)

"""Fuzzing the documents users hand auditrun (issue 26): labels CSVs and results.json files.

Generated labels CSVs - the rows of a valid table, then missing, repeated and escaping paths, links
out of the data root, folders, unknown labels and splits, odd ages and sexes, dropped and renamed
columns - go through ``auditrun check-data`` and, for a few, a whole ``auditrun MANIFEST`` run. Every
file and folder of the data is named after a patient (``DOE_JOHN``), and the patient column holds
made-up ids (``MRN-SECRET-k``). Generated results.json documents - a real run's file with numbers
set to NaN, infinity, 1e308 or negative counts, keys removed, values of the wrong type - go through
``auditrun render``.

The property in every case: exit 0, 1 or 2; no traceback; nothing written outside the output
root (the run directory for render); no raw patient id anywhere, and, when the data holds patient
ids, no patient-named path in the terminal or in any file auditrun wrote.

Derandomized, no example database, so every CI run sees the same examples: 120 CSVs through
check-data, 6 through a run, 60 results documents (about 90 s on 2 cores). FUZZ_SCALE=10
searches ten times as long.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.cli import main

from conftest import write_manifest
from test_nightly_e2e import tiny_backbone

SCALE = float(os.environ.get("FUZZ_SCALE", 1))
N_CSV = int(120 * SCALE)
N_CSV_RUN = max(1, int(6 * SCALE))
N_RESULTS = int(60 * SCALE)

NAME = "DOE_JOHN"
SECRET = "MRN-SECRET"
CLASSES = ("glioma", "meningioma", "no_tumor", "pituitary")
FOLDERS = ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")
RUN_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run_fixture"


def fuzz_settings(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every entry below ``folder`` (links not followed) with its size and mtime."""
    out = {}
    for here, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(here) / name
            st_ = p.lstat()
            out[str(p)] = (st_.st_size, st_.st_mtime_ns)
    return out


def no_traceback(result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}\n{result.output}")
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 1, 2), result.output
    if result.exit_code == 2:
        err = result.stderr.strip().splitlines()
        assert err and err[-1].startswith("auditrun: error: "), result.stderr


# --------------------------------------------------------------------------------------- labels CSVs


@pytest.fixture(scope="module")
def patient_root(tmp_path_factory):
    """base/data: four images per class in patient-named folders (names with spaces), a corrupt
    file, a folder named like an image, a link out of the root; base/outside.png beside it."""
    from engine.data.synth import write_dataset

    base = tmp_path_factory.mktemp("fuzzcsv")
    write_dataset(base / "phantoms", per_class=8, size=32, seed=2)
    root = base / "data"
    valid = []
    for split, folder in (("train", "Training"), ("test", "Testing")):
        for cls, sub in zip(CLASSES, FOLDERS):
            for n, image in enumerate(sorted((base / "phantoms" / folder / sub).glob("*.png"))):
                rel = f"png/{NAME}_{cls}_{split}_{n}/scan {NAME} {n}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(image, root / rel)
                valid.append({"path": rel, "label": cls, "split": split, "patient": f"{SECRET}-{cls}-{split}-{n}"})
    (root / "png" / f"{NAME}_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (root / "png" / f"{NAME}_folder.png").mkdir()
    shutil.copy(root / valid[0]["path"], base / "outside.png")
    (base / "elsewhere").mkdir()
    shutil.copy(root / valid[0]["path"], base / "elsewhere" / "secret.png")
    (root / "etclink").symlink_to(base / "elsewhere", target_is_directory=True)
    tiny_backbone(base / "tiny.keras")
    return base, root, valid


ODD_PATHS = ["", " ", f"png/{NAME}_missing.png", "../outside.png", "{outside}", "etclink/secret.png",
             f"png/{NAME}_folder.png", f"png/{NAME}_broken.png", "png/../png/x.png", "png/a\x00b.png",
             "/etc/passwd", "png", f"./png/{NAME}_x/../{NAME}_missing.png"]
ODD_LABELS = ["", " ", "Glioma", "glioma_tumor", "astrocytoma", "GLIOMA ", "méningioma", "no tumor", "1"]
ODD_SPLITS = ["", "train", "Testing", "validation", "val", "TEST", "x"]
ODD_AGES = ["", "45", "045Y", "-3", "abc", "200", "nan", "1e308"]
ODD_SEXES = ["", "F", "male", "x", "U"]
POOLS = {"path": ODD_PATHS, "label": ODD_LABELS, "split": ODD_SPLITS, "patient": ["", f"{SECRET}-x"],
         "age": ODD_AGES, "sex": ODD_SEXES}


@st.composite
def labels_csv(draw, valid: list[dict]) -> tuple[str, bool]:
    """(CSV text, whether the data holds patient ids): a valid table, then mutations."""
    rows = [dict(r) for r in valid]
    columns = ["path", "label", "split", "patient"]
    if draw(st.booleans()):
        columns += ["age", "sex"]
        for r in rows:
            r.update(age="50", sex="F")
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["cell", "cell", "cell", "duplicate", "drop", "add", "column", "no-patients"]))
        if kind == "cell" and rows:
            row = draw(st.sampled_from(rows))
            column = draw(st.sampled_from(columns))
            row[column] = draw(st.sampled_from(POOLS.get(column, ODD_LABELS)))
        elif kind == "duplicate" and rows:
            rows.append(dict(draw(st.sampled_from(rows))))
        elif kind == "drop" and rows:
            rows.pop(draw(st.integers(0, len(rows) - 1)))
        elif kind == "add":
            rows.append({c: draw(st.sampled_from(POOLS.get(c, ODD_LABELS))) for c in columns})
        elif kind == "column":
            gone = draw(st.sampled_from(columns))
            columns = [c if c != gone else draw(st.sampled_from(["", "Path", gone + "2", "label"])) for c in columns]
        elif kind == "no-patients":
            for r in rows:
                r["patient"] = ""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([r.get(c if c in r else "", "") for c in columns])
    holds = "patient" in columns and any(r.get("patient") for r in rows)
    return buffer.getvalue(), holds


def csv_manifest(work: Path, base: Path, root: Path, csv_text: str) -> Path:
    labels = work / "labels.csv"
    labels.write_text(csv_text.replace("{outside}", str(base / "outside.png")), encoding="utf-8")
    return write_manifest(work / "m.toml", f"""
[experiment]
name = "fuzzcsv"
seed = 1
[data]
root = "{root}"
labels = "{labels}"
validation_fraction = 0.34
[training]
epochs = 1
batch_size = 8
[[backbones]]
name = "tiny"
file = "{base / 'tiny.keras'}"
preprocessing = "unit"
input_size = 32
train_backbone = true
[gradcam]
enabled = false
[evaluation]
bootstrap_resamples = 10
[integrity]
shift = false
[report]
formats = ["html"]
""")


def assert_private(result, out: Path, holds_patients: bool) -> None:
    needles = [SECRET] + ([NAME] if holds_patients else [])
    written = {str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()} if out.exists() else {}
    for needle in needles:
        assert needle not in result.output and needle not in result.stderr, (needle, result.output[-2000:])
        for path, data in written.items():
            assert needle not in path and needle.encode() not in data, (needle, path)


def _csv_property(patient_root, tmp_path, n: int, command: list[str]):
    base, root, valid = patient_root
    runner = CliRunner()
    before = snapshot(base)
    seen = {0: 0, 1: 0, 2: 0}
    counter = iter(range(10 ** 9))

    @fuzz_settings(n)
    @given(case=labels_csv(valid))
    def run(case):
        text, holds = case
        work = tmp_path / f"w{next(counter)}"
        work.mkdir()
        path = csv_manifest(work, base, root, text)
        out = work / "out"
        result = runner.invoke(main, [*command, str(path), "--output-dir", str(out)])
        no_traceback(result)
        seen[result.exit_code] += 1
        assert_private(result, out, holds)
        assert {p.name for p in work.iterdir()} <= {"labels.csv", "m.toml", "out"}
        shutil.rmtree(work)

    run()
    assert snapshot(base) == before, "something was written beside the output root"
    return seen


@pytest.mark.slow
def test_fuzz_labels_csv_check_data(patient_root, tmp_path):
    seen = _csv_property(patient_root, tmp_path, N_CSV, ["check-data", "--quiet"])
    assert seen[0] >= N_CSV // 10 and seen[2] >= N_CSV // 10, seen  # both outcomes exercised


@pytest.mark.slow
def test_fuzz_labels_csv_audit_run(patient_root, tmp_path):
    _csv_property(patient_root, tmp_path, N_CSV_RUN, ["run", "--quiet"])


# --------------------------------------------------------------------------------------- results.json

ODD_VALUES = [float("nan"), float("inf"), -float("inf"), 1e308, -1e308, -1, -5, 2 ** 60, 10 ** 400, 0.5, 1.5,
              -0.5, 0, "x", "", None, True, [], {}, [1, 2], {"a": 1}]


def _leaves(value, path=()):
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, path + (i,))


@st.composite
def results_document(draw, base: dict) -> dict:
    doc = copy.deepcopy(base)
    paths = [p for p in _leaves(doc) if p and p != ("schema_version",)]
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        parent = doc
        try:
            for part in path[:-1]:
                parent = parent[part]
            action = draw(st.sampled_from(["replace", "replace", "replace", "delete"]))
            if action == "delete" and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = draw(st.sampled_from(ODD_VALUES))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    return doc


@pytest.mark.slow
def test_fuzz_results_json_render(tmp_path):
    base = json.loads((RUN_FIXTURE / "results.json").read_text())
    runner = CliRunner()
    outside = tmp_path / "beside"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    seen = {0: 0, 1: 0, 2: 0}
    counter = iter(range(10 ** 9))

    @fuzz_settings(N_RESULTS)
    @given(doc=results_document(base))
    def run(doc):
        run_dir = tmp_path / f"run{next(counter)}"
        shutil.copytree(RUN_FIXTURE, run_dir)
        try:
            text = json.dumps(doc)  # NaN and Infinity bare, as a hand edit or another tool writes them
        except (ValueError, OverflowError):
            text = json.dumps(doc, default=str)
        (run_dir / "results.json").write_text(text)
        before = snapshot(tmp_path)
        result = runner.invoke(main, ["render", str(run_dir), "--format", "html"])
        no_traceback(result)
        seen[result.exit_code] += 1
        after = snapshot(tmp_path)
        written = {p for p in after if after[p] != before.get(p)}
        assert all(Path(p).is_relative_to(run_dir) for p in written), sorted(written)[:3]
        if result.exit_code == 0:
            assert (run_dir / "report.html").is_file()
            assert not any(isinstance(v, float) and not math.isfinite(v) for v in _numbers(doc)), \
                "a non-finite number was rendered"
        shutil.rmtree(run_dir)

    run()
    assert seen[2] >= N_RESULTS // 4, seen


def _numbers(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value

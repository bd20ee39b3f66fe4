"""Hardening, second round (issue 26), through the CLI: no patient name in a failed run, no output
inside the data, exact exit codes on a full disk, no CSV row through a link out of the data root,
and no crash on out-of-range numbers in results.json.

Each of the five bugs of the issue has a test here that failed on 8f01ff5. Runs that train use a
tiny CNN for one epoch on 32-px phantoms; most cases stop before training.
"""

from __future__ import annotations

import csv
import json
import re
import os
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import main

from conftest import write_manifest
from test_nightly_e2e import _env, tiny_backbone

REPO = Path(__file__).resolve().parents[1]
#: Planted in every file and folder name of the patient data: it must reach no artefact.
NAME = "DOE_JOHN"
#: Planted as the patients' ids in the labels CSV.
MRN = "MRN-7731"


def invoke(*args: str, env: dict | None = None):
    return CliRunner(env=env).invoke(main, [str(a) for a in args])


def files_text(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (path -> bytes), names included in the keys."""
    return {str(p): p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}


def assert_not_planted(result, out: Path) -> None:
    """Neither the planted name nor a raw patient id in the terminal or any file of the output root
    (file names included)."""
    for needle in (NAME, MRN):
        assert needle not in result.output and needle not in result.stderr, result.output
        for path, data in files_text(out).items():
            assert needle not in path and needle.encode() not in data, (needle, path)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from engine.data.synth import write_dataset

    tmp = tmp_path_factory.mktemp("round2")
    write_dataset(tmp / "phantoms", per_class=12, size=32, seed=1)
    tiny_backbone(tmp / "tiny.keras")
    return tmp


def patient_data(assets: Path, where: Path) -> Path:
    """A labels-CSV data set whose folders and files are named after patients: png/DOE_JOHN_<k>/
    DOE_JOHN_<k>_<n>.png (with its YOLO box file), two images per patient."""
    root = where / "data"
    rows = []
    for split, folder in (("train", "Training"), ("test", "Testing")):
        for cls in sorted((assets / "phantoms" / folder).iterdir()):
            for n, image in enumerate(sorted(cls.glob("*.png"))):
                patient = f"{NAME}_{cls.name}_{split}_{n // 2}"
                rel = Path("png") / patient / f"{patient}_{n:03d}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(image, root / rel)
                if image.with_suffix(".txt").is_file():
                    shutil.copy(image.with_suffix(".txt"), (root / rel).with_suffix(".txt"))
                rows.append({"path": rel.as_posix(), "label": cls.name, "split": split,
                             "patient": f"{MRN}-{cls.name}-{split}-{n // 2}", "age": str(40 + n)})
    write_rows(root, rows)
    return root


def write_rows(root: Path, rows: list[dict]) -> None:
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_rows(root: Path) -> list[dict]:
    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def manifest(assets: Path, where: Path, root: Path, extra: str = "", *, gradcam: bool = False,
             labels: bool = True) -> Path:
    return write_manifest(where / "m.toml", f"""
[experiment]
name = "round2"
seed = 3
[data]
root = "{root}"
validation_fraction = 0.3
{'labels = "labels.csv"' if labels else ''}
[training]
epochs = 1
batch_size = 8
[[backbones]]
name = "tiny"
file = "{assets / 'tiny.keras'}"
preprocessing = "unit"
input_size = 32
train_backbone = true
[gradcam]
enabled = {str(gradcam).lower()}
images_per_class = 1
check_images = 0
[evaluation]
bootstrap_resamples = 20
[integrity]
shift = false
[report]
formats = ["html"]
{extra}
""")


# ------------------------------------------------------------------ 1. no patient name in a failed run


def _duplicate_row(root: Path) -> None:
    rows = read_rows(root)
    write_rows(root, rows + [rows[1]])


def _no_listed_file_exists(root: Path) -> None:
    write_rows(root, [{**r, "path": r["path"].replace("png/", "gone/")} for r in read_rows(root)])


def _corrupt_image(root: Path) -> None:
    first = root / read_rows(root)[0]["path"]
    first.write_bytes(first.read_bytes()[:60])


def _missing_image(root: Path) -> None:
    (root / read_rows(root)[0]["path"]).unlink()


def _bad_label(root: Path) -> None:
    rows = read_rows(root)
    rows[3]["label"] = "astrocytoma"
    write_rows(root, rows)


def _age_outside_the_bands(root: Path) -> None:
    rows = read_rows(root)
    for r in rows:
        if r["split"] == "test":
            r["age"] = "99"
    write_rows(root, rows)


@pytest.mark.parametrize("plant, extra", [
    (_duplicate_row, ""),
    (_no_listed_file_exists, ""),
    (_bad_label, ""),
    (_corrupt_image, "[integrity]\nfail_on_unreadable = true"),
    (_missing_image, "[integrity]\nfail_on_unreadable = true"),
    (_age_outside_the_bands, '[subgroups]\nby = ["age_band"]\nage_bands = [0, 60, 90]'),
], ids=["duplicate-row", "no-file-exists", "bad-label", "unreadable-image", "missing-file", "bad-age"])
def test_no_patient_name_in_any_artefact_of_a_failed_run(assets, tmp_path, plant, extra):
    root = patient_data(assets, tmp_path)
    plant(root)
    body = manifest(assets, tmp_path, root).read_text()
    if extra.startswith("[integrity]"):
        body = body.replace("[integrity]\n", extra + "\n", 1)
    else:
        body += extra
    path = write_manifest(tmp_path / "m.toml", body)
    out = tmp_path / "out"
    result = invoke(path, "--output-dir", out)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    [run] = list((out / "round2").glob("2*"))
    results = json.loads((run / "results.json").read_text())
    assert results["run"]["status"] == "failed" and results["run"]["error"]
    assert_not_planted(result, out)
    # check-data stops on the same input with the same neutral message
    checked = invoke("check-data", path, "--output-dir", tmp_path / "out-check")
    assert checked.exit_code in (0, 2)
    assert_not_planted(checked, tmp_path / "out-check")


@pytest.mark.slow
def test_a_bad_box_file_is_listed_by_its_images_neutral_reference(assets, tmp_path):
    """A bad YOLO box file beside one test image: the annotation is listed (and warned about) under
    the image's neutral reference with its line, never its patient-named path; the explanation
    still runs and the other annotated images are still scored."""

    root = patient_data(assets, tmp_path)
    boxed = next(root / r["path"] for r in read_rows(root)
                 if r["split"] == "test" and (root / r["path"]).with_suffix(".txt").is_file())
    boxed.with_suffix(".txt").write_text("0 0.5 0.5 0.2\n")  # four fields: not a YOLO box
    out = tmp_path / "out"
    result = invoke(manifest(assets, tmp_path, root, gradcam=True), "--output-dir", out)
    assert result.exit_code in (0, 1), result.output
    [run] = list((out / "round2").glob("2*"))
    [entry] = json.loads((run / "results.json").read_text())["backbones"]
    results = json.loads((run / "results.json").read_text())
    [problem] = results["data"]["annotations"]["problems"]
    assert problem["line"] == 1 and "4 fields" in problem["reason"], problem
    assert problem["path"].endswith("(annotation .txt)") and boxed.stem not in problem["path"]
    assert re.search(r"f-[0-9a-f]{16}\.\w+ \(annotation \.txt\)$", problem["path"]), problem["path"]
    assert "error" not in entry["gradcam"] and entry["localisation"][0]["total"] >= 1
    assert any(problem["path"] in w for w in results["data"]["warnings"])
    assert_not_planted(result, out)


# ------------------------------------------------------------------ 2. no output inside the data


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_an_output_root_inside_the_data_root_is_refused_before_anything_is_written(assets, tmp_path):
    data = tmp_path / "D"
    shutil.copytree(assets / "phantoms", data)
    before = _listing(data)
    inside = data / "Training" / "glioma_tumor" / "reports"
    result = invoke(manifest(assets, tmp_path, data, labels=False), "--output-dir", inside)
    assert result.exit_code == 2, result.output
    assert "lies inside the data root" in result.stderr
    assert str(inside) in result.stderr and str(data) in result.stderr
    assert _listing(data) == before
    assert invoke("check-data", manifest(assets, tmp_path, data, labels=False),
                  "--output-dir", inside).exit_code == 2
    assert _listing(data) == before


def test_a_data_root_that_links_into_the_output_root_is_refused(assets, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(assets / "phantoms", out / "phantoms")
    (tmp_path / "link").symlink_to(out, target_is_directory=True)
    result = invoke(manifest(assets, tmp_path, tmp_path / "link" / "phantoms", labels=False), "--output-dir", out)
    assert result.exit_code == 2, result.output
    assert "lies inside the output root" in result.stderr
    assert _listing(out) == _listing(out)  # and nothing new beside the data
    assert not (out / "round2").exists()


@pytest.mark.parametrize("root", ["/", "~"])
def test_the_file_system_root_or_home_is_no_output_root(assets, tmp_path, root):
    result = invoke(manifest(assets, tmp_path, assets / "phantoms", labels=False), "--output-dir",
                    os.path.expanduser(root))
    assert result.exit_code == 2 and "choose a folder of its own" in result.stderr, result.output


def test_discovery_never_enters_an_earlier_run_or_a_cache_inside_a_class_folder(assets, tmp_path):
    """An old output folder left inside the data (from before the overlap rule, or copied there)
    and hidden folders are not training data."""
    from engine.data.discovery import discover
    from engine.manifest import folder_aliases

    data = tmp_path / "D"
    shutil.copytree(assets / "phantoms", data)
    kwargs = dict(layout="auto", train_dir="Training", test_dir="Testing",
                  classes=["glioma", "meningioma", "no_tumor", "pituitary"],
                  aliases=folder_aliases(["glioma", "meningioma", "no_tumor", "pituitary"], {}),
                  test_fraction=0.25, seed=0)
    _, clean = discover(data, **kwargs)
    glioma = data / "Training" / "glioma_tumor"
    images = sorted(glioma.glob("*.png"))
    run = glioma / "reports" / "exp" / "20260101T000000Z"
    (run / "gradcam").mkdir(parents=True)
    (run / "results.json").write_text("{}")
    (run / "manifest.toml").write_text("")
    (glioma / "reports" / "exp" / "history.jsonl").write_text("")
    shutil.copy(images[0], run / "gradcam" / "copy.png")
    shutil.copy(images[0], glioma / "reports" / "exp" / "loose.png")
    (glioma / ".cache").mkdir()
    shutil.copy(images[1], glioma / ".cache" / "hidden.png")
    _, found = discover(data, **kwargs)
    assert [r.path for r in found] == [r.path for r in clean]


# ------------------------------------------------------------------ 3. a full disk is exit 2, not a gate


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("size, writing", [("40k", ".cache"), ("300k", "models"), ("1200k", "report")])
def test_a_full_disk_is_an_input_error_naming_the_file_and_the_run_is_marked_failed(assets, tmp_path, size, writing):
    disk = tmp_path / "disk"
    if not _tmpfs(disk, size):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount permission)")
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    try:
        out = disk / "out"
        proc = subprocess.run([sys.executable, "-m", "engine.cli", str(manifest(assets, tmp_path, assets / "phantoms",
                                                                                 gradcam=True, labels=False)),
                               "--output-dir", str(out)], cwd=REPO, capture_output=True, text=True,
                              env={**_env(), "TMPDIR": str(systmp)}, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("auditrun: error: cannot write '" + str(out)), last
        assert "no space left on device" in last and writing in last, last
        assert "gate" not in proc.stderr.lower()
        [run] = list((out / "round2").glob("2*"))
        assert json.loads((run / "results.json").read_text())["run"]["status"] == "failed"
        assert not list(out.rglob(".tmp-*")), "a temporary folder was left in the output root"
        assert not list(systmp.iterdir()), "something was written to the system temp folder"
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_short_write_on_a_nearly_full_disk_counts_as_disk_full(tmp_path, monkeypatch):
    """numpy reports a full disk as "N requested and M written", with no errno."""
    import errno

    from engine import atomic
    from engine.errors import StorageError

    class Full:
        f_flag, f_bavail, f_frsize = 0, 3, 4096

    monkeypatch.setattr(atomic.os, "statvfs", lambda _p: Full)
    with pytest.raises(StorageError, match="no space left on device"):
        with atomic.writing(tmp_path / "a.npy"):
            raise OSError("100000 requested and 40832 written")
    Full.f_bavail = 10 ** 6  # room enough: the same error is no full disk, and passes unchanged
    with pytest.raises(OSError, match="requested"):
        with atomic.writing(tmp_path / "a.npy"):
            raise OSError("100000 requested and 40832 written")
    with pytest.raises(StorageError, match="read-only"):
        with atomic.writing(tmp_path / "b"):
            raise OSError(errno.EROFS, "Read-only file system")


# ------------------------------------------------------------------ 4. no CSV row through a link


def test_a_csv_row_through_a_link_out_of_the_data_root_is_refused(assets, tmp_path):
    root = patient_data(assets, tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(next((root / "png").rglob("*.png")), outside / "secret.png")
    (root / "etclink").symlink_to(outside, target_is_directory=True)
    rows = read_rows(root)
    rows[0]["path"] = "etclink/secret.png"
    write_rows(root, rows)
    result = invoke("check-data", manifest(assets, tmp_path, root), "--output-dir", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "row 2" in result.stderr and "lies outside the data root" in result.stderr
    assert "links included" in result.stderr


# ------------------------------------------------------------------ 5. render and out-of-range numbers

FIXTURE = REPO / "tests" / "fixtures" / "run_fixture"


def _every_number(value, replace):
    if isinstance(value, dict):
        return {k: (v if k == "schema_version" else _every_number(v, replace)) for k, v in value.items()}
    if isinstance(value, list):
        return [_every_number(v, replace) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return replace
    return value


@pytest.mark.parametrize("edit, key", [
    (lambda d: _every_number(d, 1e308), "$."),
    (lambda d: {**d, "backbones": [{**d["backbones"][0], "test": {**d["backbones"][0]["test"], "accuracy": 1.5}}]
                + d["backbones"][1:]}, "$.backbones[0].test.accuracy"),
    (lambda d: {**d, "backbones": [{**d["backbones"][0], "test": {**d["backbones"][0]["test"], "n_images": -5}}]
                + d["backbones"][1:]}, "$.backbones[0].test.n_images"),
    (lambda d: {**d, "run": {**d["run"], "wall_time_s": float("nan")}}, "$.run.wall_time_s"),
    (lambda d: {**d, "integrity": {**d["integrity"], "n_test": 10 ** 30}}, "$.integrity.n_test"),
], ids=["all-1e308", "accuracy-1.5", "negative-count", "bare-NaN", "huge-count"])
def test_render_refuses_out_of_range_numbers_naming_the_key(tmp_path, edit, key):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    data = edit(json.loads((run / "results.json").read_text()))
    (run / "results.json").write_text(json.dumps(data))  # json.dumps writes NaN bare, as a hand edit would
    result = invoke("render", run, "--format", "html")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert f"at {key}" in result.stderr, result.stderr
    assert not (run / "report.html").exists()


# ------------------------------------------------------------------ the weaker points


def test_locate_needs_the_experiments_key_and_does_not_make_one(assets, tmp_path):
    root = patient_data(assets, tmp_path)
    path = manifest(assets, tmp_path, root)
    result = invoke("locate", path, "p-0000000000000000/f-0000000000000000.png", "--output-dir", tmp_path / "nokey")
    assert result.exit_code == 2 and "no pseudonym key" in result.stderr, result.output
    assert not (tmp_path / "nokey").exists()
    # with the key, a reference followed by anything but a frame is unknown, and not echoed raw
    out = tmp_path / "out"
    checked = invoke("check-data", path, "--output-dir", out)
    ref = json.loads(checked.stdout)["integrity"]
    from engine.data.identity import experiment_pseudonymizer, file_reference

    rel = read_rows(root)[0]["path"]
    pseudo = experiment_pseudonymizer(out, "round2")
    reference = file_reference(rel, pseudo(read_rows(root)[0]["patient"]), pseudo)
    found = invoke("locate", path, reference, "--output-dir", out)
    assert found.exit_code == 0 and found.stdout == f"{reference}\t{rel}\n", (found.output, ref.keys())
    odd = invoke("locate", path, reference + " [\nforged line", "--output-dir", out)
    assert odd.exit_code == 2 and "\nforged line" not in odd.output


def test_a_data_root_that_is_a_file_is_called_a_file(assets, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    result = invoke("check-data", manifest(assets, tmp_path, assets / "phantoms", labels=False),
                    env={"AUDITRUN_DATA_ROOT": str(tmp_path / "notes.txt")})
    assert result.exit_code == 2 and "which is a file" in result.stderr, result.output


def test_an_unreadable_backbone_file_stops_the_run_before_training(assets, tmp_path):
    if not Path("/proc/self/mem").exists():
        pytest.skip("needs Linux /proc: a file that even root cannot read from its start")
    (tmp_path / "unreadable.keras").symlink_to("/proc/self/mem")
    body = manifest(assets, tmp_path, assets / "phantoms", labels=False).read_text()
    body = body.replace(str(assets / "tiny.keras"), str(tmp_path / "unreadable.keras"))
    result = invoke(write_manifest(tmp_path / "m.toml", body), "--output-dir", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "manifest key 'backbones[0].file'" in result.stderr and "nothing was trained" in result.stderr
    assert "epoch" not in result.stderr


def test_class_folders_match_whatever_their_unicode_normalisation(assets, tmp_path):
    from engine.data.discovery import discover
    from engine.manifest import folder_aliases

    classes = ["glioma", "méningioma", "no_tumor", "pituitary"]
    data = tmp_path / "D"
    for folder, name in (("glioma_tumor", "glioma"), ("meningioma_tumor", unicodedata.normalize("NFD", "méningioma")),
                         ("no_tumor", "no_tumor"), ("pituitary_tumor", "pituitary")):
        shutil.copytree(assets / "phantoms" / "Training" / folder, data / name)
    aliases = folder_aliases([unicodedata.normalize("NFC", c) for c in classes], {})
    _, records = discover(data, layout="imagefolder", train_dir="Training", test_dir="Testing",
                          classes=[unicodedata.normalize("NFC", c) for c in classes], aliases=aliases,
                          test_fraction=0.25, seed=0)
    assert {r.label for r in records} == {unicodedata.normalize("NFC", c) for c in classes}


def test_the_unknown_folder_message_spells_out_look_alike_names(assets, tmp_path):
    from engine.data.discovery import images_by_class
    from engine.errors import InputError

    (tmp_path / "gli\u043ema").mkdir()  # a Cyrillic o: looks like "glioma"
    with pytest.raises(InputError, match=r"\\u043e"):
        images_by_class(tmp_path, {"glioma": "glioma"})


def test_git_status_takes_no_lock_in_the_install_checkout(tmp_path):
    """``git status`` refreshes a stale index under .git/index.lock unless told not to."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    from engine.provenance import git_commit

    repo = tmp_path / "checkout"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=a@b", "-c", "user.name=a"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "f.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "f.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    index = repo / ".git" / "index"
    os.utime(repo / "f.py", ns=(index.stat().st_mtime_ns + 5 * 10 ** 9,) * 2)  # stat info now stale
    before = index.stat().st_mtime_ns, index.read_bytes()
    assert git_commit(repo) is not None
    assert (index.stat().st_mtime_ns, index.read_bytes()) == before


def test_the_redactor_names_data_paths_neutrally_and_leaves_everything_else(tmp_path):
    from engine.data.identity import Pseudonymizer, Redactor, file_reference

    root = tmp_path / "data"
    (root / "Training" / "glioma_tumor" / f"{NAME} X").mkdir(parents=True)
    known = root / "Training" / "glioma_tumor" / f"{NAME} X" / "IM 1.dcm"
    known.write_bytes(b"")
    pseudo = Pseudonymizer(bytes(range(32)), "test")
    redact = Redactor(root, pseudo, structural={"Training", "glioma_tumor"}, refs={str(known): "p-1/f-2.dcm"},
                      keep=[root / "labels.csv"])
    # a known file, quoted or not (its name has spaces), becomes its record's reference
    assert redact(f"cannot decode image {str(known)!r}: truncated") == "cannot decode image 'p-1/f-2.dcm': truncated"
    assert redact(f"{known}: line 3: bad") == "p-1/f-2.dcm: line 3: bad"
    # an unknown path keeps its split and class folders; the rest is the keyed hash of the whole path
    rel = f"Training/glioma_tumor/{NAME}_2/IM9"
    assert redact(f"'{rel}' twice") == f"'Training/glioma_tumor/{file_reference(rel, None, pseudo)}' twice"
    # the root, the labels CSV, structural folders, class names and numbers stay as they are
    for message in (f"data root {str(root)!r}: the test split is empty", f"{root}/labels.csv: row 2",
                    "'Training/glioma_tumor' folder", "class 'glioma' has 3 images", "field strength '1.5'"):
        assert redact(message) == message
    # data without patient ids: nothing changes
    assert Redactor(root, None)(f"{known!r}") == f"{known!r}"

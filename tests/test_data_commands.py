"""Data without training (issue 15): ``[data.synthetic]`` generation when the data is prepared, and the
``check-data`` and ``synth-data`` commands through the CLI. No TensorFlow work; 32-px phantoms.

Each test names, in a comment, the one-line mutation of the engine it was seen to catch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.data.synth import CLASSES, KAGGLE_FOLDERS, RECORD_FILE

from conftest import write_manifest


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def files_of(root: Path) -> dict[str, bytes]:
    """{relative path: bytes} of every file under ``root``."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def png_counts(root: Path) -> dict[str, dict[str, int]]:
    return {split: {c: len(list((root / split / KAGGLE_FOLDERS[c]).glob("*.png"))) for c in CLASSES}
            for split in ("Training", "Testing")}


# ------------------------------------------------------------------------------------------------
# 5. [data.synthetic]: a missing data.root is generated before the data is read (never by the parser)


SYNTHETIC = """
[data]
root = "generated/phantoms"
[data.synthetic]
per_class = 6
size = 32
seed = 4
test_fraction = 0.5
[[backbones]]
name = "EfficientNetB0"
weights_fallback = "random"
"""


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_data_synthetic_generates_the_missing_root_when_the_data_is_prepared(tmp_path, monkeypatch):
    # mutations seen to fail: synth.prepare_data_root `per_class=syn.per_class` -> `per_class=syn.size`;
    # `seed=syn.seed` -> `seed=0`; deleting the `write_dataset(...)` call (exit 2: root missing)
    from engine import manifest as manifest_mod
    from engine.data.synth import prepare_data_root, write_dataset

    monkeypatch.delenv(manifest_mod.DATA_ROOT_ENV, raising=False)
    path = write_manifest(tmp_path / "synthetic.toml", SYNTHETIC)
    root = tmp_path / "generated" / "phantoms"
    m = manifest_mod.load(path)
    assert not root.exists()  # the parser writes nothing (issue 27)
    assert prepare_data_root(m) == root.resolve() == m.data.root
    assert png_counts(root) == {"Training": {c: 3 for c in CLASSES}, "Testing": {c: 3 for c in CLASSES}}
    boxes = {c: len(list((root / "Training" / KAGGLE_FOLDERS[c]).glob("*.txt"))) for c in CLASSES}
    assert boxes == {"glioma": 3, "meningioma": 3, "no_tumor": 0, "pituitary": 3}
    # exactly the dataset that the configured seed and size give
    write_dataset(tmp_path / "expected", per_class=6, size=32, seed=4, test_fraction=0.5)
    assert files_of(root) == files_of(tmp_path / "expected")
    # an existing root is read, never regenerated
    stamp = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    m = manifest_mod.load(path)
    assert m.data.root == root.resolve() and prepare_data_root(m) == root.resolve()
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamp


def test_loading_a_manifest_with_data_synthetic_writes_nothing(tmp_path, monkeypatch):
    # mutation seen to fail: manifest.loads `synthetic_root(m) is None` -> `True` (load then exits 2
    # on the missing root instead of leaving it to the data stage)
    from engine import manifest as manifest_mod

    monkeypatch.delenv(manifest_mod.DATA_ROOT_ENV, raising=False)
    path = write_manifest(tmp_path / "synthetic.toml", SYNTHETIC)
    before = listing(tmp_path)
    m = manifest_mod.load(path)
    manifest_mod.loads(path.read_text(encoding="utf-8"), base=tmp_path, path=path)
    assert listing(tmp_path) == before
    assert manifest_mod.synthetic_root(m) == tmp_path / "generated" / "phantoms"


def test_check_data_generates_the_data_synthetic_root_as_before(tmp_path, monkeypatch):
    # mutation seen to fail: deleting prepare_data_root(m) from cli._manifest_records
    from engine import manifest as manifest_mod

    monkeypatch.delenv(manifest_mod.DATA_ROOT_ENV, raising=False)
    path = write_manifest(tmp_path / "synthetic.toml", SYNTHETIC)
    result = invoke("check-data", path, "--output-dir", tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["integrity"]["n_files"] == 24
    assert png_counts(tmp_path / "generated" / "phantoms")["Testing"] == {c: 3 for c in CLASSES}


def test_a_data_synthetic_root_that_cannot_be_written_is_exit_2_naming_the_key(tmp_path, monkeypatch):
    from engine import manifest as manifest_mod

    monkeypatch.delenv(manifest_mod.DATA_ROOT_ENV, raising=False)
    (tmp_path / "generated").write_text("a file where the folder should be")
    path = write_manifest(tmp_path / "synthetic.toml", SYNTHETIC)
    manifest_mod.load(path)  # the parser does not try to write
    result = invoke("check-data", path, "--output-dir", tmp_path / "out")
    assert result.exit_code == 2
    assert f"{path}: manifest key 'data.root' points to" in result.stderr
    assert "where [data.synthetic] cannot write its phantoms" in result.stderr


def test_data_synthetic_is_not_generated_where_auditrun_data_root_points(tmp_path, monkeypatch):
    # mutation seen to fail: manifest.synthetic_root `os.environ.get(DATA_ROOT_ENV) or` deleted (phantoms
    # written at the environment's path, which must hold real data)
    from engine import manifest as manifest_mod
    from engine.errors import InputError

    monkeypatch.setenv(manifest_mod.DATA_ROOT_ENV, str(tmp_path / "real-data"))
    path = write_manifest(tmp_path / "synthetic.toml", """
[data]
root = "generated"
[data.synthetic]
per_class = 4
size = 32
[[backbones]]
name = "EfficientNetB0"
""")
    with pytest.raises(InputError, match="AUDITRUN_DATA_ROOT"):
        manifest_mod.load(path)
    assert not (tmp_path / "real-data").exists() and not (tmp_path / "generated").exists()


# ------------------------------------------------------------------------------------------------
# 7a. check-data finds a planted cross-split duplicate


@pytest.fixture(scope="module")
def check_data_runs(tmp_path_factory):
    """check-data on a phantom dataset, then again after copying one training image into Testing/."""
    from engine.data.synth import write_dataset

    tmp = tmp_path_factory.mktemp("check-data")
    data = tmp / "data"
    write_dataset(data, per_class=8, size=32, seed=2)
    manifest = write_manifest(tmp / "check.toml", f"""
[experiment]
name = "check"
[data]
root = "{data}"
[[backbones]]
name = "EfficientNetB0"
""")
    before = invoke("check-data", manifest, "--output-dir", tmp / "out")
    source = "Training/glioma_tumor/glioma (5).png"
    planted = "Testing/glioma_tumor/planted copy.png"
    shutil.copyfile(data / source, data / planted)
    after = invoke("check-data", manifest, "--output-dir", tmp / "out", "--quiet")
    return before, after, source, planted


def test_check_data_prints_the_integrity_block_as_json_on_stdout(check_data_runs):
    before, _, _, _ = check_data_runs
    assert before.exit_code == 0, before.output
    report = json.loads(before.stdout)  # stdout is the JSON and nothing else
    assert list(report) == ["integrity"]
    block = report["integrity"]
    assert block["n_files"] == block["n_readable"] == 32
    assert block["counts"] == {"train": {c: 6 for c in CLASSES}, "test": {c: 2 for c in CLASSES}}
    assert block["cross_split_exact"] == 0 and block["cross_split_exact_bytes"] == 0  # the phantoms are distinct
    assert block["leaked_test_files"] == [] or all(f.startswith("Testing/") for f in block["leaked_test_files"])
    assert before.stderr.strip()  # the human summary goes to stderr


def test_check_data_counts_the_planted_duplicate(check_data_runs):
    # mutation seen to fail: integrity.audit `exact_leaked.add(p.a.path)` -> `pass` (cross_split_exact stays 0)
    before, after, source, planted = check_data_runs
    assert after.exit_code == 0, after.output
    assert after.stderr == ""  # --quiet
    was, now = json.loads(before.stdout)["integrity"], json.loads(after.stdout)["integrity"]
    assert now["cross_split_exact"] == was["cross_split_exact"] + 1 == 1
    assert now["cross_split_exact_bytes"] == was["cross_split_exact_bytes"] + 1 == 1
    assert now["counts"]["test"]["glioma"] == was["counts"]["test"]["glioma"] + 1
    assert planted in now["leaked_test_files"]
    assert now["cross_split_near"] == was["cross_split_near"] + 1
    pair = next(p for p in now["cross_split_pairs"] if p["files"] == [planted, source])
    assert pair["splits"] == ["test", "train"] and pair["exact"] and pair["byte_identical"] and pair["distance"] == 0
    assert now["leakage_free_test_counts"]["glioma"] == was["leakage_free_test_counts"]["glioma"]


# ------------------------------------------------------------------------------------------------
# 7b. synth-data writes the requested counts, deterministically per seed


@pytest.fixture(scope="module")
def synth_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("synth-data")
    runs = {}
    for name, seed in (("a", 9), ("b", 9), ("c", 10)):
        runs[name] = (tmp / name, invoke("synth-data", tmp / name, "--per-class", 10, "--size", 32, "--seed", seed,
                                         "--test-fraction", 0.3))
    return runs


def test_synth_data_writes_the_requested_counts(synth_runs):
    # mutation seen to fail: synth._generate `n_test = max(1, round(per_class * test_fraction))` -> `... + 1`
    from PIL import Image

    out, result = synth_runs["a"]
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    expected = {"Training": {c: 7 for c in CLASSES}, "Testing": {c: 3 for c in CLASSES}}
    assert json.loads(result.stderr) == expected
    assert png_counts(out) == expected
    for split in ("Training", "Testing"):
        for c in CLASSES:
            pngs = sorted((out / split / KAGGLE_FOLDERS[c]).glob("*.png"))
            boxes = sorted((out / split / KAGGLE_FOLDERS[c]).glob("*.txt"))
            assert len(boxes) == (0 if c == "no_tumor" else len(pngs))
            with Image.open(pngs[0]) as img:
                assert img.size == (32, 32)
    assert (out / RECORD_FILE).is_file()


def test_synth_data_is_deterministic_for_one_seed(synth_runs):
    # mutations seen to fail: synth._generate `rng = np.random.default_rng(seed)` -> `np.random.default_rng()`
    # (two runs differ); cli.synth_data_cmd `seed=seed,` -> `seed=0,` (seeds 9 and 10 give the same data)
    (a, ra), (b, rb), (c, rc) = synth_runs["a"], synth_runs["b"], synth_runs["c"]
    assert ra.exit_code == rb.exit_code == rc.exit_code == 0
    files_a, files_b, files_c = files_of(a), files_of(b), files_of(c)
    assert files_a == files_b
    assert files_c.keys() == files_a.keys()
    differing = [k for k in files_a if k.endswith(".png") and files_a[k] != files_c[k]]
    assert len(differing) == sum(k.endswith(".png") for k in files_a)  # another seed: every image differs

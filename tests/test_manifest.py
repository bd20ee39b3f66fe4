"""Manifest validation: every error names its key and exits 2 before any training."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from engine import manifest
from engine.cli import main
from engine.errors import InputError

from conftest import write_manifest

MINIMAL = """
[data]
root = "{root}"
[[backbones]]
name = "EfficientNetB0"
"""


def _load(tmp_path: Path, body: str, **kw) -> manifest.Manifest:
    return manifest.load(write_manifest(tmp_path / "m.toml", body), **kw)


def test_five_line_manifest_gets_defaults(tmp_path):
    (tmp_path / "data").mkdir()
    m = _load(tmp_path, MINIMAL.format(root="data"))
    assert m.data.root == tmp_path / "data"  # relative to the manifest's folder
    assert m.training.epochs == 10 and m.training.batch_size == 32
    assert m.backbones[0].weights == "imagenet" and m.backbones[0].input_size == 224
    assert m.data.classes == ["glioma", "meningioma", "no_tumor", "pituitary"]
    assert m.experiment.output_dir == Path("reports")  # default: reports/ under the working directory
    assert m.integrity.min_image_size == 32


def test_min_image_size_reaches_the_integrity_audit(tmp_path):
    (tmp_path / "data").mkdir()
    m = _load(tmp_path, "[integrity]\nmin_image_size = 16\n" + MINIMAL.format(root="data"))
    assert manifest.integrity_options(m.integrity).min_image_size == 16


def test_explicit_paths_resolve_against_manifest_folder(tmp_path):
    (tmp_path / "data").mkdir()
    m = _load(tmp_path, "[experiment]\noutput_dir = '../out'\n" + MINIMAL.format(root="data"))
    assert m.experiment.output_dir == tmp_path / "../out"


@pytest.mark.parametrize(
    "body, needle",
    [
        ("[data]\nroot = 'data'\n[training]\nepochs = 3\nbatchsize = 8\n[[backbones]]\nname = 'VGG16'\n",
         "training.batchsize"),
        ("[data]\nroot = 'data'\n[[backbones]]\nname = 'VGG61'\n", "VGG61"),
        ("[data]\nroot = 'data'\n[training]\nepochs = 'ten'\n[[backbones]]\nname = 'VGG16'\n", "training.epochs"),
        ("[data]\nroot = 'data'\n[[backbones]]\nname = 'VGG16'\nweights = 'imagenet21k'\n", "backbones[0].weights"),
        ("[data]\nroot = 'data'\n[[backbones]]\nname = 'InceptionV3'\ninput_size = 64\n", "backbones[0].input_size"),
        ("[data]\nroot = 'data'\n[[backbones]]\nname = 'x'\nfile = 'missing.keras'\n", "backbones[0].file"),
        ("[data]\nroot = 'data'\n", "backbones"),
        ("[data]\nroot = 'data'\n[gates]\nmin_recall = {glioma_tumor = 0.8}\n[[backbones]]\nname = 'VGG16'\n",
         "gates.min_recall.glioma_tumor"),
        ("[data\nroot = 'data'\n", "not valid TOML"),
        ("[data]\nroot = 'data'\n[integrity]\nmin_image_size = 0\n[[backbones]]\nname = 'VGG16'\n",
         "integrity.min_image_size must be an integer >= 1"),
        ("[data]\nroot = 'data'\n[integrity]\nmin_image_size = '32px'\n[[backbones]]\nname = 'VGG16'\n",
         "manifest key 'integrity.min_image_size' must be an integer"),
    ],
)
def test_bad_manifest_names_the_key(tmp_path, body, needle):
    (tmp_path / "data").mkdir()
    with pytest.raises(InputError) as err:
        _load(tmp_path, body)
    assert needle in str(err.value)


def test_unknown_backbone_lists_allowed_values(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(InputError) as err:
        _load(tmp_path, MINIMAL.format(root="data").replace("EfficientNetB0", "EfficientNetB9"))
    assert "ResNet50" in str(err.value) and "file =" in str(err.value)


def test_missing_data_root_says_how_to_provide_data(tmp_path, monkeypatch):
    monkeypatch.delenv(manifest.DATA_ROOT_ENV, raising=False)
    with pytest.raises(InputError) as err:
        _load(tmp_path, MINIMAL.format(root="nowhere"))
    msg = str(err.value)
    assert "data.root" in msg and "nowhere" in msg and manifest.DATA_ROOT_ENV in msg and "fetch-data" in msg


def test_env_variable_overrides_data_root(tmp_path, monkeypatch):
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.setenv(manifest.DATA_ROOT_ENV, str(other))
    m = _load(tmp_path, MINIMAL.format(root="nowhere"))
    assert m.data.root == other


def test_cli_exits_2_before_training(tmp_path, monkeypatch):
    monkeypatch.delenv(manifest.DATA_ROOT_ENV, raising=False)
    path = write_manifest(tmp_path / "m.toml", MINIMAL.format(root="nowhere"))
    result = CliRunner().invoke(main, [str(path), "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "data.root" in result.output
    assert not (tmp_path / "out").exists()  # nothing was started

    (tmp_path / "data").mkdir()
    typo = write_manifest(tmp_path / "t.toml", MINIMAL.format(root="data") + "[training]\nepohcs = 2\n")
    result = CliRunner().invoke(main, [str(typo), "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 2 and "training.epohcs" in result.output


def test_cli_usage_error_is_exit_2():
    result = CliRunner().invoke(main, ["run"])
    assert result.exit_code == 2


def test_run_settings_read_a_finished_runs_copy_without_backbones_and_default_the_rest(tmp_path):
    """``auditrun evaluate`` reads the run's manifest copy through the parser (issue 27): a copy
    without [[backbones]] is a run's settings, a missing or non-TOML copy gives the defaults, and a
    value the manifest refuses is still an error naming its key."""
    from engine.errors import InputError
    from engine.manifest import Manifest, run_settings

    assert run_settings(tmp_path) == Manifest()  # no copy
    (tmp_path / "manifest.toml").write_text("[integrity\nmin_image_size = 8\n")
    assert run_settings(tmp_path) == Manifest()  # not TOML
    (tmp_path / "manifest.toml").write_text("[integrity]\nmin_image_size = 48\n[evaluation]\ntta_flip = true\n")
    m = run_settings(tmp_path)
    assert m.integrity.min_image_size == 48 and m.evaluation.tta_flip and m.backbones == []
    assert m.gradcam.check_images == Manifest().gradcam.check_images
    (tmp_path / "manifest.toml").write_text('[gradcam]\nmethod = "nope"\n')
    with pytest.raises(InputError, match="gradcam.method"):
        run_settings(tmp_path)

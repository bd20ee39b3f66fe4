"""Issue 28, items 2 and 3 end to end: the data-parallel stages on a ``dask.distributed.LocalCluster``
of 2 worker processes give the local scheduler's results, and an audit whose splits are read from
disk (``data.image_memory_bytes = 0``) gives the in-memory audit's numbers.

The cluster is real (worker processes, TCP): ``check-data``'s fingerprints and ``auditrun
evaluate``'s decoding, predictions and Grad-CAM maps run in the workers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

distributed = pytest.importorskip("distributed", reason="Dask is an extra: pip install 'auditrun[dask]'")
pytest.importorskip("keras")

from conftest import trains, write_manifest  # noqa: E402
from test_nightly_e2e import manifest_text, tiny_backbone  # noqa: E402

from engine.cli import main  # noqa: E402
from engine.errors import InputError  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=logging.ERROR) as c:
        yield c.scheduler_address


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from engine.data.synth import write_dataset

    tmp = tmp_path_factory.mktemp("dask")
    write_dataset(tmp / "data", per_class=14, size=64, seed=3)
    # planted leakage, so the audits compared below have pairs to find: a copy and a resized copy
    from PIL import Image

    source = sorted((tmp / "data" / "Training" / "glioma_tumor").glob("*.png"))[:2]
    (tmp / "data" / "Testing" / "glioma_tumor" / "copy.png").write_bytes(source[0].read_bytes())
    with Image.open(source[1]) as im:
        im.resize((60, 60)).save(tmp / "data" / "Testing" / "glioma_tumor" / "near.png")
    tiny_backbone(tmp / "tiny.keras")
    return tmp


def _manifest(assets: Path, name: str, extra: str = "") -> Path:
    text = manifest_text(assets, name, extra=extra).replace("[gradcam]\nenabled = false",
                                                              "[gradcam]\nimages_per_class = 1\ncheck_images = 0")
    return write_manifest(assets / f"{name}.toml", text)


def test_check_data_on_two_workers_equals_local(assets, cluster):
    path = _manifest(assets, "cd")
    local = CliRunner().invoke(main, ["check-data", str(path), "--output-dir", str(assets / "cd-local"), "-q"])
    remote = CliRunner().invoke(main, ["check-data", str(path), "--output-dir", str(assets / "cd-dask"), "-q",
                                       "--scheduler", cluster])
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    a, b = json.loads(local.stdout), json.loads(remote.stdout)
    assert a["integrity"].pop("timings_s") and b["integrity"].pop("timings_s")  # wall times differ
    assert a == b and a["integrity"]["n_files"] == 58 and a["integrity"]["cross_split_near"] >= 2
    # a second run on the cluster reads the client's fingerprint cache: every file a hit
    again = CliRunner().invoke(main, ["check-data", str(path), "--output-dir", str(assets / "cd-dask"), "-q",
                                      "--scheduler", cluster])
    stats = json.loads(again.stdout)["integrity"]["cache"]
    assert stats["misses"] == 0 and stats["hits"] == a["integrity"]["n_readable"] == 58


@pytest.fixture(scope="module")
@trains
def runs(assets):
    """The same tiny audit twice: splits in memory, and every split read from disk."""
    out = {}
    for name, extra in (("mem", ""), ("disk", "")):
        path = _manifest(assets, "scale", extra)
        if name == "disk":
            text = path.read_text().replace("[data]\n", "[data]\nimage_memory_bytes = 0\ncache = false\n", 1)
            path = write_manifest(assets / "scale-disk.toml", text)
        result = CliRunner().invoke(main, [str(path), "--output-dir", str(assets / f"out-{name}"), "--run-id", "r"]
                                    + (["--quiet"] if name == "mem" else []))
        assert result.exit_code in (0, 1), result.output
        out[name] = (assets / f"out-{name}" / "scale" / "r", result)
    return out


def test_an_audit_reading_its_splits_from_disk_gives_the_in_memory_numbers(runs):
    (mem, _), (disk, result) = runs["mem"], runs["disk"]
    a, b = (json.loads((d / "results.json").read_text()) for d in (mem, disk))
    for block in ("validation", "test", "leakage_free", "history", "gradcam"):
        assert a["backbones"][0][block] == b["backbones"][0][block], block
    assert (mem / "predictions" / "tiny.csv").read_bytes() == (disk / "predictions" / "tiny.csv").read_bytes()
    assert "images at 32px to disk" in result.stderr and "data.image_memory_bytes" in result.stderr
    assert not list((disk.parents[1] / ".cache").rglob("*.npy"))  # data.cache = false: the spill is gone


@trains
def test_an_audit_with_a_scheduler_equals_the_local_audit(assets, runs, cluster):
    """Decoding and fingerprints on the workers, training here: the same run."""
    path = _manifest(assets, "scale")
    result = CliRunner().invoke(main, [str(path), "--output-dir", str(assets / "out-dask"), "--run-id", "r",
                                       "--scheduler", cluster])
    assert result.exit_code in (0, 1), result.output
    assert f"compute: Dask scheduler {cluster}: 2 workers" in result.stderr
    mem, dask_run = runs["mem"][0], assets / "out-dask" / "scale" / "r"
    a, b = (json.loads((d / "results.json").read_text()) for d in (mem, dask_run))
    for block in ("validation", "test", "leakage_free", "history", "gradcam"):
        assert a["backbones"][0][block] == b["backbones"][0][block], block
    a["integrity"].pop("timings_s"), b["integrity"].pop("timings_s")
    assert a["integrity"] == b["integrity"]
    assert (mem / "predictions" / "tiny.csv").read_bytes() == (dask_run / "predictions" / "tiny.csv").read_bytes()


def test_evaluate_on_two_workers_equals_local(assets, runs, cluster):
    run_dir = runs["mem"][0]
    data = assets / "data" / "Testing"
    local = CliRunner().invoke(main, ["evaluate", str(run_dir), "--data", str(data), "-q"])
    remote = CliRunner().invoke(main, ["evaluate", str(run_dir), "--data", str(data), "-q", "--scheduler", cluster])
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    a, b = json.loads(local.stdout), json.loads(remote.stdout)
    for report in (a, b):  # wall-clock seconds differ run to run; every score must not
        for backbone in report["backbones"]:
            for block in backbone.get("localisation", []):
                assert block.pop("seconds")["maps_and_scores"] >= 0
    assert a["backbones"] == b["backbones"]
    assert a["backbones"][0]["n_images"] > 0 and a["backbones"][0]["localisation"][0]["total"] > 0


def test_an_unreachable_or_malformed_scheduler_is_an_input_error(assets):
    from engine import compute

    with pytest.raises(InputError, match="cannot reach the Dask scheduler"):
        with compute.using("tcp://127.0.0.1:9", timeout=1):
            pass
    result = CliRunner().invoke(main, ["check-data", str(_manifest(assets, "bad")), "--scheduler", "host:8786"])
    assert result.exit_code == 2 and "--scheduler" in result.output


def test_predictions_and_gradcam_maps_from_the_workers_equal_the_local_arrays(assets, runs, cluster):
    """The arrays under evaluate's metrics: probabilities and Grad-CAM maps, element for element."""
    import numpy as np

    from engine import compute, evaluation, explain
    from engine.data import ImageCache
    from engine.results import read_results
    from engine.training import load_saved_model

    run_dir = runs["mem"][0]
    entry = read_results(run_dir)["backbones"][0]
    from engine.manifest import folder_aliases

    names = ["glioma", "meningioma", "no_tumor", "pituitary"]
    records, y = evaluation.discover_folder(assets / "data" / "Testing", names, folder_aliases(names, {}))
    model = load_saved_model(run_dir / entry["artifacts"]["model"])
    x = ImageCache(None).load(records, 32)
    local_p = evaluation.predict_probs(model, x, tta_flip=True)
    local_maps = explain.gradcam_heatmaps(model, x[:20].astype("float32"), y[:20])
    ref = evaluation.model_ref(run_dir, entry, ["glioma", "meningioma", "no_tumor", "pituitary"])
    with compute.using(cluster) as c:
        remote_p = evaluation.predict_on(c, ref, records, 32, None, True)
        remote_maps = explain.heatmaps_on(c, ref, None)(x[:20], y[:20])
    assert remote_p.shape == local_p.shape and np.array_equal(remote_p, local_p)
    assert remote_maps.shape == local_maps.shape and np.allclose(remote_maps, local_maps, atol=1e-6)

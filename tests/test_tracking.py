"""Issue 31: every audit in MLflow. A real ``mlflow server`` (SQLite backend, artefacts in a temp
folder) on 127.0.0.1 and the embedded default store each get a tiny audit; everything is read back
with ``MlflowClient``: every metric equals results.json at the pointer it was logged from, the
artefacts are there, and the logged model reproduces the predictions CSV. Then the faults: a server
stopped mid-run (one warning, the normal exit code), ``required = true`` with no server (exit 2
before training), two nightly audits as two runs, and the DICOM audit's store searched for the
identifying values planted in its headers.

The audits train a tiny CNN for one epoch at 32 px (about 10 s each on 2 cores, plus model logging).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.errors import InputError
from engine.manifest import loads
from engine.tracking import names

from conftest import REPO, trains, write_manifest
from test_nightly_e2e import manifest_text, tiny_backbone

pytest.importorskip("mlflow", reason='MLflow is not installed (pip install "auditrun[mlflow]")')

SMOKE = REPO / "tests" / "fixtures" / "smoke_run" / "results.json"
MLFLOW_NAME = re.compile(r"[A-Za-z0-9_\-.:/ ]+")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``mlflow server`` with a SQLite backend and proxied artefacts in ``folder``."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        folder.mkdir(parents=True, exist_ok=True)
        self.log = open(folder / "server.log", "wb")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--artifacts-destination",
             (folder / "artefacts").as_uri(), "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(folder / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError("mlflow server did not answer within 120 s")

    def stop(self) -> None:
        import os
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from engine.data.synth import write_dataset

    tmp = tmp_path_factory.mktemp("tracking")
    write_dataset(tmp / "data", per_class=24, size=64, seed=5)
    tiny_backbone(tmp / "tiny.keras")
    return tmp


def tracked_manifest(assets: Path, name: str, tracking: str, *, html_pdf: bool = False) -> Path:
    """The nightly tests' tiny audit, with Grad-CAM (so localisation and the explanation checks are
    logged) and ``tracking`` as its [tracking] table."""
    text = manifest_text(assets, name, extra=f"[tracking]\n{tracking}\n")
    text = text.replace("[gradcam]\nenabled = false", "[gradcam]\nimages_per_class = 1\ncheck_images = 4")
    if html_pdf:
        text = text.replace('formats = ["html"]', 'formats = ["html", "pdf"]')
    return write_manifest(assets / f"{name}.toml", text)


def audit_runs(client, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    return [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]


def check_logged_audit(client, run_dir: Path, experiment: str, *, artefacts=("report.html",)) -> None:
    """Everything the issue asks to read back, for one audit."""
    results = json.loads((run_dir / "results.json").read_text())
    block = results["tracking"]
    assert block["status"] == "logged", block
    parent = client.get_run(block["run_id"])
    assert parent.info.run_name == results["run"]["id"]
    assert parent.data.tags["auditrun.run_id"] == results["run"]["id"]
    assert parent.data.tags["auditrun.status"] == results["run"]["status"]
    assert parent.data.tags["auditrun.gates"] == results["gates"]["summary"]["status"]
    assert parent.data.tags["auditrun.data_fingerprint"] == results["data"]["fingerprint"]
    assert parent.data.tags["auditrun.git_commit"] == results["environment"]["git_commit"]
    assert parent.info.status == ("FINISHED" if results["gates"]["summary"]["status"] != "FAIL" else "FAILED")
    # the manifest's settings, defaults included
    assert parent.data.params["training.epochs"] == "1"
    assert parent.data.params["experiment.seed"] == "7"
    assert parent.data.params["backbones"] == "tiny"

    sources = json.loads(Path(client.download_artifacts(parent.info.run_id, "auditrun/metric_sources.json")).read_text())
    children = {r.info.run_name: r for r in client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")}
    assert set(children) == {b["name"] for b in results["backbones"]} == set(block["runs"])

    for name, run in [("audit", parent)] + sorted(children.items()):
        metrics = run.data.metrics
        assert metrics, f"{name}: no metrics"
        for metric, value in metrics.items():
            assert MLFLOW_NAME.fullmatch(metric), metric
            ptr = sources[name][metric]
            if "/*/" in ptr:  # a training curve: its last step is the last epoch's value
                continue
            assert value == names.resolve(results, ptr), (name, metric, ptr)
    best = results["best_backbone"]["name"]
    for i, entry in enumerate(results["backbones"]):
        m = children[entry["name"]].data.metrics
        # the names, independently of the sources index
        assert m["test_macro_f1"] == entry["test"]["macro_f1"]
        assert m["test_macro_f1_leakage_free"] == entry["leakage_free"]["macro_f1"]
        assert m["test_macro_f1_ci_low"] == entry["uncertainty"]["test"]["macro_f1"]["ci_low"]
        assert m["test_macro_f1_ci_high"] == entry["uncertainty"]["test"]["macro_f1"]["ci_high"]
        assert m["test_macro_f1_leakage_free_ci_low"] == entry["uncertainty"]["leakage_free"]["macro_f1"]["ci_low"]
        assert m["test_recall_glioma"] == entry["test"]["per_class"]["glioma"]["recall"]
        assert m["test_ece"] == entry["calibration"]["ece_before"]
        loc = next(b for b in entry["localisation"] if b["method"] == "gradcam")
        assert m["test_gradcam_pointing_game"] == loc["rate"]
        assert m["test_gradcam_pointing_game_ci_low"] == loc["rate_ci"][0]
        if entry["name"] == best:
            assert parent.data.metrics["test_macro_f1"] == entry["test"]["macro_f1"]
        # the training curve: one step per epoch
        history = client.get_metric_history(children[entry["name"]].info.run_id, "val_loss")
        assert [h.step for h in history] == list(range(1, len(entry["history"]) + 1))
        assert [h.value for h in history] == [row["val_loss"] for row in entry["history"]]
        listed = {a.path for a in client.list_artifacts(children[entry["name"]].info.run_id, "predictions")}
        assert listed == {f"predictions/{entry['name']}.csv", f"predictions/{entry['name']}.validation.csv"}
        assert client.list_artifacts(children[entry["name"]].info.run_id, f"gradcam/{entry['name']}")

    top = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.json", "manifest.toml", "figures", *artefacts} <= top, top
    logged = json.loads(Path(client.download_artifacts(parent.info.run_id, "results.json")).read_text())
    assert logged == results  # the copy in MLflow is the file, tracking block and all
    check_model(results, run_dir, block)


def check_model(results: dict, run_dir: Path, block: dict) -> None:
    """The logged model, loaded from MLflow, gives the predictions CSV's probabilities to 1e-5."""
    import pandas as pd

    from engine.data import display_path
    from engine.data import ImageCache
    from engine.evaluation import discover_folder
    from engine.manifest import folder_aliases
    from engine.tracking import load_model

    root = Path(results["data"]["root"])
    classes = results["data"]["class_names"]
    records, _ = discover_folder(root / "Testing", classes, folder_aliases(classes, {}))
    by_path = {display_path(r, root): r for r in records}
    for entry in results["backbones"]:
        csv = pd.read_csv(run_dir / entry["artifacts"]["predictions"])
        ordered = [by_path[p] for p in csv["path"]]
        x = ImageCache(None).load(ordered, entry["input_size"][0], "check")
        model = load_model(block["models"][entry["name"]])
        probs = np.asarray(model.predict(np.asarray(x), verbose=0))
        expected = csv[[f"prob_{c}" for c in classes]].to_numpy()
        assert probs.shape == expected.shape
        assert np.abs(probs - expected).max() <= 1e-5


# ------------------------------------------------------------------------------------------- unit level


def smoke_results() -> dict:
    return json.loads(SMOKE.read_text())


def _halved(node):
    """Every number in ``node`` halved: the smoke run's twin blocks equal its headline ones, and a
    twin read from the wrong block must show."""
    if isinstance(node, dict):
        return {k: _halved(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_halved(v) for v in node]
    return node / 2 if isinstance(node, float) else node


def test_every_backbone_metric_points_at_its_value_in_results_json():
    results = smoke_results()
    for entry in results["backbones"]:
        entry["leakage_free"] = _halved(entry["leakage_free"])
        entry["uncertainty"]["leakage_free"] = _halved(entry["uncertainty"]["leakage_free"])
    for i, entry in enumerate(results["backbones"]):
        metrics = names.backbone_metrics(entry, i)
        assert len(metrics) > 80
        for name, (value, ptr) in metrics.items():
            assert MLFLOW_NAME.fullmatch(name), name
            assert value == names.resolve(results, ptr) and math.isfinite(value), (name, ptr)
        assert metrics["test_macro_f1"][1] == f"/backbones/{i}/test/macro_f1"
        assert metrics["test_macro_f1_leakage_free"][1] == f"/backbones/{i}/leakage_free/macro_f1"
        assert metrics["test_macro_f1_ci_low"][1] == f"/backbones/{i}/uncertainty/test/macro_f1/ci_low"
        assert metrics["test_macro_f1_leakage_free_ci_high"][1] == \
            f"/backbones/{i}/uncertainty/leakage_free/macro_f1/ci_high"
        assert metrics["test_precision_pituitary"][1] == f"/backbones/{i}/test/per_class/pituitary/precision"
        assert metrics["test_gradcam_pointing_game"][1] == f"/backbones/{i}/localisation/0/rate"
        assert metrics["validation_pointing_game"][1] == f"/backbones/{i}/gradcam/pointing_game_validation/rate"
    audit = names.audit_metrics(results)
    best = next(i for i, b in enumerate(results["backbones"]) if b["name"] == results["best_backbone"]["name"])
    assert audit["test_macro_f1"][1] == f"/backbones/{best}/test/macro_f1"
    assert audit["gates_pass"] == (1.0, "/gates/summary/PASS")


def test_a_value_that_is_missing_or_not_a_number_is_not_logged():
    entry = {"test": {"macro_f1": None, "accuracy": True, "balanced_accuracy": float("nan"), "weighted_f1": 0.5,
                      "per_class": {"glioma": {"precision": None, "recall": 1, "f1": "x"}}}}
    assert names.backbone_metrics(entry, 3) == {"test_weighted_f1": (0.5, "/backbones/3/test/weighted_f1"),
                                                "test_recall_glioma": (1.0, "/backbones/3/test/per_class/glioma/recall")}


def test_method_and_class_names_become_valid_metric_names():
    assert names.key("gradcam++") == "gradcam_pp"
    assert names.key("no tumour/left") == "no tumour/left"
    assert names.key("méningioma") == "m_ningioma"
    assert names.pointer("a/b", "c~d") == "/a~1b/c~0d"
    assert names.resolve({"a/b": {"c~d": [5]}}, "/a~1b/c~0d/0") == 5


def test_training_curves_step_once_per_epoch_across_stages():
    entry = {"history": [{"stage": "head", "epoch": 1, "loss": 2.0, "val_loss": 1.5},
                         {"stage": "head", "epoch": 2, "loss": 1.0, "val_loss": 1.2},
                         {"stage": "fine_tune", "epoch": 1, "loss": 0.5, "val_loss": None}]}
    got = names.curves(entry, 0)
    assert [(s, v) for s, v, _ in got["loss"]] == [(1, 2.0), (2, 1.0), (3, 0.5)]
    assert [(s, v) for s, v, _ in got["val_loss"]] == [(1, 1.5), (2, 1.2)]
    assert got["loss"][2][2] == "/backbones/0/history/2/loss"


def test_manifest_params_hold_every_setting_with_its_default(assets):
    m = loads(manifest_text(assets, "p"), base=assets)
    params = names.manifest_params(m)
    assert params["training.epochs"] == "1" and params["training.batch_size"] == "8"
    assert params["gradcam.enabled"] == "false"
    assert "tracking.mlflow" not in params and params["tracking.retries"] == "3"  # a URI may hold a password
    assert params["backbones"] == "tiny"
    assert all(len(v) <= names.PARAM_VALUE_LIMIT for v in params.values())
    assert names.model_params(m, "tiny")["backbone.input_size"] == "32"
    assert names.model_params(m, "tiny_ft", "tiny")["backbone.name"] == "tiny"


def test_tracking_section_is_validated_by_key(assets):
    base = manifest_text(assets, "v")
    for table, key in (("mlflow = 3", "tracking.mlflow"), ('mlflow = "  "', "tracking.mlflow"),
                       ("required = true", "tracking.required"), ('register_as = "x"', "tracking.register_as"),
                       ("mlflow = true\nretries = 11", "tracking.retries"),
                       ("mlflow = true\ntimeout_s = 0", "tracking.timeout_s"), ("uri = 'x'", "tracking.uri")):
        with pytest.raises(InputError, match=re.escape(key)):
            loads(base + f"[tracking]\n{table}\n", base=assets)
    m = loads(base + '[tracking]\nmlflow = "http://u:secret@host:5000/x?token=abc"\n', base=assets)
    from engine.tracking import shown_uri, target

    where = target(m.tracking.mlflow, assets / "out", "v")
    assert where.uri == "http://u:secret@host:5000/x?token=abc"
    assert shown_uri(where.uri) == where.shown == "http://host:5000/x"
    embedded = target(True, assets / "out", "v")
    assert embedded.uri == f"sqlite:///{(assets / 'out').resolve() / 'mlflow.db'}"
    assert embedded.artifact_location == ((assets / "out").resolve() / "mlartifacts").as_uri()


class _Refused(Exception):
    error_code = "PERMISSION_DENIED"


def test_a_failing_call_is_retried_with_backoff_then_warns_once_and_stops_calling(tmp_path):
    from engine.tracking import Tracker, target

    warnings, sleeps, calls = [], [], []
    tracker = Tracker(target(True, tmp_path, "x"), retries=3, warn=warnings.append, sleep=sleeps.append)

    def down():
        calls.append(1)
        raise ConnectionError("connection refused")

    assert tracker.call("log metrics", down) is None
    assert len(calls) == 4 and sleeps == [0.5, 1.0, 2.0]
    assert tracker.call("log params", down) is None and len(calls) == 4  # off for the rest of the command
    assert tracker.call("log tags", lambda: 1) is None
    assert len(warnings) == 1 and "log metrics" in warnings[0] and "connection refused" in warnings[0]

    refused = Tracker(target(True, tmp_path, "x"), retries=3, warn=warnings.append, sleep=sleeps.append)
    n = len(sleeps)

    def deny():
        raise _Refused("no")

    assert refused.call("create run", deny) is None and len(sleeps) == n  # refused: not retried
    ok = Tracker(target(True, tmp_path, "x"), retries=2, sleep=sleeps.append)
    flaky = iter([ConnectionError("once"), 7])

    def once():
        v = next(flaky)
        if isinstance(v, Exception):
            raise v
        return v

    assert ok.call("x", once) == 7 and ok.failed is None


def test_without_mlflow_installed_a_tracked_manifest_exits_2_with_the_install_command(assets, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    path = tracked_manifest(assets, "uninstalled", "mlflow = true")
    result = invoke("run", path, "--output-dir", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert 'pip install "auditrun[mlflow]"' in result.output
    assert not (tmp_path / "out").exists()  # nothing written, nothing trained


def test_required_tracker_that_does_not_answer_exits_2_before_training(assets, tmp_path):
    port = free_port()  # nothing listens there
    path = tracked_manifest(assets, "required", f'mlflow = "http://127.0.0.1:{port}"\nrequired = true\nretries = 1')
    t0 = time.monotonic()
    result = invoke("run", path, "--output-dir", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "required = true" in result.output and f"127.0.0.1:{port}" in result.output
    assert "epoch" not in result.output and not (tmp_path / "out").exists()
    assert time.monotonic() - t0 < 60


# ------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
@trains
def server_audit(assets):
    server = Server(assets / "server")
    try:
        path = tracked_manifest(assets, "served", "mlflow = false", html_pdf=True)
        out = assets / "served-out"
        result = invoke("run", path, "--output-dir", out, "--tracking-uri", server.uri)
        assert result.exit_code == 0, (result.output, result.exception)
        yield server, Path(result.stdout.strip().splitlines()[-1]), result
    finally:
        server.stop()


def test_an_audit_logged_to_a_server_reads_back_equal_to_results_json(server_audit):
    from mlflow import MlflowClient

    server, run_dir, result = server_audit
    assert "warning" not in result.output
    client = MlflowClient(tracking_uri=server.uri)
    check_logged_audit(client, run_dir, "served", artefacts=("report.html", "report.pdf"))
    block = json.loads((run_dir / "results.json").read_text())["tracking"]
    assert block["uri"] == server.uri
    # the report names the run, so a reader can open the same numbers in MLflow
    assert f"MLflow run {block['run_id']} in experiment" in (run_dir / "report.html").read_text()


@pytest.fixture(scope="module")
@trains
def nightly_embedded(assets):
    """Two nightly audits of one experiment with the embedded default store, then `auditrun evaluate`
    of the second on the test folder."""
    path = tracked_manifest(assets, "nightly-tracked", "mlflow = true")
    out = assets / "embedded-out"
    run_dirs = []
    for _ in range(2):
        result = invoke("run", path, "--output-dir", out)
        assert result.exit_code == 0, (result.output, result.exception)
        run_dirs.append(Path(result.stdout.strip().splitlines()[-1]))
        time.sleep(1.1)  # run ids are UTC seconds
    external = assets / "external-copy"
    shutil.copytree(assets / "data" / "Testing", external, dirs_exist_ok=True)
    evaluated = invoke("evaluate", run_dirs[1], "--data", external, "--quiet")
    assert evaluated.exit_code == 0, (evaluated.output, evaluated.exception)
    return out, run_dirs, json.loads(evaluated.stdout)


def test_the_embedded_default_store_lies_in_the_output_root_and_reads_back(nightly_embedded):
    from mlflow import MlflowClient

    out, run_dirs, _ = nightly_embedded
    assert (out / "mlflow.db").is_file() and (out / "mlartifacts").is_dir()
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    check_logged_audit(client, run_dirs[0], "nightly-tracked")
    artefacts = list((out / "mlartifacts").rglob("*"))
    assert any(p.name == "report.html" for p in artefacts) and any(p.suffix == ".keras" for p in artefacts)


def test_two_nightly_audits_are_two_runs_of_one_experiment(nightly_embedded):
    from mlflow import MlflowClient

    out, run_dirs, _ = nightly_embedded
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = audit_runs(client, "nightly-tracked")
    assert sorted(r.data.tags["auditrun.run_id"] for r in runs) == sorted(d.name for d in run_dirs)
    ids = {json.loads((d / "results.json").read_text())["tracking"]["run_id"] for d in run_dirs}
    assert ids == {r.info.run_id for r in runs}


def test_evaluate_logs_the_external_metrics_to_the_audits_runs(nightly_embedded):
    from mlflow import MlflowClient

    out, run_dirs, report = nightly_embedded
    block = json.loads((run_dirs[1] / "results.json").read_text())["tracking"]
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    entry = report["backbones"][0]
    child = client.get_run(block["runs"][entry["name"]]).data.metrics
    assert child["external_external-copy_macro_f1"] == entry["macro_f1"]
    assert child["external_external-copy_accuracy"] == entry["accuracy"]
    assert child["external_external-copy_gradcam_pointing_game"] == entry["localisation"][0]["rate"]
    assert client.get_run(block["run_id"]).data.metrics["external_external-copy_macro_f1"] == entry["macro_f1"]
    assert [a.path for a in client.list_artifacts(block["run_id"], "external")]
    first = json.loads((run_dirs[0] / "results.json").read_text())["tracking"]["run_id"]
    assert not any(k.startswith("external_") for k in client.get_run(first).data.metrics)


@pytest.mark.slow
def test_a_server_stopped_mid_run_costs_one_warning_and_not_the_audit(assets, monkeypatch):
    from engine.workflows import finish

    server = Server(assets / "stopping")
    render = finish.render_stage

    def stop_then_render(ctx):  # the audit's run exists; the server goes before anything else is logged
        server.stop()
        render(ctx)

    monkeypatch.setattr(finish, "render_stage", stop_then_render)
    try:
        path = tracked_manifest(assets, "stopped", f'mlflow = "{server.uri}"\nretries = 2\ntimeout_s = 5')
        result = invoke("run", path, "--output-dir", assets / "stopped-out", "--quiet")
    finally:
        server.stop()
    assert result.exit_code == 0, (result.output, result.exception)  # as without tracking: the gates pass
    warnings = [line for line in result.output.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "tracking" in warnings[0] and server.uri.split("//")[1] in warnings[0], warnings
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    results = json.loads((run_dir / "results.json").read_text())
    assert results["run"]["status"] == "ok" and (run_dir / "report.html").is_file()
    assert results["tracking"]["status"] == "failed" and results["tracking"]["run_id"]


def _tracker(tmp_path: Path, experiment: str):
    from engine.tracking import Tracker, target

    warnings = []
    return Tracker(target(True, tmp_path / "out", experiment), retries=0, warn=warnings.append), warnings


def test_a_failed_gate_fails_the_audits_run_and_the_models_run_with_a_tag(tmp_path):
    from mlflow import MlflowClient

    from engine import tracking
    from engine.manifest import run_settings
    from engine.results import RunResults

    run_dir = tmp_path / "out" / "smoke" / "smoke-fixture"
    shutil.copytree(SMOKE.parent, run_dir)
    results = RunResults.read(run_dir)
    doc = results.to_json()
    name = doc["backbones"][1]["name"]
    doc["gates"]["gates"].append({"name": "min_macro_f1", "backbone": name, "status": "FAIL", "value": 0.5,
                                  "threshold": 0.9, "message": "macro-F1 0.5 < 0.9"})
    doc["gates"]["summary"].update(FAIL=1, status="FAIL")
    results = RunResults.checked(doc)
    m = run_settings(run_dir)
    tracker, warnings = _tracker(tmp_path, "smoke")
    block = tracking.start_audit(tracker, results, m)
    block = tracking.open_model_runs(tracker, block, results.to_json())
    block = tracking.logged(tracker, tracking.log_audit(tracker, block, run_dir, results.to_json(), m))
    tracking.close_audit(tracker, block, run_dir, results.to_json())
    assert not warnings and block.status == "logged"
    client = MlflowClient(tracking_uri=tracker.target.uri)
    parent = client.get_run(block.run_id)
    assert parent.info.status == "FAILED" and parent.data.tags["auditrun.gates"] == "FAIL"
    assert parent.data.tags[f"auditrun.gate.min_macro_f1.{name}"] == "FAIL"
    failed, passed = client.get_run(block.runs[name]), client.get_run(block.runs[doc["backbones"][0]["name"]])
    assert failed.info.status == "FAILED" and failed.data.tags["auditrun.gate.min_macro_f1"] == "FAIL"
    assert passed.info.status == "FINISHED" and "auditrun.gate.min_macro_f1" not in passed.data.tags
    # every metric, also without a model file to log, from results.json
    for run, entry in ((failed, doc["backbones"][1]), (passed, doc["backbones"][0])):
        assert run.data.metrics["test_macro_f1"] == entry["test"]["macro_f1"]
        assert {a.path for a in client.list_artifacts(run.info.run_id, f"gradcam/{entry['name']}")}
    assert parent.data.metrics["gates_fail"] == 1.0


def test_a_resumed_audit_reopens_its_run_and_an_interrupted_one_is_killed(tmp_path):
    from mlflow import MlflowClient

    from engine import tracking
    from engine.manifest import run_settings
    from engine.results import RunResults

    results = RunResults.read(SMOKE.parent)
    m = run_settings(SMOKE.parent)
    tracker, warnings = _tracker(tmp_path, "smoke")
    block = tracking.start_audit(tracker, results, m)
    block = tracking.open_model_runs(tracker, block, results.to_json())
    tracking.end_audit(tracker, block, "interrupted", "stopped by signal 15 (SIGTERM)")
    client = MlflowClient(tracking_uri=tracker.target.uri)
    run = client.get_run(block.run_id)
    assert run.info.status == "KILLED" and run.data.tags["auditrun.status"] == "interrupted"
    assert "SIGTERM" in run.data.tags["auditrun.error"]

    again, _ = _tracker(tmp_path, "smoke")
    previous = {"tracking": block.to_json()}
    resumed = tracking.open_model_runs(again, tracking.start_audit(again, results, m, previous), results.to_json())
    assert resumed.run_id == block.run_id and resumed.runs == block.runs  # no second run, no second child
    assert client.get_run(block.run_id).info.status == "RUNNING"
    assert len(audit_runs(client, "smoke")) == 1 and not warnings


# The hospital-data tests' DICOM set (fixtures imported by name) and their search for planted identity.
from test_hospital_data import assert_no_planted_value, files_under, hospital, hospital_manifest, named  # noqa: E402,F401


@pytest.mark.slow
def test_the_dicom_audits_mlflow_store_holds_no_identifying_value(hospital, named):
    tmp, truth = hospital
    out = tmp / "tracked-out"
    path = hospital_manifest(tmp, out, "named")
    path.write_text(path.read_text() + "\n[tracking]\nmlflow = true\n")
    result = invoke("run", path)
    assert result.exit_code in (0, 1), (result.exit_code, result.output, result.exception)
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    assert json.loads((run_dir / "results.json").read_text())["tracking"]["status"] == "logged"
    # the store: its database (tags, params, metric names, in plain text) and every artefact, the
    # report's PDF text included
    store = {k: v for k, v in files_under(out).items() if "mlflow.db" in k or "mlartifacts" in k}
    assert any(k.endswith("mlflow.db") for k in store) and any(k.endswith(".pdf") for k in store)
    assert any(k.endswith("tiny.csv") for k in store) and any(k.endswith(".keras") for k in store)
    patients = (run_dir / "predictions" / "tiny.csv").read_text()
    assert any(f in store[k].decode(errors="ignore") for k in store if k.endswith("tiny.csv")
               for f in patients.splitlines()[1:2])  # the store holds the pseudonymised CSV itself
    assert_no_planted_value({"run output": result.output.encode(), **store}, truth)


def test_evaluate_finds_the_audits_runs_by_tag_when_results_json_has_no_tracking_block(tmp_path):
    from mlflow import MlflowClient

    from engine import tracking
    from engine.manifest import run_settings
    from engine.results import RunResults

    results = RunResults.read(SMOKE.parent)
    tracker, warnings = _tracker(tmp_path, "smoke")
    block = tracking.open_model_runs(tracker, tracking.start_audit(tracker, results, run_settings(SMOKE.parent)),
                                     results.to_json())
    doc = results.to_json()  # as a run logged with --tracking-uri only would have it: no block
    best = doc["best_backbone"]["name"]
    report = {"backbones": [{"name": b["name"], "accuracy": 0.5 + i / 10, "macro_f1": 0.25 + i / 10, "n_images": 9}
                            for i, b in enumerate(doc["backbones"])]}
    file = tmp_path / "ext.json"
    file.write_text(json.dumps(report))
    again, _ = _tracker(tmp_path, "smoke")
    assert tracking.log_external(again, doc, report, "site b", file) == block.run_id
    client = MlflowClient(tracking_uri=tracker.target.uri)
    for i, b in enumerate(doc["backbones"]):
        assert client.get_run(block.runs[b["name"]]).data.metrics["external_site b_macro_f1"] == 0.25 + i / 10
    i_best = next(i for i, b in enumerate(doc["backbones"]) if b["name"] == best)
    parent = client.get_run(block.run_id)
    assert parent.data.metrics["external_site b_accuracy"] == 0.5 + i_best / 10
    assert [a.path for a in client.list_artifacts(block.run_id, "external")] == ["external/ext.json"]
    # an audit the tracker never saw: one warning, nothing logged
    other, seen = _tracker(tmp_path, "smoke")
    doc["run"]["id"] = "never-logged"
    assert tracking.log_external(other, doc, report, "site b", file) is None
    assert len(seen) == 1 and "never-logged" in seen[0] and not warnings

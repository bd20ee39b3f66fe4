"""What an audit logs to the experiment tracker, and when.

- ``open_tracker``: before the run starts; MLflow missing is an input error (exit 2), and so is an
  unreachable tracker when ``required = true``.
- ``start_audit``: the audit's run, RUNNING, with the manifest's settings as params (a resumed
  audit reopens its run).
- ``open_model_runs`` then ``log_audit``: after the report, one nested run per model with its
  metrics, curves, params, tags, artefacts and model; the audit's own metrics and artefacts.
- ``close_audit``: results.json, then each run's final status (a failed gate: FAILED).
- ``end_audit``: a run that stopped early (FAILED, or KILLED when interrupted).
- ``log_external``: ``auditrun evaluate``'s metrics, to the runs of the audit it evaluated.

Every value logged comes from results.json (engine.tracking.names), and no function here raises
once the tracker is open: the client's fault policy turns a failure into one warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

from engine.results import RunResults, Tracking
from engine.tracking import names
from engine.tracking.client import Target, Tracker, target

Echo = Callable[[str], None]

#: How the audit's statuses end an MLflow run.
_STOPPED = {"failed": "FAILED", "interrupted": "KILLED"}


def open_tracker(settings, output_root: Path, experiment: str, *, uri: str | None = None,
                 warn: Echo | None = None) -> Tracker | None:
    """The tracker ``[tracking]`` (or ``uri``, from ``--tracking-uri``) names; None when tracking is off.

    Raises InputError when MLflow is not installed, or when ``required = true`` and it does not answer.
    """
    where = target(uri if uri is not None else settings.mlflow, output_root, settings.experiment or experiment)
    if where is None:
        return None
    tracker = Tracker(where, retries=settings.retries, timeout_s=settings.timeout_s, warn=warn)
    if settings.required:
        tracker.check()
    return tracker


def _block(tracker: Tracker, **kw) -> Tracking:
    where: Target = tracker.target
    return Tracking(uri=where.shown, embedded=where.embedded, experiment=where.experiment, **kw)


def start_audit(tracker: Tracker, results: RunResults, manifest, previous: Mapping | None = None) -> Tracking:
    """The audit's run, created (or, on ``--resume``, reopened) and given the settings as params."""
    doc = results.to_json()
    before = (previous or {}).get("tracking") or {}
    run_id = before.get("run_id") if before.get("experiment") == tracker.target.experiment else None
    if run_id is not None:
        # its params were logged when it started; MLflow refuses to change one (a new --scheduler)
        tracker.reopen(run_id)
    else:
        run_id = tracker.create_run(results.run.id, names.audit_tags(doc))
        if run_id is not None:
            tracker.log(run_id, params=names.manifest_params(manifest))
    block = _block(tracker, experiment_id=tracker.experiment_id(), run_id=run_id,
                   runs=dict(before.get("runs") or {}) if run_id == before.get("run_id") else {})
    return _with_failure(tracker, block)


def open_model_runs(tracker: Tracker, block: Tracking, results: Mapping) -> Tracking:
    """One nested run per model of results.json (those a resumed audit opened are kept)."""
    if block.run_id is None:
        return _with_failure(tracker, block)
    runs = dict(block.runs)
    for entry in results.get("backbones") or []:
        name = entry.get("name")
        if name and name not in runs:
            run_id = tracker.create_run(name, names.backbone_tags(results, entry), parent=block.run_id)
            if run_id is not None:
                runs[name] = run_id
    block.runs = runs
    return _with_failure(tracker, block)


def log_audit(tracker: Tracker, block: Tracking, run_dir: Path, results: Mapping, manifest) -> Tracking:
    """Everything but results.json and the final statuses: per model its metrics, training curves,
    params, tags, predictions, figures and model; the audit's metrics, tags and artefacts."""
    if block.run_id is None:
        return _with_failure(tracker, block)
    run_dir = Path(run_dir)
    best = (results.get("best_backbone") or {}).get("name")
    index: dict[str, dict[str, str]] = {}
    for i, entry in enumerate(results.get("backbones") or []):
        name, run_id = entry.get("name"), block.runs.get(entry.get("name"))
        if run_id is None:
            continue
        metrics, steps = names.backbone_metrics(entry, i), names.curves(entry, i)
        index[name] = {k: v[1] for k, v in metrics.items()}
        index[name].update({k: names.pointer("backbones", i, "history", "*", k) for k in steps})
        tracker.log(run_id, metrics={k: v[0] for k, v in metrics.items()},
                    steps={k: [(s, v) for s, v, _ in points] for k, points in steps.items()},
                    params=names.model_params(manifest, name, entry.get("fine_tuned_from")),
                    tags=names.backbone_tags(results, entry))
        for path in _model_artefacts(run_dir, entry):
            tracker.log_artifact(run_id, path, _artefact_folder(run_dir, path))
        if manifest.tracking.log_models and entry.get("status") == "ok":
            register = manifest.tracking.register_as if name == best else None
            uri = _log_model(tracker, run_id, run_dir, entry, results, register)
            if uri is not None:
                block.models[name] = uri
                if register:
                    block.registered_as = register
    metrics = names.audit_metrics(results)
    index["audit"] = {k: v[1] for k, v in metrics.items()}
    tracker.log(block.run_id, metrics={k: v[0] for k, v in metrics.items()}, tags=names.audit_tags(results))
    for rel in ("report.html", "report.pdf", "manifest.toml", "figures", "integrity"):
        path = run_dir / rel
        tracker.log_artifact(block.run_id, path, rel if path.is_dir() else None)
    tracker.log_dict(block.run_id, index, "auditrun/metric_sources.json")
    return _with_failure(tracker, block)


def close_audit(tracker: Tracker, block: Tracking, run_dir: Path, results: Mapping) -> Tracking:
    """results.json (as written, with this block), then each run's final status."""
    if block.run_id is None:
        return _with_failure(tracker, block)
    tracker.log_artifact(block.run_id, Path(run_dir) / "results.json")
    failed_gate = {g.get("backbone") for g in (results.get("gates") or {}).get("gates") or []
                   if g.get("status") == "FAIL"}
    for entry in results.get("backbones") or []:
        run_id = block.runs.get(entry.get("name"))
        if run_id is not None:
            bad = entry.get("status") != "ok" or entry.get("name") in failed_gate
            tracker.set_status(run_id, "FAILED" if bad else "FINISHED")
    ok = (results.get("run") or {}).get("status") == "ok" and not failed_gate
    tracker.set_status(block.run_id, "FINISHED" if ok else "FAILED")
    return _with_failure(tracker, block)


def end_audit(tracker: Tracker, block: Tracking, status: str, error: str | None) -> None:
    """A run that stopped early: its status tag and MLflow status (FAILED, or KILLED when interrupted)."""
    if block.run_id is None:
        return
    tags = {"auditrun.status": status, **({"auditrun.error": error[:names.TAG_VALUE_LIMIT]} if error else {})}
    tracker.log(block.run_id, tags=tags)
    tracker.set_status(block.run_id, _STOPPED.get(status, "FAILED"))


def _with_failure(tracker: Tracker, block: Tracking) -> Tracking:
    if tracker.failed is not None:
        block.status, block.error = "failed", tracker.failed
    return block


def logged(tracker: Tracker, block: Tracking) -> Tracking:
    """The block once everything is logged: ``logged``, or ``failed`` with the call that gave up."""
    if tracker.failed is None and block.run_id is not None:
        block.status = "logged"
    return _with_failure(tracker, block)


# ------------------------------------------------------------------------------------------- artefacts


def _model_artefacts(run_dir: Path, entry: Mapping) -> list[Path]:
    """A model's predictions CSVs (test and validation) and its explanation figures."""
    out = []
    test_csv = (entry.get("artifacts") or {}).get("predictions")
    if test_csv:
        from engine.evaluation import validation_file

        out += [run_dir / test_csv, run_dir / validation_file(test_csv)]
    out.append(run_dir / "gradcam" / str(entry.get("name")))
    return [p for p in out if p.exists() and p.resolve().is_relative_to(run_dir.resolve())]


def _artefact_folder(run_dir: Path, path: Path) -> str:
    """Where an artefact goes in the run: its folder in the run directory (``predictions``,
    ``gradcam/<model>``)."""
    rel = path.relative_to(run_dir)
    return rel.as_posix() if path.is_dir() else rel.parent.as_posix()


def _log_model(tracker: Tracker, run_id: str, run_dir: Path, entry: Mapping, results: Mapping,
               register: str | None) -> str | None:
    """A trained model with MLflow's Keras flavour and its input signature; an imported model's own
    file as an artefact (its format is the team's, not Keras')."""
    if tracker.failed is not None:
        return None
    if entry.get("source") == "imported":
        file = entry.get("file")
        if file and Path(file).is_file():
            tracker.log_artifact(run_id, Path(file), "model")
        return None
    model_file = run_dir / str((entry.get("artifacts") or {}).get("model") or "")
    if not model_file.is_file():
        return None
    from engine.training import load_saved_model

    model = load_saved_model(model_file)
    classes = list((results.get("data") or {}).get("class_names") or [])
    return tracker.log_keras_model(run_id, model, signature(entry, len(classes)), {
        "auditrun_run_id": (results.get("run") or {}).get("id"),
        "auditrun_model": entry.get("name"),
        "class_names": classes,
        "input": "RGB pixel values 0-255 (float32), resized as the audit decoded them; preprocessing is inside the model",
        "custom_objects": "auditrun>Preprocess: load with engine.tracking.load_model(uri)",
    }, register)


def signature(entry: Mapping, n_classes: int):
    """(n, H, W, 3) float32 pixels in, (n, classes) probabilities out."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    h, w = (list(entry.get("input_size") or [None, None]) + [None, None])[:2]
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, h or -1, w or h or -1, 3), "pixels")]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_classes), "probabilities")]))


def load_model(model_uri: str):
    """A model an audit logged (``runs:/<id>/model`` or ``models:/<name>/<version>``), loaded with
    auditrun's Preprocess layer registered: ``model.predict(pixels)`` gives the audit's probabilities."""
    from engine.tracking.client import mlflow_module
    from engine.training import preprocess_class

    return mlflow_module().keras.load_model(model_uri, custom_objects={"auditrun>Preprocess": preprocess_class()})


# ------------------------------------------------------------------------------------------- evaluate


def log_external(tracker: Tracker, results: Mapping, report: Mapping, folder: str, report_file: Path) -> str | None:
    """``auditrun evaluate``'s metrics (``external_<folder>_...``) on each model's run, the best
    model's on the audit's run too, and the report file. Returns the audit's run id, or None."""
    block = (results.get("tracking") or {})
    run_id = block.get("run_id") or tracker.find_run(tracker.target.experiment, (results.get("run") or {}).get("id"))
    if run_id is None:
        if tracker.failed is None:
            tracker.warn(f"tracking: no run of audit {(results.get('run') or {}).get('id')} in MLflow experiment "
                 f"{tracker.target.experiment!r} at {tracker.target.shown}; the external metrics are not logged")
        return None
    runs = dict(block.get("runs") or {}) or tracker.children(run_id)
    per_model = names.external_metrics(report, folder)
    best = (results.get("best_backbone") or {}).get("name")
    for name, metrics in per_model.items():
        values = {k: v[0] for k, v in metrics.items()}
        if name in runs:
            tracker.log(runs[name], metrics=values)
        if name == best:
            tracker.log(run_id, metrics=values)
    tracker.log_artifact(run_id, report_file, "external")
    return run_id if tracker.failed is None else None


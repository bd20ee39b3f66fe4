"""One audit run: manifest -> data -> integrity -> train -> evaluate -> explain -> report -> history.

``run_audit`` owns the run directory and the order of stages; each stage lives in its own module.
results.json is rewritten (atomically) after every backbone, so a killed run leaves a readable,
resumable record of what finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from engine.data import discovery as data_mod
from engine import interrupts
from engine.atomic import save_keras_model, scratch_folder, storage_problem, write_text
from engine.errors import InputError, RunInterrupted, StorageError, os_error_message
from engine.manifest import (Manifest, class_aliases, data_root_source, integrity_options, synthetic_root,
                             windowing_options)
from engine.data.identity import display_path
from engine.paths import check_output_root, child, safe_name
from engine.results import SCHEMA_VERSION, BackboneResult, WeightsInfo, read_results, write_results

Echo = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


_quiet.quiet = True  # engine.progress.silent reads it: no progress lines without an echo


def _unchanged(message: str) -> str:
    return message


def slug(name: str) -> str:
    """A backbone label as a file stem."""
    s = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip("._")
    return s or "backbone"


def new_run_id(now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ")


@dataclass
class RunContext:
    manifest: Manifest
    run_dir: Path
    output_root: Path
    echo: Echo
    now: Callable[[], datetime]
    results: dict = field(default_factory=dict)
    dataset: data_mod.Dataset | None = None
    cache: data_mod.ImageCache | None = None
    leaked_test: set[tuple[Path, int]] = field(default_factory=set)  # record keys (path, frame)
    #: Every backbone's typed results, in the order they ran; stages set their blocks on these and
    #: save() serialises them (BackboneResult.to_dict) into results.json's "backbones".
    backbones: list[BackboneResult] = field(default_factory=list)
    # per backbone name: arrays the later stages (explain, calibration, comparisons) need
    outputs: dict[str, dict] = field(default_factory=dict)
    #: perf_counter() when this process started the run, and seconds an interrupted run had already
    #: spent; every save records their sum, so a resumed run's wall time counts both parts.
    clock_start: float | None = None
    prior_active_s: float = 0.0
    #: Devices, tf.distribute strategy and precision (engine.training.devices.Setup); set before training.
    training_setup: object | None = None
    #: Turns data paths in a message into neutral references when the data holds patient ids
    #: (engine.data.identity.Redactor); every log line, stored error and raised message passes it.
    redact: Callable[[str], str] = _unchanged

    def training_scope(self):
        """The distribution strategy's scope: models built and trained in it are replicated."""
        return self.training_setup.scope() if self.training_setup is not None else contextlib.nullcontext()

    def active_s(self) -> float:
        return self.prior_active_s + (time.perf_counter() - self.clock_start if self.clock_start is not None else 0.0)

    @property
    def class_names(self) -> list[str]:
        return self.dataset.class_names

    def leakage_free_mask(self) -> np.ndarray | None:
        """(n_test,) bool, True for test images with no copy in training; None without an integrity audit."""
        if "integrity" not in self.results:
            return None
        return np.array([r.key not in self.leaked_test for r in self.dataset.test])

    def finished(self) -> list[BackboneResult]:
        return [b for b in self.backbones if b.status == "ok"]

    def save(self, in_place: bool = False) -> None:
        if "run" in self.results:
            self.results["run"]["active_s"] = round(self.active_s(), 1)
        if "backbones" in self.results:
            self.results["backbones"] = [b.to_dict() for b in self.backbones]
        write_results(self.run_dir, self.results, in_place=in_place)


def _redacting(echo: Echo, redact: Callable[[str], str]) -> Echo:
    """``echo`` with every line passed through ``redact``; keeps the echo's ``quiet`` mark."""
    def out(message: str) -> None:
        echo(redact(message))

    out.quiet = getattr(echo, "quiet", False)  # type: ignore[attr-defined]
    return out


class Timer:
    """Prints one line per finished step with its wall time."""

    def __init__(self, echo: Echo, label: str, sink: dict | None = None, key: str | None = None):
        self.echo, self.label, self.sink, self.key = echo, label, sink, key

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.elapsed = time.perf_counter() - self.t0
        if self.sink is not None and self.key:
            self.sink[self.key] = round(self.elapsed, 2)
        if exc_type is None:
            self.echo(f"done: {self.label} ({self.elapsed:.1f}s)")
        return False


# --------------------------------------------------------------------------------------------- data


def prepare_data(ctx: RunContext) -> None:
    from engine.data.found import find_images

    m = ctx.manifest
    with Timer(ctx.echo, "data discovery", ctx.results["timings"], "data_s"):
        found = find_images(m, ctx.output_root, run_dir=ctx.run_dir, for_run=True)
    # the root resolved, as the records are: relative paths in results need both
    root, layout, records, redact = found.root, found.layout, found.records, found.redact
    if redact.active:
        ctx.redact = redact
        ctx.echo = _redacting(ctx.echo, redact)
    windowing = windowing_options(m.data)
    groups = None
    skipped: list[dict] = []
    if m.integrity.enabled:
        from engine.integrity import audit as integrity

        with Timer(ctx.echo, "integrity audit", ctx.results["timings"], "integrity_s"):
            report = integrity.audit(records, integrity_options(m.integrity), cache_dir=ctx.output_root / ".cache",
                                     class_names=m.data.classes, windowing=windowing)
        ctx.results["integrity"] = report.to_dict(root=root)
        from engine.report.thumbnails import add_pair_thumbnails

        add_pair_thumbnails(ctx.results, ctx.run_dir, data_root=root, windowing=windowing,
                            sources={ref: path for path, ref in report.display.items()})
        ctx.leaked_test = set(report.excluded_test_paths)  # twins in training, and patients in training
        bad = set(report.unreadable_paths)
        skipped = [dict(u) for u in ctx.results["integrity"].get("unreadable", [])]
        records = [r for r in records if r.key not in bad]
        if m.integrity.group_validation_split:
            groups = integrity.duplicate_groups(records, report)
        ctx.echo(integrity.summary_text(report))
    else:
        records, skipped = data_mod.readable(records, min_size=m.integrity.min_image_size, windowing=windowing,
                                             root=root)
    for s in skipped:
        ctx.echo(f"warning: skipped image {s['path']}: {s['reason']}")
    train = [r for r in records if r.split == "train"]
    test = [r for r in records if r.split == "test"]
    if not test:
        raise InputError(f"data root {str(root)!r}: the test split is empty")
    duplicate_grouped = bool(groups)
    groups = data_mod.patient_groups(train, groups)  # a patient's images stay on one side too
    if train or m.backbones:
        train, val = data_mod.split_validation(train, m.data.validation_fraction, m.experiment.seed, groups,
                                               classes=m.data.classes)
    else:  # imported models only, on a data root without a training folder: nothing to hold out
        val = []
        ctx.echo("data: no training folder; imported models are evaluated on the test split only "
                 "(no validation split: no temperature scaling)")
    ctx.dataset = data_mod.Dataset(root, layout, list(m.data.classes), train, val, test, skipped)
    if "age_band" in m.subgroups.by:
        from engine.evaluation.subgroups import record_values

        record_values(test, m.subgroups.age_bands, root=root, strict=True)  # a bad age stops the run here, exit 2
    from engine.nightly.history import dataset_fingerprint

    from engine.data.labels_csv import fingerprint_entries

    fingerprint = dataset_fingerprint([(data_mod.record_label(r, root), r.path.stat().st_size,
                                        r.path.stat().st_mtime_ns) for r in records]
                                      + fingerprint_entries(root, m.data.labels))
    ctx.results["data"] = {
        "root": str(root), "layout": layout, "class_names": list(m.data.classes), "fingerprint": fingerprint,
        "counts": ctx.dataset.counts(), "validation_fraction": m.data.validation_fraction,
        "validation_grouped_by_duplicates": duplicate_grouped,
        "validation_grouped_by_patient": any(r.patient for r in train + val), "skipped": skipped,
    }
    warnings = data_mod.class_coverage_warnings(ctx.dataset.class_names, ctx.dataset.counts(),
                                                (ctx.results.get("integrity") or {}).get("leakage_free_test_counts"))
    ctx.results["data"]["warnings"] = warnings
    for w in warnings:
        ctx.echo(f"warning: {w}")
    ctx.cache = data_mod.ImageCache(ctx.output_root / ".cache" if m.data.cache else None, progress=ctx.echo,
                                    windowing=windowing)
    counts = ctx.dataset.counts()
    ctx.echo("data: " + ", ".join(f"{s} {sum(c.values())}" for s, c in counts.items()) + f" images ({layout} layout)")


def shift_stage(ctx: RunContext) -> None:
    """How far the leakage-free test images lie from training images of their class (engine.integrity.shift).

    Runs at the first backbone's input size, so the arrays it decodes are the ones its training reuses.
    """
    m, ds = ctx.manifest, ctx.dataset
    keep = ctx.leakage_free_mask()
    if keep is None or not m.integrity.shift or not ds.train:
        return
    from engine.integrity.shift import measure_shift

    size = m.backbones[0].input_size if m.backbones else (m.models[0].input_size or 224)
    with Timer(ctx.echo, "distribution-shift check", ctx.results["timings"], "shift_s"):
        result = measure_shift(
            ctx.cache.load(ds.train, size, "training"), ds.labels("train"),
            ctx.cache.load(ds.val, size, "validation"), ds.labels("val"),
            ctx.cache.load(ds.test, size, "test"), ds.labels("test"), keep, ds.class_names,
            seed=m.experiment.seed)
    ctx.results["integrity"]["shift"] = result.to_dict()
    shifted = [f"{name} {c.auc:.2f}" for name, c in result.per_class.items() if c.auc is not None]
    if shifted:
        ctx.echo("shift: leakage-free test vs training, domain AUC (0.5 = alike): " + ", ".join(shifted))
    unmeasured = [name for name, c in result.per_class.items() if c.auc is None]
    if unmeasured:
        ctx.echo(f"shift: not measured for {', '.join(unmeasured)} (fewer than {result.min_images} images on a side; "
                 "results.json integrity.shift notes say which)")
    for name, c in result.per_class.items():
        for note in c.notes:
            if "not measured" not in note:
                ctx.echo(f"warning: shift check, {name}: {note}")


# --------------------------------------------------------------------------------------------- backbones


def _evaluate_and_store(ctx: RunContext, res: BackboneResult, model, size: int, trained=None, shared=None) -> None:
    """Validation metrics (for selection), then the single test evaluation, predictions, model file.

    ``trained``: the TrainResult of a frozen-backbone head; its validation features are reused
    instead of a second backbone pass (not with flip TTA, which needs the mirrored images' features).
    ``shared``: the backbone's cached boundary activations (activations.Shared); the model's top
    part runs on them instead of a whole-network pass.
    """
    from engine.evaluation.metrics import classification_metrics
    from engine.evaluation.predictions import prediction_files, write_predictions
    from engine.training.train import predict

    ds, m = ctx.dataset, ctx.manifest
    tta = m.evaluation.tta_flip
    t0 = time.perf_counter()
    p_va = trained.validation_probs() if trained is not None and not tta else None
    if trained is not None:
        trained.val_features = None  # the frozen head's features are not needed past this point
    if p_va is None and shared is not None:
        p_va = shared.probs("val", echo=ctx.echo, label=f"{res.name}: validation predictions")
    if p_va is None:
        x_va = ctx.cache.load(ds.val, size, "validation")
        p_va = predict(model, x_va, tta_flip=tta, echo=ctx.echo, label=f"{res.name}: validation predictions")
    from sklearn.metrics import log_loss

    from engine.sklearn_warnings import hold_back

    # Small splits (a leakage-free subset of one class, say) make sklearn warn about cases the
    # metrics already handle (absent classes are None, not 0); the warnings add nothing for a reader.
    with hold_back():
        val = classification_metrics(ds.labels("val"), p_va, ds.class_names)
        res.validation = {"accuracy": round(val.accuracy, 6), "macro_f1": round(val.macro_f1, 6),
                          "log_loss": round(float(log_loss(ds.labels("val"), p_va,
                                                           labels=range(len(ds.class_names)))), 6)}
    if shared is not None:
        p_te = shared.probs("test", echo=ctx.echo, label=f"{res.name}: test predictions")
    else:
        x_te = ctx.cache.load(ds.test, size, "test")
        p_te = predict(model, x_te, tta_flip=tta, echo=ctx.echo, label=f"{res.name}: test predictions")
    y_te = ds.labels("test")
    keep = ctx.leakage_free_mask()
    with hold_back():
        res.test = classification_metrics(y_te, p_te, ds.class_names).to_dict()
        lf = classification_metrics(y_te[keep], p_te[keep], ds.class_names).to_dict() \
            if keep is not None and keep.any() else None
    if lf is not None:
        lf["fraction_of_test"] = round(float(keep.mean()), 6)
    res.leakage_free = lf
    files = prediction_files(slug(res.name))
    bands = m.subgroups.age_bands
    write_predictions(ctx.run_dir / files["test"], ds.test, y_te, p_te, ds.class_names, ds.root, bands)
    # validation predictions let later stages (temperature scaling) run on a resumed/reused run
    write_predictions(ctx.run_dir / files["val"], ds.val, ds.labels("val"), p_va, ds.class_names, ds.root, bands)
    pred_file = files["test"]
    model_file = f"models/{slug(res.name)}.keras"
    save_keras_model(model, ctx.run_dir / model_file)
    res.artifacts = {"model": model_file, "predictions": pred_file}
    res.timings["evaluate_s"] = round(time.perf_counter() - t0, 2)
    ctx.outputs[res.name] = {"val_probs": p_va, "test_probs": p_te, "size": size}
    ctx.echo(f"  {res.display_name}: validation macro-F1 {val.macro_f1:.3f}; test accuracy "
             f"{res.test['accuracy']:.3f}, macro-F1 {res.test['macro_f1']:.3f}")


def import_model(ctx: RunContext, cfg) -> BackboneResult:
    """Load, check and evaluate one ``[[models]]`` entry (engine.training.imported) as a backbone entry.

    Raises InputError (exit 2, naming the model) for a model that does not fit the manifest: a
    class_order naming a class the data lacks, an output width other than len(class_order).
    """
    from engine.evaluation.predictions import prediction_files, write_predictions
    from engine.training.imported import collapse_warnings, load_imported

    ds, m = ctx.dataset, ctx.manifest
    model = load_imported(cfg, ds.class_names, class_aliases(m))
    size, tta = model.input_size, m.evaluation.tta_flip
    t0 = time.perf_counter()
    x_te = ctx.cache.load(ds.test, size, "test")
    p_te = model.predict_proba(x_te, tta_flip=tta)  # InputError for a wrong output width
    x_va = ctx.cache.load(ds.val, size, "validation") if ds.val else x_te[:0]
    p_va = model.predict_proba(x_va, tta_flip=tta) if len(x_va) else None
    keras_model = model.keras_model
    res = BackboneResult(name=cfg.name, display_name=cfg.name, architecture=f"imported {model.format} model",
                         source="imported", file=str(cfg.file), input_size=size,
                         preprocessing=f"{model.preprocess} ({model.scaling.describe()})",
                         parameters=_count_params(keras_model) if keras_model is not None else {})
    warnings = collapse_warnings(cfg.name, "test", ds.labels("test"), p_te, ds.class_names)
    if p_va is not None:
        warnings += collapse_warnings(cfg.name, "validation", ds.labels("val"), p_va, ds.class_names)
    res.extra = {"imported": {**model.describe(), "warnings": warnings},
                 "explanation_method": model.explain_method}
    for w in warnings:
        ctx.echo(f"warning: model {cfg.name}: {w}")
    _store_scores(ctx, res, ds.labels("val"), p_va, ds.labels("test"), p_te)
    files = prediction_files(slug(res.name))
    bands = m.subgroups.age_bands
    write_predictions(ctx.run_dir / files["test"], ds.test, ds.labels("test"), p_te, ds.class_names, ds.root, bands)
    if p_va is not None:
        write_predictions(ctx.run_dir / files["val"], ds.val, ds.labels("val"), p_va, ds.class_names, ds.root, bands)
    # the file the audit read (absolute): the run does not copy a model it did not make
    res.artifacts = {"model": str(Path(cfg.file).resolve()), "predictions": files["test"]}
    res.timings["evaluate_s"] = round(time.perf_counter() - t0, 2)
    ctx.outputs[res.name] = {"val_probs": p_va, "test_probs": p_te, "size": size, "imported": model}
    ctx.echo(f"  {res.display_name} ({model.format}): test accuracy {res.test['accuracy']:.3f}, "
             f"macro-F1 {res.test['macro_f1']:.3f}")
    return res


def _store_scores(ctx: RunContext, res: BackboneResult, y_va, p_va, y_te, p_te) -> None:
    """Validation, test and leakage-free metrics of an imported model (as _evaluate_and_store does)."""
    from sklearn.metrics import log_loss

    from engine.evaluation.metrics import classification_metrics
    from engine.sklearn_warnings import hold_back

    names = ctx.dataset.class_names
    keep = ctx.leakage_free_mask()
    with hold_back():
        if p_va is not None:
            val = classification_metrics(y_va, p_va, names)
            res.validation = {"accuracy": round(val.accuracy, 6), "macro_f1": round(val.macro_f1, 6),
                              "log_loss": round(float(log_loss(y_va, p_va, labels=range(len(names)))), 6)}
        res.test = classification_metrics(y_te, p_te, names).to_dict()
        if keep is not None and keep.any():
            res.leakage_free = classification_metrics(y_te[keep], p_te[keep], names).to_dict()
            res.leakage_free["fraction_of_test"] = round(float(keep.mean()), 6)


def _count_params(model) -> dict:
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    total = int(model.count_params())
    return {"total": total, "trainable": trainable}


def train_backbone(ctx: RunContext, cfg, fine_tune_cfg=None) -> list[BackboneResult]:
    """Train, evaluate and save one backbone (and its fine-tuned twin when asked).

    Returns the result entries; a failure is recorded in the entry, never raised.
    """
    import keras

    from engine.training import backbones as bb
    from engine.training import train as tr

    m, ds = ctx.manifest, ctx.dataset
    seed = m.experiment.seed
    res = BackboneResult(name=cfg.name, display_name=cfg.name,
                         architecture=cfg.name if cfg.file is None else "file",
                         source="file" if cfg.file is not None else "keras.applications",
                         file=str(cfg.file) if cfg.file is not None else None, input_size=cfg.input_size)
    out = [res]
    t_start = time.perf_counter()
    shared = None
    try:
        keras.utils.set_random_seed(seed)
        ctx.echo(f"backbone {cfg.name}: loading ({cfg.input_size}px)")
        loaded = bb.load_backbone(cfg)
        res.weights = WeightsInfo(loaded.weights_requested, loaded.weights_used, loaded.note)
        res.preprocessing = loaded.preprocessing
        if loaded.random_init and cfg.weights != "none":
            ctx.echo(f"warning: {cfg.name}: {loaded.note}")
        if loaded.random_init:
            bb.converge_batchnorm(loaded.model)
        model = bb.build_classifier(loaded.model, loaded.preprocessing, cfg.input_size, len(ds.class_names),
                                    m.training.head_units, m.training.dropout, seed)
        x_tr = ctx.cache.load(ds.train, cfg.input_size, "training")
        x_va = ctx.cache.load(ds.val, cfg.input_size, "validation")
        y_tr, y_va = ds.labels("train"), ds.labels("val")
        ft = fine_tune_cfg or cfg.fine_tune
        frozen = not (loaded.random_init or cfg.train_backbone)
        t_shared = time.perf_counter()
        shared = _share(ctx, cfg, model, ft, x_tr, x_va) if frozen and ft is not None else None
        features = shared.features(ctx.echo, f"{cfg.name}: backbone features") if shared is not None else None
        t_shared = time.perf_counter() - t_shared
        history = tr.train_head(model, x_tr, y_tr, x_va, y_va, cfg=m.training, seed=seed,
                                train_backbone=not frozen, label=cfg.name, echo=ctx.echo, features=features)
        if shared is not None:
            history.stages[-1].time_s += t_shared  # the one pass of the frozen layers is the head's cost
        res.history = list(history.history)
        res.stages = [s.to_dict() for s in history.stages]
        res.parameters = _count_params(model)
        res.timings["train_s"] = round(history.time_s, 2)
        _evaluate_and_store(ctx, res, model, cfg.input_size, history, shared=shared)
        res.timings["total_s"] = round(time.perf_counter() - t_start, 2)
        if ft is not None:
            out.append(fine_tune_entry(ctx, cfg, res, model, ft, shared=shared))
    except Exception as exc:  # noqa: BLE001 - one broken backbone must not sink the others
        _fail(ctx, res, failure_message(ctx, exc, f"train-{res.name}"))
    finally:
        if shared is not None:
            shared.close()
    return out


def _share(ctx: RunContext, cfg, model, ft, x_tr, x_va):
    """One pass of the frozen lower backbone over every split (activations.Shared), or None (the
    stages then make their own passes; the log says why when it is not the augmentation)."""
    from engine.training import activations as act

    m = ctx.manifest
    aug = m.training.augmentation
    if act.random_augmentations(aug) or (aug.enabled and aug.augment_head):
        return None  # the head or the fine-tuning sees randomly changed images: nothing to share
    store = ctx.cache.cache_dir
    if store is not None:
        store.mkdir(parents=True, exist_ok=True)  # large activation caches are memory-mapped here
    from engine.training.backbones import set_backbone_trainable

    x_te = ctx.cache.load(ctx.dataset.test, cfg.input_size, "test")
    flips, tta = bool(aug.enabled and aug.flip), m.evaluation.tta_flip
    set_backbone_trainable(model, ft.layers)  # the cut fine-tuning will use; the head stage freezes it all again
    t0 = time.perf_counter()
    shared, why = act.share(model, x_tr, x_va, x_te, batch=m.training.batch_size, flips=flips, tta=tta,
                            budget=m.training.activation_cache_bytes, store=store, echo=ctx.echo,
                            label=f"{cfg.name}: frozen layers")
    if shared is None:
        ctx.echo(f"  {cfg.name}: each stage runs the frozen layers itself: {why}")
        return None
    ctx.echo(f"  {cfg.name}: frozen layers: {shared.describe()} in {time.perf_counter() - t0:.1f}s: "
             "one pass of the frozen layers for the head, fine-tuning and evaluation")
    return shared


def fine_tune_entry(ctx: RunContext, cfg, frozen: BackboneResult, model, ft, shared=None) -> BackboneResult:
    from engine.training import train as tr

    m, ds = ctx.manifest, ctx.dataset
    name = f"{frozen.name}_ft"
    res = BackboneResult(name=name, display_name=f"{frozen.display_name} (fine-tuned)",
                         architecture=frozen.architecture, source=frozen.source, file=frozen.file,
                         input_size=frozen.input_size, weights=frozen.weights, preprocessing=frozen.preprocessing,
                         fine_tuned_from=frozen.name)
    t0 = time.perf_counter()
    try:
        x_tr = ctx.cache.load(ds.train, cfg.input_size, "training")
        x_va = ctx.cache.load(ds.val, cfg.input_size, "validation")
        result = tr.TrainResult(history=[dict(h) for h in frozen.history])
        store = ctx.cache.cache_dir
        if store is not None:
            store.mkdir(parents=True, exist_ok=True)  # large activation caches are memory-mapped here
        result = tr.fine_tune(model, x_tr, ds.labels("train"), x_va, ds.labels("val"), cfg=m.training, ft=ft,
                              seed=m.experiment.seed, label=res.name, echo=ctx.echo, result=result, store=store,
                              cached=shared)
        res.history = result.history
        res.stages = list(frozen.stages) + [result.stages[-1].to_dict()]
        res.parameters = _count_params(model)
        res.timings["train_s"] = round(frozen.timings.get("train_s", 0) + result.stages[-1].time_s, 2)
        _evaluate_and_store(ctx, res, model, cfg.input_size, shared=shared)
        res.timings["total_s"] = round(time.perf_counter() - t0 + frozen.timings.get("total_s", 0), 2)
    except Exception as exc:  # noqa: BLE001
        _fail(ctx, res, failure_message(ctx, exc, f"fine-tune-{res.name}"))
    return res


def fine_tune_saved(ctx: RunContext, cfg, frozen: BackboneResult, ft) -> BackboneResult:
    """Fine-tune a frozen backbone's saved model (the study's "fine-tune the best" step)."""
    import keras

    from engine.training.backbones import load_saved_model

    try:
        keras.utils.set_random_seed(ctx.manifest.experiment.seed)
        model = load_saved_model(ctx.run_dir / frozen.artifacts["model"])
    except Exception as exc:  # noqa: BLE001
        res = BackboneResult(name=f"{frozen.name}_ft", display_name=f"{frozen.display_name} (fine-tuned)",
                             architecture=frozen.architecture, source=frozen.source, file=frozen.file,
                             input_size=frozen.input_size, fine_tuned_from=frozen.name)
        _fail(ctx, res, f"cannot reload {frozen.name}: " + failure_message(ctx, exc, f"reload-{frozen.name}"))
        return res
    return fine_tune_entry(ctx, cfg, frozen, model, ft)


def failure_message(ctx: RunContext, exc: BaseException, what: str) -> str:
    """What a per-backbone stage records when ``exc`` stopped it.

    An input or file-system error is the user's to fix and is said as it is; anything else is a
    bug in auditrun, said as such, with its traceback kept in the run folder for the bug report.
    """
    reason = storage_problem(exc, ctx.run_dir)
    if reason is not None:  # a full disk is the whole run's failure, not this stage's
        raise StorageError(getattr(exc, "filename", None) or ctx.run_dir, reason) from None
    if isinstance(exc, InputError):
        return ctx.redact(str(exc))
    if isinstance(exc, OSError):
        return ctx.redact(os_error_message(exc))
    name = f"traceback-{slug(what)}.txt"
    where = f"traceback in {name}" if save_traceback(ctx.run_dir, name, exc) else "the traceback could not be saved"
    return ctx.redact(f"internal error (a bug in auditrun) {type(exc).__name__}: {exc} ({where})")


def save_traceback(run_dir: Path, name: str, exc: BaseException) -> Path | None:
    """Keep ``exc``'s whole traceback in the run folder for the bug report; None when it cannot be
    written (a full disk must not replace the bug it was reporting)."""
    try:
        return write_text(run_dir / name, "".join(traceback.format_exception(exc)))
    except OSError:
        return None


def _fail(ctx: RunContext, res: BackboneResult, message: str) -> None:
    res.status, res.error = "failed", message
    res.test = None
    ctx.echo(f"error: backbone {res.name} failed: {message}")


# --------------------------------------------------------------------------------------------- run


#: Run statuses that --resume leaves alone: the run reached its end (gates, report, history).
FINISHED_STATUSES = ("ok", "partial")
#: Where a run keeps the traceback of an internal error (a bug), beside results.json.
TRACEBACK_FILE = "traceback.txt"


@dataclass
class RunOutcome:
    run_dir: Path
    status: str
    gates: list = field(default_factory=list)
    #: True when --resume found the run already finished and did nothing.
    already_finished: bool = False
    #: True for a non-chief multiworker process: it trained in step with the chief and kept nothing.
    worker: bool = False

    @property
    def gate_failed(self) -> bool:
        return any(g.status == "FAIL" for g in self.gates)


def run_audit(m: Manifest, *, output_dir: Path | None = None, run_id: str | None = None,
              echo: Echo | None = None, now: Callable[[], datetime] | None = None,
              resume: Path | None = None) -> RunOutcome:
    """Run every stage under the experiment's lock. Raises InputError for bad input."""
    from engine.nightly.lock import experiment_lock

    from engine.data.synth import prepare_data_root

    echo = echo or _quiet
    now = now or (lambda: datetime.now(timezone.utc))
    if synthetic_root(m) is not None:  # manifest.load leaves the writing of the phantoms to the run
        prepare_data_root(m)
    # before anything is written: the output and the data must not hold one another
    check_output_root(Path(resume).resolve().parent.parent if resume is not None
                      else Path(output_dir) if output_dir else m.experiment.output_dir,
                      [(data_root_source(), m.data.root)] if m.data.root is not None else [])
    if m.training.distribute == "multiworker":
        from engine.training.devices import is_chief

        if not is_chief():
            return _run_as_worker(m, Path(output_dir) if output_dir else m.experiment.output_dir, run_id, echo, now)
    if resume is not None:
        exp_dir = Path(resume).resolve().parent
    else:
        output_root = Path(output_dir) if output_dir else m.experiment.output_dir
        output_root.mkdir(parents=True, exist_ok=True)
        exp_dir = child(output_root, m.experiment.name, "experiment.name")
        if run_id is not None:
            safe_name(run_id, "--run-id")
    exp_dir.mkdir(parents=True, exist_ok=True)
    with experiment_lock(exp_dir, experiment=m.experiment.name):
        return _run_locked(m, exp_dir, run_id, echo, now, resume)


def _run_as_worker(m: Manifest, output_root: Path, run_id, echo: Echo, now) -> RunOutcome:
    """A non-chief worker trains in step with the chief but keeps nothing: only the chief writes
    artefacts. Its run goes to a hidden temporary folder inside the output root (nothing is
    written outside it), deleted at the end, and it exits 0. It skips Grad-CAM and the report:
    they need no collective step, and their results would be thrown away."""
    import tempfile
    from dataclasses import replace

    m = replace(m, gradcam=replace(m.gradcam, enabled=False), report=replace(m.report, formats=[]))
    output_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".worker-", dir=output_root) as tmp:
        echo("multiworker: non-chief worker; training with the chief, writing nothing that stays")
        exp_dir = Path(tmp) / m.experiment.name
        exp_dir.mkdir()
        outcome = _run_locked(m, exp_dir, run_id, echo, now, None)
    return RunOutcome(output_root, outcome.status, worker=True)


def _run_locked(m: Manifest, exp_dir: Path, run_id, echo: Echo, now, resume) -> RunOutcome:
    from engine.provenance import environment

    started = now()
    t_run = time.perf_counter()
    manifest_sha = hashlib.sha256(m.text.encode()).hexdigest()
    previous = None
    if resume is not None:
        run_dir = Path(resume)
        previous = read_results(run_dir)
        if previous["experiment"].get("manifest_sha256") != manifest_sha:
            raise InputError(f"--resume {str(run_dir)!r}: that run used a different manifest; resume it with the "
                             f"manifest copy in {str(run_dir / 'manifest.toml')!r}")
        if previous["run"].get("status") in FINISHED_STATUSES:
            echo(f"run {run_dir.name} already finished (status {previous['run']['status']}); nothing to resume")
            return RunOutcome(run_dir, previous["run"]["status"], already_finished=True)
        started = datetime.fromisoformat(previous["run"]["started_at"])
    else:
        run_id = run_id or new_run_id(started)
        run_dir = child(exp_dir, run_id, "--run-id")
        if run_dir.exists():
            raise InputError(f"run directory {str(run_dir)!r} already exists; choose another --run-id "
                             "(or --resume it)")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "manifest.toml", m.text)
    results = {
        "schema_version": SCHEMA_VERSION,
        "experiment": {"name": m.experiment.name, "description": m.experiment.description,
                       "seed": m.experiment.seed, "manifest_file": "manifest.toml", "manifest_sha256": manifest_sha},
        "run": {"id": run_dir.name, "started_at": started.isoformat(timespec="seconds"), "finished_at": None,
                "status": "running", "wall_time_s": None, "resumed": resume is not None, "reused_from": None},
        "environment": environment(),
        "backbones": [],
        "best_backbone": None,
        "timings": {},
    }
    ctx = RunContext(m, run_dir, exp_dir.parent, echo, now, results, clock_start=t_run,
                     prior_active_s=float((previous or {}).get("run", {}).get("active_s") or 0.0))
    if previous is not None:
        results["run"]["active_s_before_resume"] = ctx.prior_active_s
    ctx.save()
    echo(f"run directory: {run_dir}")
    try:
        # Keras builds every .keras archive in the temp folder: it must lie inside the output root.
        with scratch_folder(exp_dir):
            return _run_stages(ctx, exp_dir, manifest_sha, previous)
    except StorageError as exc:  # the output's disk is full or read-only: the CLI exits 2
        exc.args = (ctx.redact(str(exc)),)
        _record_end(ctx, exp_dir, "failed", str(exc))
        raise
    except (InputError, OSError) as exc:  # the user's input or file system: the CLI exits 2
        message = ctx.redact(str(exc) if isinstance(exc, InputError) else os_error_message(exc))
        _record_end(ctx, exp_dir, "failed", message)
        raise InputError(message) from None
    except (RunInterrupted, KeyboardInterrupt) as exc:
        stop = exc if isinstance(exc, RunInterrupted) else RunInterrupted(signal.SIGINT)
        ctx.results["run"]["resume_command"] = resume_command(m, run_dir)
        _record_end(ctx, exp_dir, "interrupted", str(stop))
        stop.hint = f"run marked interrupted; continue it with: {ctx.results['run']['resume_command']}"
        if stop is exc:
            raise
        raise stop from None
    except Exception as exc:
        # A bug, not the user's input: keep the whole traceback where the user will look for it.
        trace = save_traceback(run_dir, TRACEBACK_FILE, exc)
        if trace is not None:
            exc.auditrun_traceback = trace  # type: ignore[attr-defined]
        where = f"traceback in {TRACEBACK_FILE}" if trace else "the traceback could not be saved"
        _record_end(ctx, exp_dir, "failed", ctx.redact(f"internal error {type(exc).__name__}: {exc} ({where})"))
        raise


def resume_command(m: Manifest, run_dir: Path) -> str:
    """The exact shell command that continues ``run_dir`` (the manifest as the user named it)."""
    import shlex

    manifest = m.path if m.path is not None else run_dir / "manifest.toml"
    return f"auditrun {shlex.quote(str(manifest))} --resume {shlex.quote(str(run_dir))}"


def _record_end(ctx: RunContext, exp_dir: Path, status: str, error: str) -> None:
    """Mark a run that stopped early as ``failed`` or ``interrupted``, in results.json and the history.

    Best effort on top of an error already on its way to the user: a second failure here (a full
    disk, say) must not replace the first.
    """
    from engine.nightly import history

    run = ctx.results["run"]
    run.update(status=status, error=error, finished_at=ctx.now().isoformat(timespec="seconds"),
               wall_time_s=round(ctx.active_s(), 1))
    try:
        try:
            ctx.save()
        except StorageError:
            # No room for the temporary copy an atomic write needs: the file's own blocks, compact.
            # A run left saying "running" would be resumed as if it had been interrupted.
            ctx.save(in_place=True)
        history.append_record(exp_dir, history.record_from_results(ctx.results))
    except (OSError, ValueError, StorageError) as exc:
        ctx.echo(f"warning: could not record the run as {status}: {exc}")


def check_model_files(m: Manifest) -> None:
    """Every backbone and model file can be read, before anything trains: a missing or unreadable
    file stops the run at once (exit 2) instead of failing its backbone an hour in."""
    from engine.training.backbones import unreadable_file

    for key, entries in (("backbones", m.backbones), ("models", m.models)):
        for i, cfg in enumerate(entries):
            if cfg.file is None or Path(cfg.file).is_dir():  # a SavedModel folder is checked by its loader
                continue
            why = unreadable_file(cfg.file)
            if why is not None:
                raise InputError(f"manifest key '{key}[{i}].file': cannot read {str(cfg.file)!r}: {why}; "
                                 "nothing was trained")


def setup_training(ctx: RunContext) -> None:
    """Strategy, precision and the devices they use, first: MultiWorkerMirroredStrategy must exist
    before TensorFlow runs anything."""
    from engine.training.devices import setup

    ctx.training_setup = setup(ctx.manifest.training)
    ctx.results["environment"]["training"] = ctx.training_setup.to_dict()
    ctx.echo(ctx.training_setup.describe())


def _run_stages(ctx: RunContext, exp_dir: Path, manifest_sha: str, previous: dict | None) -> RunOutcome:
    m, echo, results, run_dir = ctx.manifest, ctx.echo, ctx.results, ctx.run_dir
    now = ctx.now
    check_model_files(m)
    setup_training(ctx)
    prepare_data(ctx)
    shift_stage(ctx)
    ctx.save()

    # TensorFlow runs from here on: a signal is acted on at the next batch boundary, never in the
    # middle of Keras' or tf.data's own code (engine.interrupts).
    with interrupts.deferred():
        done = {e["name"]: e for e in (previous or {}).get("backbones", []) if e.get("status") == "ok"}
        source_dir = run_dir
        if not done and m.experiment.reuse == "if-unchanged":
            done, source_dir = _reusable_entries(ctx, exp_dir, manifest_sha)
        for cfg in m.backbones:
            names = [cfg.name] + ([f"{cfg.name}_ft"] if cfg.fine_tune else [])
            if all(n in done and (source_dir / done[n]["artifacts"]["model"]).is_file() for n in names):
                verb = "finished in the interrupted run" if source_dir == run_dir else f"reused from run {source_dir.name}"
                echo(f"backbone {cfg.name}: {verb}; not retrained")
                for n in names:
                    _adopt(ctx, done[n], source_dir)
                continue
            with Timer(echo, f"backbone {cfg.name}"):
                with ctx.training_scope():
                    entries = train_backbone(ctx, cfg)
            ctx.backbones += entries
            ctx.save()

        from engine.evaluation.selection import select_best

        ft_best = m.training.fine_tune_best
        if ft_best is not None:
            frozen = [b for b in ctx.backbones if not b.fine_tuned_from]
            best = select_best(frozen)
            if best is not None and not any(b.fine_tuned_from == best["name"] for b in ctx.backbones):
                twin = f"{best['name']}_ft"
                if twin in done and (source_dir / done[twin]["artifacts"]["model"]).is_file():
                    _adopt(ctx, done[twin], source_dir)
                else:
                    cfg = next(c for c in m.backbones if c.name == best["name"])
                    frozen_best = next(b for b in frozen if b.name == best["name"])
                    echo(f"fine-tuning the best backbone on validation: {cfg.name}")
                    with Timer(echo, f"fine-tune {cfg.name}"):
                        with ctx.training_scope():
                            ctx.backbones.append(fine_tune_saved(ctx, cfg, frozen_best, ft_best))
                ctx.save()

        for cfg in m.models:
            with Timer(echo, f"model {cfg.name} (imported)"):
                ctx.backbones.append(import_model(ctx, cfg))
            ctx.save()

        results["best_backbone"] = select_best(ctx.backbones)
        run_post_stages(ctx)
    ok = ctx.finished()
    results["run"]["status"] = "ok" if len(ok) == len(ctx.backbones) else ("partial" if ok else "failed")
    results["run"]["finished_at"] = now().isoformat(timespec="seconds")
    # On --resume: the interrupted part (up to its last save) plus this one.
    results["run"]["wall_time_s"] = round(ctx.active_s(), 1)
    results["timings"]["total_s"] = results["run"]["wall_time_s"]
    gates = finish_run(ctx, exp_dir)
    return RunOutcome(run_dir, results["run"]["status"], gates)


def _reusable_entries(ctx: RunContext, exp_dir: Path, manifest_sha: str) -> tuple[dict, Path]:
    """Finished entries of the newest run with the same manifest, data and code (reuse = "if-unchanged")."""
    from engine.nightly.reuse import finished_entries, reusable_run

    run_id = reusable_run(exp_dir, ctx.results, manifest_sha)
    if run_id is None:
        ctx.echo("reuse: no earlier run with unchanged manifest, data and code; training")
        return {}, ctx.run_dir
    ctx.results["run"]["reused_from"] = run_id
    ctx.echo(f"reuse: manifest, data and code unchanged since run {run_id}; reusing its models")
    return finished_entries(exp_dir / run_id), exp_dir / run_id


def _adopt(ctx: RunContext, entry: dict, source_dir: Path) -> None:
    """Take a finished entry (and its files) from an interrupted or reused run."""
    from engine.nightly.reuse import adopt_entry

    res = BackboneResult.from_dict(adopt_entry(entry, source_dir, ctx.run_dir))
    ctx.backbones.append(res)
    restore_outputs(ctx, res)


def finish_run(ctx: RunContext, exp_dir: Path) -> list:
    """Gates against the previous run, trend, report, then history, latest pointer and retention."""
    from engine.nightly import gates as gates_mod
    from engine.nightly import history
    from engine.nightly.retention import prune_cache, prune_runs

    m, results = ctx.manifest, ctx.results
    run_id = results["run"]["id"]
    records = [r for r in history.read_history(exp_dir) if r.get("run_id") != run_id]
    gates = gates_mod.evaluate_gates(results, m.gates, history.previous_record(records, run_id))
    results["gates"] = gates_mod.gates_to_dict(gates)
    record = history.record_from_results(results)
    results["trend"] = history.trend(records + [record], run_id, last_n=m.report.trend_window)
    ctx.save()
    render_stage(ctx)
    history.append_record(exp_dir, history.record_from_results(results))
    history.write_latest(exp_dir, run_id)
    protect = {run_id} | ({results["run"]["reused_from"]} if results["run"].get("reused_from") else set())
    for pruned in prune_runs(exp_dir, m.experiment.keep_last, protect, experiment=m.experiment.name):
        ctx.echo(f"retention: removed old run {pruned.name} (keep_last = {m.experiment.keep_last})")
    if m.data.cache:
        stale = prune_cache(ctx.output_root / ".cache", m.data.cache_max_age_days)
        if stale:
            ctx.echo(f"retention: removed {len(stale)} cached image arrays unused for "
                     f"{m.data.cache_max_age_days} days")
    return gates


def render_stage(ctx: RunContext) -> None:
    formats = list(ctx.manifest.report.formats)
    if not formats:
        return
    from engine.report import render_report

    with Timer(ctx.echo, "report", ctx.results["timings"], "report_s"):
        written = render_report(ctx.run_dir, formats, now=ctx.now())  # the run's clock dates the report
    for fmt, path in written.items():
        ctx.echo(f"report: {path}")


def restore_outputs(ctx: RunContext, res: BackboneResult) -> None:
    """Rebuild in-memory probabilities for a backbone finished by an earlier run."""
    from engine.evaluation.predictions import read_probabilities, validation_file

    test_csv = res.artifacts["predictions"]
    ctx.outputs[res.name] = {
        "val_probs": read_probabilities(ctx.run_dir / validation_file(test_csv), ctx.class_names),
        "test_probs": read_probabilities(ctx.run_dir / test_csv, ctx.class_names),
        "size": res.input_size,
    }


def run_post_stages(ctx: RunContext) -> None:
    """Stages that need every backbone's outputs: calibration, uncertainty, comparisons, Grad-CAM."""
    from engine.evaluation.calibration import calibrate
    from engine.evaluation.compare import pairwise_mcnemar
    from engine.sklearn_warnings import hold_back
    from engine.evaluation.uncertainty import bootstrap_summary

    m, ds, results = ctx.manifest, ctx.dataset, ctx.results
    ev = m.evaluation
    y_val, y_te = ds.labels("val"), ds.labels("test")
    keep = ctx.leakage_free_mask()
    ok = [b for b in ctx.finished() if b.name in ctx.outputs]
    with Timer(ctx.echo, "calibration and confidence intervals", results["timings"], "statistics_s"):
        for res in ok:
            out = ctx.outputs[res.name]
            if ev.temperature_scaling and out["val_probs"] is not None:
                res.calibration = calibrate(y_val, out["val_probs"], y_te, out["test_probs"],
                                                 ev.ece_bins).to_dict()
            if ev.bootstrap_resamples:
                pred = out["test_probs"].argmax(1)
                # its point values come from sklearn; an interval too small to compute says so itself
                with hold_back():
                    unc = {"test": bootstrap_summary(y_te, pred, ds.class_names, ev.bootstrap_resamples,
                                                     seed=m.experiment.seed, confidence=ev.confidence)}
                    if keep is not None and keep.any():
                        unc["leakage_free"] = bootstrap_summary(y_te[keep], pred[keep], ds.class_names,
                                                                ev.bootstrap_resamples, seed=m.experiment.seed,
                                                                confidence=ev.confidence)
                res.uncertainty = unc
        if m.subgroups.by:
            subgroup_stage(ctx, ok)
        if len(ok) >= 2:
            correct = {b.name: ctx.outputs[b.name]["test_probs"].argmax(1) == y_te for b in ok}
            results["comparisons"] = [r.to_dict() for r in pairwise_mcnemar(correct)]
            if keep is not None and keep.sum() > 0:
                results["comparisons_leakage_free"] = [
                    r.to_dict() for r in pairwise_mcnemar({k: v[keep] for k, v in correct.items()})]
    ctx.save()
    if m.gradcam.enabled and ok:
        explain_stage(ctx, ok)


def _box_paths(records) -> list[str | None]:
    """Where each record's YOLO box file (``<image>.txt``) would lie: none for a frame of a
    multi-image file, since one box file cannot say which of its frames it boxes."""
    return [None if r.frame_name else str(r.path) for r in records]


def subgroup_stage(ctx: RunContext, entries: list[BackboneResult]) -> None:
    """Performance by subgroup (``[subgroups] by``) on the test split, per backbone, and the largest
    gap between subgroups (engine.evaluation.subgroups)."""
    from engine.evaluation.subgroups import audit_subgroups, record_values
    from engine.sklearn_warnings import hold_back

    m, ds = ctx.manifest, ctx.dataset
    sub, ev = m.subgroups, m.evaluation
    values = record_values(ds.test, sub.age_bands)
    y_te = ds.labels("test")
    for res in entries:
        with hold_back():
            block = audit_subgroups(y_te, ctx.outputs[res.name]["test_probs"].argmax(1), values, ds.class_names,
                                    sub.by, min_n=sub.min_n, n_resamples=ev.bootstrap_resamples,
                                    seed=m.experiment.seed, confidence=ev.confidence, age_bands=sub.age_bands)
        res.subgroups, res.subgroup_gap = block["subgroups"], block["subgroup_gap"]
        largest = res.subgroup_gap["largest"]
        if largest is not None:
            ci = (f" [{largest['ci_low']:.3f}, {largest['ci_high']:.3f}]"
                  if largest["ci_low"] is not None and largest["ci_high"] is not None else "")
            ctx.echo(f"  {res.display_name}: largest subgroup gap in macro-F1 {largest['gap']:.3f}{ci}, "
                     f"{largest['attribute']} {largest['higher']['group']} vs {largest['lower']['group']}")
    unavailable = entries[0].subgroup_gap["unavailable"] if entries else []
    if unavailable:
        ctx.echo(f"warning: subgroups: no test image records {', '.join(unavailable)}; "
                 "those attributes are listed as unavailable")


def explain_stage(ctx: RunContext, entries: list[BackboneResult]) -> None:
    """Grad-CAM galleries and the pointing game, per backbone, from the saved models."""
    from engine.explain.gallery import explain_backbone, pointing_game_on
    from engine.training.backbones import load_saved_model

    m, ds = ctx.manifest, ctx.dataset
    layers = {c.name: c.gradcam_layer for c in m.backbones}
    for res in entries:
        if res.source == "imported":  # issue 19: a model trained elsewhere, explained through its adapter
            explain_imported(ctx, res)
            continue
        with Timer(ctx.echo, f"Grad-CAM {res.name}"):
            try:
                model = load_saved_model(ctx.run_dir / res.artifacts["model"])
                size = res.input_size
                out = ctx.outputs[res.name]
                layer = m.gradcam.layer or layers.get(res.fine_tuned_from or res.name)
                res.gradcam = explain_backbone(
                    model, ctx.cache.load(ds.test, size, "test"), ds.labels("test"), out["test_probs"],
                    [data_mod.record_label(r) for r in ds.test], ds.class_names, ctx.run_dir / "gradcam" / slug(res.name),
                    m.gradcam.images_per_class, m.experiment.seed, layer=layer, data_root=ds.root,
                    run_dir=ctx.run_dir, pointing_max_images=m.gradcam.max_pointing_images,
                    box_paths=_box_paths(ds.test), names=[display_path(r, ds.root) for r in ds.test],
                    echo=ctx.echo)
                # Boxed validation images score the explanation without the test split, so Grad-CAM
                # settings (layer, input size) can be tuned on them.
                val_game = pointing_game_on(
                    model, ctx.cache.load(ds.val, size, "validation"), ds.labels("val"),
                    [data_mod.record_label(r) for r in ds.val], ds.class_names, m.experiment.seed,
                    layer=res.gradcam["layer"], max_images=m.gradcam.max_pointing_images,
                    box_paths=_box_paths(ds.val)) if ds.val else None
                if val_game is not None:
                    res.gradcam["pointing_game_validation"] = val_game
            except Exception as exc:  # noqa: BLE001 - one failed explanation must not lose the report
                message = failure_message(ctx, exc, f"gradcam-{res.name}")
                res.gradcam = {"error": message}
                ctx.echo(f"error: Grad-CAM for {res.name}: {message}")
        if m.gradcam.check_images and "error" not in res.gradcam:
            _explanation_checks(ctx, res, model, res.gradcam.get("layer"))
        ctx.save()


def _explanation_checks(ctx: RunContext, res: BackboneResult, model, layer: str | None) -> None:
    """The three checks of docs/explanations.md per ``[gradcam] method`` (engine.explain.reliability)."""
    from engine.explain.reliability import explain_reliability

    m, ds, g = ctx.manifest, ctx.dataset, ctx.manifest.gradcam
    with Timer(ctx.echo, f"explanation checks {res.name} ({', '.join(g.methods)})", res.timings,
               "explanation_checks_s"):
        res.explanations = explain_reliability(
            model, ctx.cache.load(ds.test, res.input_size, "test"), ds.labels("test"), _box_paths(ds.test),
            g.methods, m.experiment.seed, ctx.run_dir / "gradcam" / slug(res.name), ctx.run_dir, layer=layer,
            n_images=g.check_images, tolerance_px=g.tolerance_px, cascade_steps=g.cascade_steps,
            faithfulness_steps=g.faithfulness_steps, echo=ctx.echo)


def explain_imported(ctx: RunContext, res: BackboneResult) -> None:
    """Gallery and pointing game of an imported model: Grad-CAM where a .keras model has a
    convolutional layer, occlusion sensitivity through its predict function otherwise
    (engine.explain.agnostic); the method is recorded in the block and named in every caption."""
    from engine.explain.agnostic import heatmaps_for
    from engine.explain.gallery import explain_backbone, pointing_game_on

    m, ds = ctx.manifest, ctx.dataset
    out = ctx.outputs[res.name]
    model = out.get("imported")
    if model is None:  # an entry adopted from an earlier run: its model is not loaded here
        return
    heatmaps, method, layer = heatmaps_for(model)
    with Timer(ctx.echo, f"explanations ({method}) {res.name}"):
        try:
            size = res.input_size
            res.gradcam = explain_backbone(
                None, ctx.cache.load(ds.test, size, "test"), ds.labels("test"), out["test_probs"],
                [data_mod.record_label(r) for r in ds.test], ds.class_names, ctx.run_dir / "gradcam" / slug(res.name),
                m.gradcam.images_per_class, m.experiment.seed, layer=layer, data_root=ds.root, run_dir=ctx.run_dir,
                pointing_max_images=m.gradcam.max_pointing_images, box_paths=_box_paths(ds.test),
                names=[display_path(r, ds.root) for r in ds.test], heatmaps=heatmaps, method=method)
            val_game = pointing_game_on(
                None, ctx.cache.load(ds.val, size, "validation"), ds.labels("val"),
                [data_mod.record_label(r) for r in ds.val], ds.class_names, m.experiment.seed,
                max_images=m.gradcam.max_pointing_images, box_paths=_box_paths(ds.val),
                heatmaps=heatmaps) if ds.val else None
            if val_game is not None:
                res.gradcam["pointing_game_validation"] = val_game
            res.extra["explanation_method"] = method
        except Exception as exc:  # noqa: BLE001 - one failed explanation must not lose the report
            message = failure_message(ctx, exc, f"explain-{res.name}")
            res.gradcam = {"error": message, "method": method}
            ctx.echo(f"error: explanations for {res.name}: {message}")
    ctx.save()

"""The training stage of a run: each ``[[backbones]]`` entry trained, evaluated and saved (and its
fine-tuned twin), each ``[[models]]`` entry loaded and evaluated.

Each function returns ``Trained`` values: the backbone's typed result (engine.results.BackboneResult)
and the arrays later stages read. A failure is recorded in the result, never raised; a full disk
is (engine.failures).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from engine import evaluation
from engine.atomic import save_keras_model
from engine.errors import InputError
from engine.failures import failure_message
from engine.manifest import Manifest, class_aliases
from engine.paths import slug
from engine.results import BackboneResult, WeightsInfo

Echo = Callable[[str], None]


@dataclass
class Trained:
    result: BackboneResult
    #: What later stages read (evaluation.outputs_of); None when the model failed.
    outputs: dict | None = None


@dataclass
class Place:
    """Where a stage writes and says what it does: the run directory and the (redacting) echo."""

    run_dir: Path
    echo: Echo


def count_params(model) -> dict:
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    total = int(model.count_params())
    return {"total": total, "trainable": trainable}


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


def setup_training(m: Manifest):
    """Strategy, precision and the devices they use (engine.training.devices.Setup), first:
    MultiWorkerMirroredStrategy must exist before TensorFlow runs anything."""
    from engine.training.devices import setup

    return setup(m.training)


def _fail(res: BackboneResult, message: str, echo: Echo) -> None:
    res.status, res.error = "failed", message
    res.test = None
    echo(f"error: backbone {res.name} failed: {message}")


def _failure(place: Place, data, exc: BaseException, what: str) -> str:
    return failure_message(exc, what, place.run_dir, data.redact)


def _evaluate_and_store(m: Manifest, data, place: Place, res: BackboneResult, model, size: int,
                        trained=None, shared=None) -> dict:
    """Validation metrics (for selection), then the single test evaluation, predictions, model file;
    returns the outputs later stages read.

    ``trained``: the TrainResult of a frozen-backbone head; its validation features are reused
    instead of a second backbone pass (not with flip TTA, which needs the mirrored images' features).
    ``shared``: the backbone's cached boundary activations (activations.Shared); the model's top
    part runs on them instead of a whole-network pass.
    """
    ds, echo, cache = data.dataset, place.echo, data.cache
    tta = m.evaluation.tta_flip
    t0 = time.perf_counter()
    p_va = trained.validation_probs() if trained is not None and not tta else None
    if trained is not None:
        trained.val_features = None  # the frozen head's features are not needed past this point
    if p_va is None and shared is not None:
        p_va = shared.probs("val", echo=echo, label=f"{res.name}: validation predictions")
    if p_va is None:
        p_va = evaluation.predict_probs(model, cache.load(ds.val, size, "validation"), tta_flip=tta, echo=echo,
                                        label=f"{res.name}: validation predictions")
    if shared is not None:
        p_te = shared.probs("test", echo=echo, label=f"{res.name}: test predictions")
    else:
        p_te = evaluation.predict_probs(model, cache.load(ds.test, size, "test"), tta_flip=tta, echo=echo,
                                        label=f"{res.name}: test predictions")
    ev = evaluation.evaluate(data, p_va, p_te)
    for block in ("validation", "test", "leakage_free"):
        res.put(block, getattr(ev, block))
    files = evaluation.save_predictions(place.run_dir, slug(res.name), data, ev, m.subgroups.age_bands)
    model_file = f"models/{slug(res.name)}.keras"
    save_keras_model(model, place.run_dir / model_file)
    res.artifacts = {"model": model_file, "predictions": files["test"]}
    res.timings["evaluate_s"] = round(time.perf_counter() - t0, 2)
    echo(f"  {res.display_name}: validation macro-F1 {ev.val_macro_f1:.3f}; test accuracy "
         f"{res.test.accuracy:.3f}, macro-F1 {res.test.macro_f1:.3f}")
    return evaluation.outputs_of(ev, size)


def import_model(m: Manifest, data, place: Place, cfg) -> Trained:
    """Load, check and evaluate one ``[[models]]`` entry (engine.training.imported) as a backbone entry.

    Raises InputError (exit 2, naming the model) for a model that does not fit the manifest: a
    class_order naming a class the data lacks, an output width other than len(class_order).
    """
    from engine.training.imported import collapse_warnings, load_imported

    ds, echo = data.dataset, place.echo
    model = load_imported(cfg, ds.class_names, class_aliases(m))
    size, tta = model.input_size, m.evaluation.tta_flip
    t0 = time.perf_counter()
    x_te = data.cache.load(ds.test, size, "test")
    p_te = evaluation.predict_probs(model, x_te, tta_flip=tta)  # InputError for a wrong output width
    x_va = data.cache.load(ds.val, size, "validation") if ds.val else x_te[:0]
    p_va = evaluation.predict_probs(model, x_va, tta_flip=tta) if len(x_va) else None
    keras_model = model.keras_model
    res = BackboneResult(name=cfg.name, display_name=cfg.name, architecture=f"imported {model.format} model",
                         source="imported", file=str(cfg.file), input_size=size,
                         preprocessing=f"{model.preprocess} ({model.scaling.describe()})")
    res.put("parameters", count_params(keras_model) if keras_model is not None else {})
    warnings = collapse_warnings(cfg.name, "test", ds.labels("test"), p_te, ds.class_names)
    if p_va is not None:
        warnings += collapse_warnings(cfg.name, "validation", ds.labels("val"), p_va, ds.class_names)
    res.put("imported", {**model.describe(), "warnings": warnings})
    res.explanation_method = model.explain_method
    for w in warnings:
        echo(f"warning: model {cfg.name}: {w}")
    ev = evaluation.evaluate(data, p_va, p_te)
    if ev.validation is not None:
        res.put("validation", ev.validation)
    res.put("test", ev.test)
    res.put("leakage_free", ev.leakage_free)
    files = evaluation.save_predictions(place.run_dir, slug(res.name), data, ev, m.subgroups.age_bands)
    # the file the audit read (absolute): the run does not copy a model it did not make
    res.artifacts = {"model": str(Path(cfg.file).resolve()), "predictions": files["test"]}
    res.timings["evaluate_s"] = round(time.perf_counter() - t0, 2)
    echo(f"  {res.display_name} ({model.format}): test accuracy {res.test.accuracy:.3f}, "
         f"macro-F1 {res.test.macro_f1:.3f}")
    return Trained(res, evaluation.outputs_of(ev, size, imported=model))


def train_backbone(m: Manifest, data, place: Place, cfg, fine_tune_cfg=None) -> list[Trained]:
    """Train, evaluate and save one backbone (and its fine-tuned twin when asked)."""
    import keras

    from engine.training import backbones as bb
    from engine.training import train as tr

    ds, echo = data.dataset, place.echo
    seed = m.experiment.seed
    res = BackboneResult(name=cfg.name, display_name=cfg.name,
                         architecture=cfg.name if cfg.file is None else "file",
                         source="file" if cfg.file is not None else "keras.applications",
                         file=str(cfg.file) if cfg.file is not None else None, input_size=cfg.input_size)
    out = [Trained(res)]
    t_start = time.perf_counter()
    shared = None
    try:
        keras.utils.set_random_seed(seed)
        echo(f"backbone {cfg.name}: loading ({cfg.input_size}px)")
        loaded = bb.load_backbone(cfg)
        res.weights = WeightsInfo(loaded.weights_requested, loaded.weights_used, loaded.note)
        res.preprocessing = loaded.preprocessing
        if loaded.random_init and cfg.weights != "none":
            echo(f"warning: {cfg.name}: {loaded.note}")
        if loaded.random_init:
            bb.converge_batchnorm(loaded.model)
        model = bb.build_classifier(loaded.model, loaded.preprocessing, cfg.input_size, len(ds.class_names),
                                    m.training.head_units, m.training.dropout, seed)
        x_tr = data.cache.load(ds.train, cfg.input_size, "training")
        x_va = data.cache.load(ds.val, cfg.input_size, "validation")
        y_tr, y_va = ds.labels("train"), ds.labels("val")
        ft = fine_tune_cfg or cfg.fine_tune
        frozen = not (loaded.random_init or cfg.train_backbone)
        t_shared = time.perf_counter()
        shared = _share(m, data, place, cfg, model, ft, x_tr, x_va) if frozen and ft is not None else None
        features = shared.features(echo, f"{cfg.name}: backbone features") if shared is not None else None
        t_shared = time.perf_counter() - t_shared
        history = tr.train_head(model, x_tr, y_tr, x_va, y_va, cfg=m.training, seed=seed,
                                train_backbone=not frozen, label=cfg.name, echo=echo, features=features)
        if shared is not None:
            history.stages[-1].time_s += t_shared  # the one pass of the frozen layers is the head's cost
        res.history = list(history.history)
        res.put("stages", [s.to_dict() for s in history.stages])
        res.put("parameters", count_params(model))
        res.timings["train_s"] = round(history.time_s, 2)
        out[0].outputs = _evaluate_and_store(m, data, place, res, model, cfg.input_size, history, shared=shared)
        res.timings["total_s"] = round(time.perf_counter() - t_start, 2)
        if ft is not None:
            out.append(fine_tune_entry(m, data, place, cfg, res, model, ft, shared=shared))
    except Exception as exc:  # noqa: BLE001 - one broken backbone must not sink the others
        _fail(res, _failure(place, data, exc, f"train-{res.name}"), echo)
    finally:
        if shared is not None:
            shared.close()
    return out


def _share(m: Manifest, data, place: Place, cfg, model, ft, x_tr, x_va):
    """One pass of the frozen lower backbone over every split (activations.Shared), or None (the
    stages then make their own passes; the log says why when it is not the augmentation)."""
    from engine.training import activations as act

    aug = m.training.augmentation
    if act.random_augmentations(aug) or (aug.enabled and aug.augment_head):
        return None  # the head or the fine-tuning sees randomly changed images: nothing to share
    store = data.cache.cache_dir
    if store is not None:
        store.mkdir(parents=True, exist_ok=True)  # large activation caches are memory-mapped here
    from engine.training.backbones import set_backbone_trainable

    x_te = data.cache.load(data.dataset.test, cfg.input_size, "test")
    flips, tta = bool(aug.enabled and aug.flip), m.evaluation.tta_flip
    set_backbone_trainable(model, ft.layers)  # the cut fine-tuning will use; the head stage freezes it all again
    t0 = time.perf_counter()
    shared, why = act.share(model, x_tr, x_va, x_te, batch=m.training.batch_size, flips=flips, tta=tta,
                            budget=m.training.activation_cache_bytes, store=store, echo=place.echo,
                            label=f"{cfg.name}: frozen layers")
    if shared is None:
        place.echo(f"  {cfg.name}: each stage runs the frozen layers itself: {why}")
        return None
    place.echo(f"  {cfg.name}: frozen layers: {shared.describe()} in {time.perf_counter() - t0:.1f}s: "
               "one pass of the frozen layers for the head, fine-tuning and evaluation")
    return shared


def fine_tune_entry(m: Manifest, data, place: Place, cfg, frozen: BackboneResult, model, ft,
                    shared=None) -> Trained:
    from engine.training import train as tr

    ds = data.dataset
    name = f"{frozen.name}_ft"
    res = BackboneResult(name=name, display_name=f"{frozen.display_name} (fine-tuned)",
                         architecture=frozen.architecture, source=frozen.source, file=frozen.file,
                         input_size=frozen.input_size, weights=frozen.weights, preprocessing=frozen.preprocessing,
                         fine_tuned_from=frozen.name)
    out = Trained(res)
    t0 = time.perf_counter()
    try:
        x_tr = data.cache.load(ds.train, cfg.input_size, "training")
        x_va = data.cache.load(ds.val, cfg.input_size, "validation")
        result = tr.TrainResult(history=[dict(h) for h in frozen.history])
        store = data.cache.cache_dir
        if store is not None:
            store.mkdir(parents=True, exist_ok=True)  # large activation caches are memory-mapped here
        result = tr.fine_tune(model, x_tr, ds.labels("train"), x_va, ds.labels("val"), cfg=m.training, ft=ft,
                              seed=m.experiment.seed, label=res.name, echo=place.echo, result=result, store=store,
                              cached=shared)
        res.history = result.history
        res.put("stages", list(frozen.stages) + [result.stages[-1].to_dict()])
        res.put("parameters", count_params(model))
        res.timings["train_s"] = round(frozen.timings.get("train_s", 0) + result.stages[-1].time_s, 2)
        out.outputs = _evaluate_and_store(m, data, place, res, model, cfg.input_size, shared=shared)
        res.timings["total_s"] = round(time.perf_counter() - t0 + frozen.timings.get("total_s", 0), 2)
    except Exception as exc:  # noqa: BLE001
        _fail(res, _failure(place, data, exc, f"fine-tune-{res.name}"), place.echo)
    return out


def fine_tune_saved(m: Manifest, data, place: Place, cfg, frozen: BackboneResult, ft) -> Trained:
    """Fine-tune a frozen backbone's saved model (the study's "fine-tune the best" step)."""
    import keras

    from engine.training.backbones import load_saved_model

    try:
        keras.utils.set_random_seed(m.experiment.seed)
        model = load_saved_model(place.run_dir / frozen.artifacts["model"])
    except Exception as exc:  # noqa: BLE001
        res = BackboneResult(name=f"{frozen.name}_ft", display_name=f"{frozen.display_name} (fine-tuned)",
                             architecture=frozen.architecture, source=frozen.source, file=frozen.file,
                             input_size=frozen.input_size, fine_tuned_from=frozen.name)
        _fail(res, f"cannot reload {frozen.name}: " + _failure(place, data, exc, f"reload-{frozen.name}"),
              place.echo)
        return Trained(res)
    return fine_tune_entry(m, data, place, cfg, frozen, model, ft)

"""One model's evaluation, the same for a run's backbones, its imported models and ``auditrun
evaluate``: probabilities from the model, then the metrics of each split.

``predict_probs`` is the one prediction call (a Keras classifier through engine.training.predict,
an imported model through its own adapter); ``split_metrics`` the one metrics block of a labelled
image set; ``evaluate`` scores a run's validation, test and leakage-free test images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np


@dataclass
class Evaluation:
    """A model's scores on a run's splits and the probabilities behind them."""

    #: accuracy, macro-F1 and log loss on validation (model selection); None without validation images.
    validation: dict | None
    test: dict
    #: ``test`` on the test images with no copy in training, with ``fraction_of_test``; None
    #: without an integrity audit (or no such image).
    leakage_free: dict | None
    val_probs: np.ndarray | None
    test_probs: np.ndarray
    #: The validation macro-F1 unrounded: the log line shows it to 3 places.
    val_macro_f1: float | None = None


def predict_probs(model, x: np.ndarray, *, tta_flip: bool, echo: Callable[[str], None] | None = None,
                  label: str = "predictions") -> np.ndarray:
    """(n, n_classes) probabilities of ``model`` on ``x``, with flip test-time augmentation when asked.

    ``model``: a Keras classifier of the run, or an imported model (engine.training.imported), which
    preprocesses and maps its outputs to the run's classes itself.
    """
    if hasattr(model, "predict_proba"):
        return model.predict_proba(x, tta_flip=tta_flip)
    from engine.training import predict

    return predict(model, x, tta_flip=tta_flip, echo=echo, label=label)


def split_metrics(y: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> dict:
    """results.json's metrics block of one labelled image set (engine.evaluation.metrics)."""
    from engine.evaluation.metrics import classification_metrics
    from engine.sklearn_warnings import hold_back

    # Small sets (a leakage-free subset of one class, one external folder) make sklearn warn about
    # cases the metrics already handle (absent classes are None, not 0); they add nothing for a reader.
    with hold_back():
        return classification_metrics(y, probs, class_names).to_dict()


def _validation(y: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> tuple[dict, float]:
    from sklearn.metrics import log_loss

    from engine.evaluation.metrics import classification_metrics
    from engine.sklearn_warnings import hold_back

    with hold_back():
        val = classification_metrics(y, probs, class_names)
        block = {"accuracy": round(val.accuracy, 6), "macro_f1": round(val.macro_f1, 6),
                 "log_loss": round(float(log_loss(y, probs, labels=range(len(class_names)))), 6)}
    return block, val.macro_f1


def evaluate(data, val_probs: np.ndarray | None, test_probs: np.ndarray) -> Evaluation:
    """Scores of one model's probabilities on ``data`` (engine.data.PreparedData)."""
    ds = data.dataset
    names, y_te = ds.class_names, ds.labels("test")
    validation, val_f1 = _validation(ds.labels("val"), val_probs, names) if val_probs is not None else (None, None)
    keep = data.leakage_free_mask()
    leakage_free = None
    if keep is not None and keep.any():
        leakage_free = split_metrics(y_te[keep], test_probs[keep], names)
        leakage_free["fraction_of_test"] = round(float(keep.mean()), 6)
    return Evaluation(validation, split_metrics(y_te, test_probs, names), leakage_free, val_probs, test_probs,
                      val_f1)


def save_predictions(run_dir: Path, stem: str, data, ev: Evaluation, age_bands: Sequence[int]) -> dict[str, str]:
    """The test (and validation) prediction CSVs of one model; their run-relative paths by split.

    Validation predictions let later stages (temperature scaling) run on a resumed or reused run.
    """
    from engine.evaluation.predictions import prediction_files, write_predictions

    ds = data.dataset
    files = prediction_files(stem)
    write_predictions(run_dir / files["test"], ds.test, ds.labels("test"), ev.test_probs, ds.class_names, ds.root,
                      age_bands)
    if ev.val_probs is not None:
        write_predictions(run_dir / files["val"], ds.val, ds.labels("val"), ev.val_probs, ds.class_names, ds.root,
                          age_bands)
    return files


def outputs_of(ev: Evaluation, size: int, **extra) -> dict:
    """The arrays later stages (statistics, explanations) read of one model."""
    return {"val_probs": ev.val_probs, "test_probs": ev.test_probs, "size": size, **extra}


def read_outputs(run_dir: Path, artifacts: dict, input_size: int, class_names: Sequence[str]) -> dict:
    """``outputs_of`` for a model an earlier run evaluated, read back from its prediction CSVs."""
    from engine.evaluation.predictions import read_probabilities, validation_file

    test_csv = artifacts["predictions"]
    return {"val_probs": read_probabilities(run_dir / validation_file(test_csv), class_names),
            "test_probs": read_probabilities(run_dir / test_csv, class_names), "size": input_size}

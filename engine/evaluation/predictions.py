"""Per-image predictions of one backbone: the CSV files beside results.json, written and read back.

``predictions/<backbone>.csv`` holds the test split, ``predictions/<backbone>.validation.csv`` the
validation split (later stages, temperature scaling among them, need it on a resumed or reused run).
Paths are relative to the data root, with the frame of a multi-image file (``a/b.nii.gz [slice 3]``),
or neutral file references when the data holds patient ids (``identity.display_path``);
probabilities are rounded to 6 places.

Columns: ``path``, ``frame`` (the frame of a multi-frame file, 0 otherwise), ``patient`` (the
patient's pseudonym, engine.data.identity; never a raw id), ``site``, ``scanner``, ``sex``, ``age``
and ``age_band`` (the ``[subgroups] age_bands`` band) from the image's header, empty where it has
none (plain images), then ``true_class``, ``predicted_class`` and ``prob_<class>`` per class. The
metadata is kept so that later analyses (subgroups, per-patient errors) can start from the CSV.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from engine.atomic import write_text
from engine.data.identity import display_path
from engine.evaluation.subgroups import DEFAULT_AGE_BANDS, record_values

PREDICTIONS_DIR = "predictions"


def prediction_files(stem: str) -> dict[str, str]:
    """Run-relative CSV paths of one backbone, by split ("test", "val")."""
    return {"test": f"{PREDICTIONS_DIR}/{stem}.csv", "val": f"{PREDICTIONS_DIR}/{stem}.validation.csv"}


def validation_file(test_file: str) -> str:
    """The validation CSV beside a test CSV named in results.json's ``artifacts.predictions``."""
    path = Path(test_file)
    return (path.parent / f"{path.stem}.validation.csv").as_posix()


#: The per-image metadata columns, between ``path`` and ``true_class``.
METADATA_COLUMNS = ("frame", "patient", "site", "scanner", "sex", "age", "age_band")


def _age_text(meta: dict | None) -> str:
    age = (meta or {}).get("age")
    if age is None or isinstance(age, bool):
        return ""
    return f"{age:g}" if isinstance(age, (int, float)) else str(age)


def write_predictions(path: Path, records, y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str],
                      root: Path, age_bands: Sequence[int] = DEFAULT_AGE_BANDS) -> None:
    import pandas as pd

    values = record_values(records, age_bands)
    df = pd.DataFrame({
        "path": [display_path(r, root) for r in records],
        "frame": [int(getattr(r, "frame", 0) or 0) for r in records],
        "patient": [getattr(r, "patient", None) or "" for r in records],
        **{a: [v or "" for v in values[a]] for a in ("site", "scanner", "sex")},
        "age": [_age_text(getattr(r, "meta", None)) for r in records],
        "age_band": [v or "" for v in values["age_band"]],
        "true_class": [class_names[i] for i in y_true],
        "predicted_class": [class_names[i] for i in probs.argmax(1)],
    })
    for i, c in enumerate(class_names):
        df[f"prob_{c}"] = np.round(probs[:, i], 6)
    write_text(path, df.to_csv(index=False))


def read_probabilities(path: Path, class_names: Sequence[str]) -> np.ndarray | None:
    """(n, k) probabilities from a predictions CSV; None when the file is absent."""
    import pandas as pd

    if not Path(path).is_file():
        return None
    return pd.read_csv(path)[[f"prob_{c}" for c in class_names]].to_numpy()


__all__ = ["METADATA_COLUMNS", "PREDICTIONS_DIR", "prediction_files", "read_probabilities", "validation_file",
           "write_predictions"]
